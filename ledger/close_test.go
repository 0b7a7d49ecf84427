package ledger

import (
	"context"
	"errors"
	"sync"
	"testing"
)

// TestConcurrentAppendsAcrossClose appends from many goroutines while the
// ledger stops mid-way, with small batches so that there are many commits.
// Every append either succeeds, and then its record is already
// readable and counted in Size when its Future resolves, or fails with
// ErrClosed; the successful ones hold the indices 0..n-1 exactly once, each
// appender's records in its own order, and all of them are there after a
// reopen.
func TestConcurrentAppendsAcrossClose(t *testing.T) {
	p := newTestPKI(t)
	cfg := testConfig(p, t.TempDir())
	cfg.MaxBatch = 3 // many commits
	l := startLedger(t, cfg)
	ctx := context.Background()

	const writers = 24
	type ok struct {
		id    string
		index uint64
	}
	got := make([][]ok, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			closed := 0
			for i := 0; closed < 3; i++ {
				n := w*100000 + i
				client, body := "EE/GOV/1/off", testBody(n)
				if n%3 == 0 {
					client = "EE/GOV/1/full"
				}
				rec := testRecord(n, client, "")
				idx, err := l.Append(ctx, rec, body).Wait(ctx)
				if errors.Is(err, ErrClosed) {
					closed++ // and every later append fails too
					continue
				}
				if err != nil {
					t.Errorf("writer %d append %d: %v", w, i, err)
					return
				}
				if closed > 0 {
					t.Errorf("writer %d append %d succeeded after ErrClosed", w, i)
					return
				}
				// Resolved only once committed: in the tree and in the store.
				if size := l.Size(); size <= idx {
					t.Errorf("append resolved with index %d, tree size %d", idx, size)
					return
				}
				s, err := l.Get(idx)
				if err != nil {
					t.Errorf("index %d just acknowledged for %s: %v", idx, rec.GetMessageId(), err)
					return
				}
				if s.Record.GetMessageId() != rec.GetMessageId() {
					t.Errorf("index %d just acknowledged for %s holds %s", idx, rec.GetMessageId(), s.Record.GetMessageId())
					return
				}
				if k := len(got[w]); k > 0 && got[w][k-1].index >= idx {
					t.Errorf("writer %d: index %d after %d", w, idx, got[w][k-1].index)
					return
				}
				got[w] = append(got[w], ok{rec.GetMessageId(), idx})
			}
		}()
	}
	waitFor(t, "1000 records", func() bool { return l.Size() >= 1000 })
	l.cancel()
	err := <-l.done
	l.done <- err // for l.stop
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	byIndex := map[uint64]string{}
	for _, recs := range got {
		for _, r := range recs {
			if prev, dup := byIndex[r.index]; dup {
				t.Fatalf("index %d acknowledged to %s and %s", r.index, prev, r.id)
			}
			byIndex[r.index] = r.id
		}
	}
	n := uint64(len(byIndex))
	size := l.Size()
	if size != n {
		t.Fatalf("%d appends acknowledged, tree size %d", n, size)
	}
	check := func(l *Ledger) {
		t.Helper()
		for i := range n {
			s, err := l.Get(i)
			if err != nil {
				t.Fatalf("index %d: %v", i, err)
			}
			if s.Record.GetMessageId() != byIndex[i] {
				t.Fatalf("index %d holds %s, acknowledged to %s", i, s.Record.GetMessageId(), byIndex[i])
			}
		}
		if _, err := l.Get(n); !errors.Is(err, ErrNotFound) {
			t.Fatalf("record past the acknowledged ones: %v", err)
		}
	}
	check(l.Ledger)
	l.stop(t)
	re, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer re.Close()
	if re.Size() != n {
		t.Fatalf("after reopen: size %d, want %d", re.Size(), n)
	}
	check(re)
	if rep, err := re.Check(ctx, p.roots()); err != nil || rep.Entries != n {
		t.Fatalf("check after reopen: %v %v", rep, err)
	}
}
