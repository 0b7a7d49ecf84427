// Package linger decides how long the leader of a batch (a ledger commit,
// a batch signature) waits for more work to join it before paying the
// batch's fixed cost: long enough to share that cost among more items when
// they arrive fast and the CPU is short, not at all otherwise, so that a
// lone caller never waits. Group commit delays in databases work the same
// way.
package linger

import (
	"time"

	"github.com/sildmesh/sild/internal/cpustat"
)

// BusyShare is the share of its CPUs (GOMAXPROCS) the process must keep
// busy for OnBusyCPU to count the CPU as short.
const BusyShare = 0.6

// OnBusyCPU returns a Policy that waits up to max, when at least expect
// items are expected meanwhile, only while this process keeps BusyShare of
// its CPUs busy.
func OnBusyCPU(max time.Duration, expect float64) *Policy {
	var m cpustat.Meter
	return &Policy{Max: max, Expect: expect, Busy: func(now time.Time) bool { return m.Share(now) >= BusyShare }}
}

// Policy is the waiting rule of one batch former. Its methods are called
// from the one goroutine that forms batches; it is not safe for concurrent
// use.
type Policy struct {
	// Max is the longest wait (0: never wait).
	Max time.Duration
	// Expect is how many arrivals must be expected within Max, at the rate
	// of recent batches, for the leader to wait.
	Expect float64
	// Busy, if set, reports whether CPU is short at now; the leader waits
	// only then. Waiting trades latency for CPU, a bad trade while CPU is
	// to spare: callers that are not held up by the CPU come back sooner
	// when their batch is not held.
	Busy func(now time.Time) bool

	rate     float64   // arrivals per second, smoothed
	last     time.Time // when the last batch was closed
	fruitful bool      // the last wait gained items
	misses   int       // waits in a row that gained nothing
	skip     int       // batches still to form without waiting
}

const (
	// idleFactor: after this many times Max without a batch, arrivals have
	// stopped and the smoothed rate no longer describes them.
	idleFactor = 10
	// maxMisses caps the back-off after fruitless waits at 2^maxMisses-1
	// batches without waiting.
	maxMisses = 6
)

// Wait returns how long the leader of a batch of n items, formed at now
// from what was already queued, should wait for more: Max when the CPU is
// Busy, at least Expect items are expected meanwhile, and there is company
// (n > 1, or the last wait gained items); else 0. A single item alone
// shows no company: its caller may be the only one, and nothing can join
// while it waits. After a wait that gained nothing, the next 1, 3, 7, ...
// batches do not wait. Report what a wait gained with Waited.
func (p *Policy) Wait(n int, now time.Time) time.Duration {
	if p.Max <= 0 || p.last.IsZero() || now.Sub(p.last) > idleFactor*p.Max {
		return 0
	}
	if p.skip > 0 {
		p.skip--
		return 0
	}
	if n < 2 && !p.fruitful || p.rate*p.Max.Seconds() < p.Expect || p.Busy != nil && !p.Busy(now) {
		return 0
	}
	return p.Max
}

// Waited records how many items joined during a wait that Wait asked for.
func (p *Policy) Waited(gained int) {
	if gained > 0 {
		p.fruitful, p.misses = true, 0
		return
	}
	p.fruitful = false
	p.misses = min(p.misses+1, maxMisses)
	p.skip = 1<<p.misses - 1
}

// Closed records that a batch of n items was closed at now (after any
// wait), which updates the arrival rate.
func (p *Policy) Closed(n int, now time.Time) {
	if !p.last.IsZero() {
		if dt := now.Sub(p.last).Seconds(); dt > 0 {
			p.rate += (float64(n)/dt - p.rate) / 4
		}
	}
	p.last = now
}
