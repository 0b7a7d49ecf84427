package linger

import (
	"testing"
	"time"
)

// feed closes batches of n items every gap, starting at t, and returns the
// time of the last one.
func feed(p *Policy, t time.Time, n, batches int, gap time.Duration) time.Time {
	for range batches {
		t = t.Add(gap)
		p.Closed(n, t)
	}
	return t
}

func TestWaitsOnlyWhenItemsArriveFast(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	p := &Policy{Max: time.Millisecond, Expect: 2}
	if d := p.Wait(2, start); d != 0 {
		t.Fatalf("first batch waits %v", d)
	}
	// One item per 2 ms: a lone caller. Never wait.
	now := feed(p, start, 1, 20, 2*time.Millisecond)
	if d := p.Wait(2, now.Add(100*time.Microsecond)); d != 0 {
		t.Fatalf("one item per 2 ms: waits %v", d)
	}
	// Four items per 500 µs (8000/s, 8 expected per ms): wait.
	now = feed(p, now, 4, 20, 500*time.Microsecond)
	if d := p.Wait(2, now.Add(100*time.Microsecond)); d != time.Millisecond {
		t.Fatalf("8000 items/s: waits %v, want 1ms", d)
	}
	// Arrivals stop: the next lone item does not wait.
	if d := p.Wait(2, now.Add(50*time.Millisecond)); d != 0 {
		t.Fatalf("after 50 ms idle: waits %v", d)
	}
	// The rate falls back as batches slow down.
	now = feed(p, now, 1, 20, 5*time.Millisecond)
	if d := p.Wait(2, now.Add(100*time.Microsecond)); d != 0 {
		t.Fatalf("back to 200 items/s: waits %v", d)
	}
}

func TestZeroMaxNeverWaits(t *testing.T) {
	p := &Policy{Expect: 0}
	now := feed(p, time.Unix(0, 0), 100, 10, time.Microsecond)
	if d := p.Wait(2, now); d != 0 {
		t.Fatalf("Max 0 waits %v", d)
	}
}

func TestWaitsOnlyWhenBusy(t *testing.T) {
	busy := false
	p := &Policy{Max: time.Millisecond, Expect: 2, Busy: func(time.Time) bool { return busy }}
	now := feed(p, time.Unix(1_700_000_000, 0), 4, 20, 500*time.Microsecond)
	if d := p.Wait(2, now); d != 0 {
		t.Fatalf("CPU to spare: waits %v", d)
	}
	busy = true
	if d := p.Wait(2, now); d != time.Millisecond {
		t.Fatalf("CPU short: waits %v, want 1ms", d)
	}
}

// A batch of one never waits, however fast items came before: its caller
// may be the only one, blocked on this very batch.
func TestLoneItemNeverWaits(t *testing.T) {
	p := &Policy{Max: time.Millisecond, Expect: 2, Busy: func(time.Time) bool { return true }}
	now := feed(p, time.Unix(1_700_000_000, 0), 1, 50, 100*time.Microsecond) // 10000/s
	if d := p.Wait(1, now); d != 0 {
		t.Fatalf("a batch of one waits %v", d)
	}
	if d := p.Wait(2, now); d != time.Millisecond {
		t.Fatalf("a batch of two at 10000/s waits %v, want 1ms", d)
	}
}

// Once a wait gains items, a batch of one waits too (arrivals are spread
// out, not absent); a wait that gains nothing backs off: 1, then 3, then 7
// batches without waiting.
func TestWaitsFollowWhatWaitingGained(t *testing.T) {
	p := &Policy{Max: time.Millisecond, Expect: 2}
	now := feed(p, time.Unix(1_700_000_000, 0), 4, 20, 500*time.Microsecond)
	if d := p.Wait(1, now); d != 0 {
		t.Fatalf("one item, no company yet: waits %v", d)
	}
	if d := p.Wait(2, now); d != time.Millisecond {
		t.Fatalf("two items: waits %v", d)
	}
	p.Waited(3)
	if d := p.Wait(1, now); d != time.Millisecond {
		t.Fatalf("one item after a fruitful wait: waits %v", d)
	}
	for _, skipped := range []int{1, 3, 7} {
		p.Waited(0)
		for i := range skipped {
			if d := p.Wait(2, now); d != 0 {
				t.Fatalf("batch %d after %d fruitless: waits %v", i, skipped, d)
			}
		}
		if d := p.Wait(2, now); d != time.Millisecond {
			t.Fatalf("after skipping %d: waits %v", skipped, d)
		}
	}
}
