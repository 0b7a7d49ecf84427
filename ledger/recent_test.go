package ledger

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// appendAt appends records from..to-1 with the ledger's clock at t.
func appendAt(t testing.TB, l *running, clock *atomic.Int64, at time.Time, from, to int) {
	t.Helper()
	clock.Store(at.UnixNano())
	ctx := context.Background()
	for i := from; i < to; i++ {
		if _, err := l.Append(ctx, testRecord(i, "EE/GOV/1/c", ""), nil).Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRecent(t *testing.T) {
	var clock atomic.Int64
	cfg := testConfig(newTestPKI(t), t.TempDir())
	cfg.Now = func() time.Time { return time.Unix(0, clock.Load()) }
	l := startLedger(t, cfg)
	appendAt(t, l, &clock, baseTime, 0, 3)
	appendAt(t, l, &clock, baseTime.Add(time.Minute), 3, 5)
	appendAt(t, l, &clock, baseTime.Add(2*time.Minute), 5, 6)

	var got []string
	collect := func(s *Stored) error { got = append(got, s.Record.GetMessageId()); return nil }
	if err := l.Recent(baseTime.Add(time.Minute), collect); err != nil {
		t.Fatal(err)
	}
	if want := []string{"msg-000005", "msg-000004", "msg-000003"}; !equal(got, want) {
		t.Fatalf("recent since 1m: %v, want %v", got, want)
	}
	got = nil
	err := l.Recent(time.Time{}, func(s *Stored) error {
		if len(got) == 2 {
			return ErrStop
		}
		return collect(s)
	})
	if err != nil || !equal(got, []string{"msg-000005", "msg-000004"}) {
		t.Fatalf("stopped scan: %v, %v", got, err)
	}
	boom := errors.New("boom")
	if err := l.Recent(time.Time{}, func(*Stored) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("error of fn: %v", err)
	}
	got = nil
	if err := l.Recent(baseTime.Add(3*time.Minute), collect); err != nil || len(got) != 0 {
		t.Fatalf("nothing that recent: %v, %v", got, err)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// BenchmarkRecent is what a restarted node pays per record of its replay
// window to read the message ids back.
func BenchmarkRecent(b *testing.B) {
	cfg := testConfig(newTestPKI(b), b.TempDir())
	l := startLedger(b, cfg)
	ctx := context.Background()
	const n = 20000
	futs := make([]*Future, 0, n)
	for i := range n {
		futs = append(futs, l.Append(ctx, testRecord(i, "EE/GOV/1/c", ""), nil))
	}
	for _, f := range futs {
		if _, err := f.Wait(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		read := 0
		if err := l.Recent(time.Time{}, func(*Stored) error { read++; return nil }); err != nil || read != n {
			b.Fatal(read, err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/record")
}
