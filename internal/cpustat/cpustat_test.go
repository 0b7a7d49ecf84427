package cpustat

import (
	"crypto/sha256"
	"runtime"
	"sync"
	"testing"
	"time"
)

type metrics map[string]float64

func (m metrics) ReportMetric(n float64, unit string) { m[unit] = n }

func TestPerOpCountsWork(t *testing.T) {
	if _, ok := Process(); !ok {
		if runtime.GOOS == "linux" {
			t.Fatal("cannot read the process's CPU time on linux")
		}
		t.Skip("no CPU time on " + runtime.GOOS)
	}
	m := metrics{}
	n := 100
	done := PerOp(m, &n)
	var sum [32]byte
	for range 200000 { // about 50 ms of hashing
		sum = sha256.Sum256(sum[:])
	}
	done()
	if got := m["cpu-µs/op"]; got <= 0 {
		t.Fatalf("cpu-µs/op = %v after busy work", got)
	}
	m = metrics{}
	n = 0
	PerOp(m, &n)()
	if _, ok := m["cpu-µs/op"]; ok {
		t.Fatal("reported a per-op value for zero operations")
	}
}

func TestMeterSeesBusyAndIdle(t *testing.T) {
	if _, ok := Process(); !ok {
		t.Skip("no CPU time on " + runtime.GOOS)
	}
	m := &Meter{Window: 5 * time.Millisecond}
	m.Share(time.Now())
	// Keep every CPU busy for a while.
	stop := time.Now().Add(150 * time.Millisecond)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				burn(2000)
			}
		}()
	}
	busy := 0.0
	for time.Now().Before(stop) {
		busy = max(busy, m.Share(time.Now()))
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	// Then nothing.
	idle := 1.0
	for end := time.Now().Add(100 * time.Millisecond); time.Now().Before(end); {
		time.Sleep(6 * time.Millisecond)
		idle = m.Share(time.Now())
	}
	// Loose bounds: other test processes may share the machine.
	if busy < 0.15 || idle > busy/2 {
		t.Fatalf("share: %.2f at most while busy, %.2f after idling", busy, idle)
	}
}
