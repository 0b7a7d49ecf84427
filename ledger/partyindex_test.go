package ledger

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
)

// groupedRecord is record i of the party-index tests: three clients, two
// services, users on most records, start times 370 ms apart but shuffled
// within runs of five, so that one second and one commit hold records of
// several parties, out of start-time order.
func groupedRecord(i int) *ledgerv1.Record {
	rec := testRecord(i, []string{"EE/GOV/1/a", "EE/GOV/1/b", "EE/GOV/1/c"}[i%3], "")
	if i%4 != 0 {
		rec.UserId = []string{"EE1", "EE2"}[i%2]
	}
	rec.Service = []string{"a.v1.A", "b.v1.B"}[i%2]
	slot := i/5*5 + (i*3)%5
	rec.StartTime = timestamppb.New(baseTime.Add(time.Duration(slot) * 370 * time.Millisecond))
	return rec
}

// appendConcurrently appends records [lo, hi) at once, so that commits
// hold several records.
func appendConcurrently(t *testing.T, l *Ledger, lo, hi int, rec func(int) *ledgerv1.Record) map[string]uint64 {
	t.Helper()
	ctx := context.Background()
	var mu sync.Mutex
	idx := map[string]uint64{}
	var wg sync.WaitGroup
	for i := lo; i < hi; i++ {
		r := rec(i)
		f := l.Append(ctx, r, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := f.Wait(ctx)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			idx[r.GetMessageId()] = n
			mu.Unlock()
		}()
	}
	wg.Wait()
	return idx
}

// TestPartyIndexQueries checks every query by party against the records
// themselves (start time in [from, to), oldest first, then by index, at
// most limit) for windows that cut seconds and commits.
func TestPartyIndexQueries(t *testing.T) {
	p := newTestPKI(t)
	l := startLedger(t, testConfig(p, t.TempDir()))
	const n = 120
	appendConcurrently(t, l.Ledger, 0, n, groupedRecord)
	if g := serviceGroups(t, l.Ledger); len(g) >= n {
		t.Fatalf("%d service index groups for %d records: no commit shares a key", len(g), n)
	}
	all := make([]*Stored, n)
	for i := range all {
		s, err := l.Get(uint64(i))
		if err != nil {
			t.Fatal(err)
		}
		all[i] = s
	}
	want := func(match func(*ledgerv1.Record) bool, from, to time.Time, limit int) []uint64 {
		var ss []*Stored
		for _, s := range all {
			st := s.Record.GetStartTime().AsTime()
			if match(s.Record) && (from.IsZero() || !st.Before(from)) && (to.IsZero() || st.Before(to)) {
				ss = append(ss, s)
			}
		}
		slices.SortStableFunc(ss, func(a, b *Stored) int {
			return a.Record.GetStartTime().AsTime().Compare(b.Record.GetStartTime().AsTime())
		})
		var out []uint64
		for _, s := range ss {
			if limit == 0 || len(out) < limit {
				out = append(out, s.Index)
			}
		}
		return out
	}
	indexes := func(ss []*Stored, err error) []uint64 {
		if err != nil {
			t.Fatal(err)
		}
		var out []uint64
		for _, s := range ss {
			out = append(out, s.Index)
		}
		return out
	}
	var windows [][2]time.Time
	for _, a := range []int{-1, 0, 3, 7, 21} {
		for _, b := range []int{-1, 5, 8, 22, 60} {
			from, to := time.Time{}, time.Time{}
			if a >= 0 {
				from = baseTime.Add(time.Duration(a) * 370 * time.Millisecond)
			}
			if b >= 0 {
				to = baseTime.Add(time.Duration(b)*370*time.Millisecond + 150*time.Millisecond)
			}
			windows = append(windows, [2]time.Time{from, to})
		}
	}
	for _, w := range windows {
		for _, limit := range []int{0, 1, 4, 13} {
			for _, c := range []string{"EE/GOV/1/a", "EE/GOV/1/b", "EE/GOV/1/c", "EE/GOV/1/none"} {
				got := indexes(l.ByClient(c, w[0], w[1], limit))
				if exp := want(func(r *ledgerv1.Record) bool { return r.GetClient() == c }, w[0], w[1], limit); !slices.Equal(got, exp) {
					t.Fatalf("ByClient(%s, %v, %v, %d) = %v, want %v", c, w[0], w[1], limit, got, exp)
				}
			}
			for _, s := range []string{"a.v1.A", "b.v1.B"} {
				got := indexes(l.ByService("EE/GOV/70000311/business", s, w[0], w[1], limit))
				if exp := want(func(r *ledgerv1.Record) bool { return r.GetService() == s }, w[0], w[1], limit); !slices.Equal(got, exp) {
					t.Fatalf("ByService(%s, %v, %v, %d) = %v, want %v", s, w[0], w[1], limit, got, exp)
				}
			}
			for _, u := range []string{"EE1", "EE2"} {
				got := indexes(l.ByUser(u, w[0], w[1], limit))
				if exp := want(func(r *ledgerv1.Record) bool { return r.GetUserId() == u }, w[0], w[1], limit); !slices.Equal(got, exp) {
					t.Fatalf("ByUser(%s, %v, %v, %d) = %v, want %v", u, w[0], w[1], limit, got, exp)
				}
			}
		}
	}
	waitStamped(t, l.Ledger)
	mustCheck(t, l.Ledger, p)
}

// TestArchiveSplitsIndexGroups archives a prefix that ends inside commits
// (so inside index groups): the archived records leave every party query,
// the kept ones stay, and Check passes.
func TestArchiveSplitsIndexGroups(t *testing.T) {
	p := newTestPKI(t)
	l := startLedger(t, testConfig(p, t.TempDir()))
	rec := func(i int) *ledgerv1.Record {
		r := testRecord(i, "EE/GOV/1/a", "EE1")
		r.EndTime = timestamppb.New(baseTime.Add(time.Duration(i) * time.Second))
		r.StartTime = timestamppb.New(baseTime) // one second: one group per commit
		return r
	}
	idx := appendConcurrently(t, l.Ledger, 0, 40, rec)
	for i := 0; i < 40; i++ {
		if idx[rec(i).GetMessageId()] != uint64(i) {
			t.Fatal("appends were not indexed in call order")
		}
	}
	waitStamped(t, l.Ledger)
	// Cut at the second record of the first group of several: record i
	// ended at i s and is leaf i.
	groups := serviceGroups(t, l.Ledger)
	k := slices.IndexFunc(groups, func(g []member) bool { return len(g) > 1 })
	if k < 0 {
		t.Fatal("no commit of several records")
	}
	cut := groups[k][1].index
	if _, err := l.Archive(context.Background(), baseTime.Add(time.Duration(cut)*time.Second), t.TempDir()); err != nil {
		t.Fatal(err)
	}
	end, _, err := l.ArchiveHead()
	if err != nil || end != cut {
		t.Fatalf("archived up to %d, want %d: %v", end, cut, err)
	}
	for _, q := range []func() ([]*Stored, error){
		func() ([]*Stored, error) { return l.ByClient("EE/GOV/1/a", time.Time{}, time.Time{}, 0) },
		func() ([]*Stored, error) {
			return l.ByService("EE/GOV/70000311/business", "business.v1.Registry", time.Time{}, time.Time{}, 0)
		},
		func() ([]*Stored, error) { return l.ByUser("EE1", time.Time{}, time.Time{}, 0) },
	} {
		got, err := q()
		if err != nil {
			t.Fatal(err)
		}
		if uint64(len(got)) != 40-end {
			t.Fatalf("%d records after archiving %d of 40", len(got), end)
		}
		for k, s := range got {
			if s.Index != end+uint64(k) {
				t.Fatalf("record %d at position %d", s.Index, k)
			}
		}
	}
	mustCheck(t, l.Ledger, p)
}

// serviceGroups returns the members of every service index group.
func serviceGroups(t *testing.T, l *Ledger) [][]member {
	t.Helper()
	var out [][]member
	err := l.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxService}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			ms, err := decodeMembers(nil, v)
			if err != nil {
				return err
			}
			out = append(out, ms)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCheckFindsPartyIndexDamage: a party index group that names another
// record, or is gone, fails Check with INDEX_MISMATCH.
func TestCheckFindsPartyIndexDamage(t *testing.T) {
	p := newTestPKI(t)
	for name, harm := range map[string]func(txn *badger.Txn, k, v []byte) error{
		"group removed": func(txn *badger.Txn, k, _ []byte) error { return txn.Delete(k) },
		"record renamed": func(txn *badger.Txn, k, v []byte) error {
			v[len(v)-1] ^= 1
			return txn.Set(k, v)
		},
		"start moved": func(txn *badger.Txn, k, v []byte) error {
			v[7] ^= 1
			return txn.Set(k, v)
		},
	} {
		t.Run(name, func(t *testing.T) {
			l := startLedger(t, testConfig(p, t.TempDir()))
			appendConcurrently(t, l.Ledger, 0, 12, groupedRecord)
			waitStamped(t, l.Ledger)
			mustCheck(t, l.Ledger, p)
			err := l.db.Update(func(txn *badger.Txn) error {
				it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxService}})
				it.Rewind()
				k := it.Item().KeyCopy(nil)
				v, err := it.Item().ValueCopy(nil)
				it.Close()
				if err != nil {
					return err
				}
				return harm(txn, k, v)
			})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := l.Check(context.Background(), p.roots()); ReasonOf(err) != ReasonIndexMismatch {
				t.Fatalf("check: %v, want %s", err, ReasonIndexMismatch)
			}
		})
	}
}
