package ledger

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// appendAll appends n records of goroutine g, each within timeout,
// sleeping pause between them.
func appendAll(t *testing.T, l *Ledger, g, n int, pause, timeout time.Duration) {
	t.Helper()
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		_, err := l.Append(ctx, testRecord(g*1000+i, fmt.Sprintf("EE/GOV/%d/c", g), ""), nil).Wait(ctx)
		cancel()
		if err != nil {
			t.Errorf("append %d of goroutine %d: %v", i, g, err)
			return
		}
		time.Sleep(pause)
	}
}

// Appends that arrive together while the CPU is busy wait for one another
// and share a commit.
func TestCommitDelayBatchesWhenBusy(t *testing.T) {
	p := newTestPKI(t)
	cfg := testConfig(p, t.TempDir())
	cfg.CommitDelay = 100 * time.Millisecond
	cfg.busy = func(time.Time) bool { return true }
	l := startLedger(t, cfg)
	const writers, each = 32, 6
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Paced apart in pairs: without the delay, about two meet
			// in a commit.
			appendAll(t, l.Ledger, g, each, time.Duration(10+g/2)*time.Millisecond, 30*time.Second)
		}()
	}
	wg.Wait()
	st := l.Stats()
	if st.Records != writers*each || l.Size() != writers*each {
		t.Fatalf("stats %+v, size %d; want %d records", st, l.Size(), writers*each)
	}
	if mean := float64(st.Records) / float64(st.Commits); mean < 4 {
		t.Fatalf("mean batch %.1f (%d commits): appends did not wait for one another", mean, st.Commits)
	}
}

// A lone caller is never held, however busy the CPU and however long the
// delay: nothing can join its batch while it waits.
func TestCommitDelayNeverHoldsALoneCaller(t *testing.T) {
	p := newTestPKI(t)
	cfg := testConfig(p, t.TempDir())
	cfg.CommitDelay = time.Hour
	cfg.busy = func(time.Time) bool { return true }
	l := startLedger(t, cfg)
	appendAll(t, l.Ledger, 0, 50, 0, 20*time.Second)
	if st := l.Stats(); st.Commits != 50 || st.Records != 50 {
		t.Fatalf("stats %+v, want 50 commits of one", st)
	}
}

// With CPU to spare, concurrent appends are not held either.
func TestCommitDelayIdleCPUDoesNotWait(t *testing.T) {
	p := newTestPKI(t)
	cfg := testConfig(p, t.TempDir())
	cfg.CommitDelay = time.Hour
	cfg.busy = func(time.Time) bool { return false }
	l := startLedger(t, cfg)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			appendAll(t, l.Ledger, g, 20, 0, 20*time.Second)
		}()
	}
	wg.Wait()
	if st := l.Stats(); st.Records != 16*20 {
		t.Fatalf("stats %+v", st)
	}
}
