package cpustat

import (
	"runtime"
	"time"
)

// Meter tells how busy this process keeps the CPUs it may use
// (GOMAXPROCS), smoothed over windows of at least Window. It is not safe
// for concurrent use.
type Meter struct {
	// Window is the shortest interval measured (default 10 ms).
	Window time.Duration

	last    time.Time
	lastCPU time.Duration
	share   float64
}

// Share returns the smoothed share of GOMAXPROCS CPUs the process used
// up to about now, from 0 to 1 (more on a brief burst); 0 before a first
// window has passed or where CPU time cannot be read.
func (m *Meter) Share(now time.Time) float64 {
	w := m.Window
	if w <= 0 {
		w = 10 * time.Millisecond
	}
	if !m.last.IsZero() && now.Sub(m.last) < w {
		return m.share
	}
	cpu, ok := Process()
	if !ok {
		return 0
	}
	if !m.last.IsZero() {
		elapsed := now.Sub(m.last)
		s := float64(cpu-m.lastCPU) / float64(elapsed) / float64(runtime.GOMAXPROCS(0))
		if elapsed > 10*w { // idle since: start over
			m.share = s
		} else {
			m.share += (s - m.share) * 0.3
		}
	}
	m.last, m.lastCPU = now, cpu
	return m.share
}
