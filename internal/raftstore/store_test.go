package raftstore

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func openT(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func entry(i uint64) *raft.Log {
	return &raft.Log{
		Index:      i,
		Term:       i/10 + 1,
		Type:       raft.LogCommand,
		Data:       fmt.Appendf(nil, "data-%d", i),
		Extensions: fmt.Appendf(nil, "ext-%d", i),
		AppendedAt: time.Unix(1700000000+int64(i), int64(i)*1000+7).UTC(),
	}
}

func entries(from, to uint64) []*raft.Log {
	var out []*raft.Log
	for i := from; i <= to; i++ {
		out = append(out, entry(i))
	}
	return out
}

func sameLog(a, b *raft.Log) bool {
	return a.Index == b.Index && a.Term == b.Term && a.Type == b.Type &&
		bytes.Equal(a.Data, b.Data) && bytes.Equal(a.Extensions, b.Extensions) &&
		a.AppendedAt.Equal(b.AppendedAt)
}

func checkBounds(t *testing.T, s *Store, first, last uint64) {
	t.Helper()
	f, err := s.FirstIndex()
	if err != nil {
		t.Fatalf("FirstIndex: %v", err)
	}
	l, err := s.LastIndex()
	if err != nil {
		t.Fatalf("LastIndex: %v", err)
	}
	if f != first || l != last {
		t.Fatalf("bounds = [%d, %d], want [%d, %d]", f, l, first, last)
	}
}

func checkLog(t *testing.T, s *Store, want *raft.Log) {
	t.Helper()
	var got raft.Log
	if err := s.GetLog(want.Index, &got); err != nil {
		t.Fatalf("GetLog(%d): %v", want.Index, err)
	}
	if !sameLog(&got, want) {
		t.Fatalf("GetLog(%d) = %+v, want %+v", want.Index, got, *want)
	}
}

func checkMissing(t *testing.T, s *Store, idx uint64) {
	t.Helper()
	var got raft.Log
	if err := s.GetLog(idx, &got); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("GetLog(%d) err = %v, want ErrLogNotFound", idx, err)
	}
}

func TestEmptyStore(t *testing.T) {
	s := openT(t, t.TempDir())
	checkBounds(t, s, 0, 0)
	checkMissing(t, s, 1)
	if _, err := s.Get([]byte("k")); err == nil || err.Error() != "not found" {
		t.Fatalf("Get missing err = %v, want text %q", err, "not found")
	}
	v, err := s.GetUint64([]byte("CurrentTerm"))
	if err == nil || err.Error() != "not found" || v != 0 {
		t.Fatalf("GetUint64 missing = %d, %v; want 0, %q", v, err, "not found")
	}
	// raft's own notion of "fresh" must agree.
	has, err := raft.HasExistingState(s, s, raft.NewInmemSnapshotStore())
	if err != nil || has {
		t.Fatalf("HasExistingState = %v, %v; want false, nil", has, err)
	}
}

func TestStoreAndGetLogs(t *testing.T) {
	s := openT(t, t.TempDir())
	if err := s.StoreLog(entry(1)); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, 1, 1)
	if err := s.StoreLogs(entries(2, 20)); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, 1, 20)
	for i := uint64(1); i <= 20; i++ {
		checkLog(t, s, entry(i))
	}
	checkMissing(t, s, 21)
	checkMissing(t, s, 0)

	// All field shapes survive: zero time, nil/empty slices, every type.
	odd := []*raft.Log{
		{Index: 21, Term: 3, Type: raft.LogConfiguration},
		{Index: 22, Term: ^uint64(0), Type: raft.LogBarrier, Data: []byte{}, Extensions: []byte{0}},
		{Index: 23, Term: 4, Type: raft.LogNoop, AppendedAt: time.Unix(-5, 999999999)},
	}
	if err := s.StoreLogs(odd); err != nil {
		t.Fatal(err)
	}
	for _, l := range odd {
		checkLog(t, s, l)
	}
	// Overwriting an index replaces the entry (raft rewrites a conflicting tail).
	repl := entry(23)
	repl.Term = 99
	if err := s.StoreLog(repl); err != nil {
		t.Fatal(err)
	}
	checkLog(t, s, repl)
	checkBounds(t, s, 1, 23)
}

func TestDeleteRange(t *testing.T) {
	tests := []struct {
		name        string
		min, max    uint64
		first, last uint64
	}{
		{"compact head", 1, 50, 51, 100},
		{"truncate tail", 90, 100, 1, 89},
		{"middle", 40, 60, 1, 100},
		{"beyond both ends", 0, 1000, 0, 0},
		{"nothing there", 200, 300, 1, 100},
		{"inverted", 60, 40, 1, 100},
		{"single", 100, 100, 1, 99},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := openT(t, t.TempDir())
			if err := s.StoreLogs(entries(1, 100)); err != nil {
				t.Fatal(err)
			}
			if err := s.DeleteRange(tc.min, tc.max); err != nil {
				t.Fatal(err)
			}
			checkBounds(t, s, tc.first, tc.last)
			for i := uint64(1); i <= 100; i++ {
				if tc.min <= tc.max && i >= tc.min && i <= tc.max {
					checkMissing(t, s, i)
				} else {
					checkLog(t, s, entry(i))
				}
			}
		})
	}
}

func TestDeleteRangeLarge(t *testing.T) {
	// More entries than one delete chunk.
	s := openT(t, t.TempDir())
	const n = 25000
	for from := uint64(1); from <= n; from += 1000 {
		if err := s.StoreLogs(entries(from, from+999)); err != nil {
			t.Fatal(err)
		}
	}
	checkBounds(t, s, 1, n)
	if err := s.DeleteRange(1, n-10); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, n-9, n)
	checkMissing(t, s, n-10)
	checkLog(t, s, entry(n-9))
}

func TestGapsAfterSnapshotRestore(t *testing.T) {
	// raft may store logs after a gap (after installing a snapshot).
	s := openT(t, t.TempDir())
	if err := s.StoreLogs(entries(1, 10)); err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs(entries(500, 505)); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, 1, 505)
	if err := s.DeleteRange(1, 10); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, 500, 505)
}

func TestLargeEntriesAndBatches(t *testing.T) {
	s := openT(t, t.TempDir())
	// 12 x 600 KiB is more than one Badger transaction takes with this
	// store's options; one entry is larger than the value threshold.
	var logs []*raft.Log
	for i := uint64(1); i <= 12; i++ {
		l := entry(i)
		l.Data = bytes.Repeat([]byte{byte(i)}, 600<<10)
		logs = append(logs, l)
	}
	big := entry(13)
	big.Data = bytes.Repeat([]byte{0xAB}, 3<<20)
	logs = append(logs, big)
	if err := s.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, 1, 13)
	for _, l := range logs {
		checkLog(t, s, l)
	}
}

func TestStable(t *testing.T) {
	s := openT(t, t.TempDir())
	if err := s.Set([]byte("a"), []byte("alpha")); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("empty"), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 42); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Get([]byte("a")); err != nil || string(v) != "alpha" {
		t.Fatalf("Get a = %q, %v", v, err)
	}
	if v, err := s.Get([]byte("empty")); err != nil || len(v) != 0 {
		t.Fatalf("Get empty = %q, %v", v, err)
	}
	if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 42 {
		t.Fatalf("GetUint64 = %d, %v", v, err)
	}
	if _, err := s.GetUint64([]byte("a")); err == nil {
		t.Fatal("GetUint64 of a 5-byte value succeeded")
	}
	// Stable keys do not show up as logs, and logs not as stable keys.
	checkBounds(t, s, 0, 0)
	if err := s.StoreLog(entry(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(logKey(1)[1:]); err == nil {
		t.Fatal("log entry visible through Get")
	}
	// The value handed to Set may be reused by the caller.
	buf := []byte("one")
	if err := s.Set([]byte("b"), buf); err != nil {
		t.Fatal(err)
	}
	copy(buf, "two")
	if v, _ := s.Get([]byte("b")); string(v) != "one" {
		t.Fatalf("Get b = %q after caller reused its buffer", v)
	}
}

func TestReopenKeepsEverything(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs(entries(1, 300)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(1, 100); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("n2")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.LastIndex(); !errors.Is(err, ErrClosed) {
		t.Fatalf("LastIndex after Close err = %v, want ErrClosed", err)
	}
	if err := s.StoreLog(entry(301)); !errors.Is(err, ErrClosed) {
		t.Fatalf("StoreLog after Close err = %v, want ErrClosed", err)
	}
	if err := s.GetLog(150, new(raft.Log)); !errors.Is(err, ErrClosed) {
		t.Fatalf("GetLog after Close err = %v, want ErrClosed", err)
	}

	s2 := openT(t, dir)
	checkBounds(t, s2, 101, 300)
	checkMissing(t, s2, 100)
	for i := uint64(101); i <= 300; i++ {
		checkLog(t, s2, entry(i))
	}
	if v, err := s2.GetUint64([]byte("CurrentTerm")); err != nil || v != 7 {
		t.Fatalf("CurrentTerm after reopen = %d, %v", v, err)
	}
	if v, err := s2.Get([]byte("LastVoteCand")); err != nil || string(v) != "n2" {
		t.Fatalf("LastVoteCand after reopen = %q, %v", v, err)
	}
	has, err := raft.HasExistingState(s2, s2, raft.NewInmemSnapshotStore())
	if err != nil || !has {
		t.Fatalf("HasExistingState after reopen = %v, %v; want true", has, err)
	}
}

func TestOpenTwiceFails(t *testing.T) {
	dir := t.TempDir()
	openT(t, dir)
	if s, err := Open(dir, nil); err == nil {
		_ = s.Close()
		t.Fatal("second Open of a directory in use succeeded")
	}
	if _, err := Open("", nil); err == nil {
		t.Fatal("Open(\"\") succeeded")
	}
}

func TestConcurrentUse(t *testing.T) {
	s := openT(t, t.TempDir())
	const writers, per = 4, 50
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				idx := uint64(w*per + i + 1)
				if err := s.StoreLog(entry(idx)); err != nil {
					t.Error(err)
					return
				}
				var l raft.Log
				if err := s.GetLog(idx, &l); err != nil {
					t.Error(err)
					return
				}
				if _, err := s.LastIndex(); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	checkBounds(t, s, 1, writers*per)
}

func TestCodecRoundTrip(t *testing.T) {
	for _, l := range []*raft.Log{entry(1), {}, {Index: ^uint64(0), Term: ^uint64(0), Type: 255, AppendedAt: time.Unix(1<<40, 1)}} {
		var got raft.Log
		if err := decodeLog(appendLog(nil, l), &got); err != nil {
			t.Fatal(err)
		}
		if !sameLog(&got, l) {
			t.Fatalf("round trip %+v -> %+v", *l, got)
		}
	}
	enc := appendLog(nil, entry(5))
	for n := 0; n < len(enc); n++ {
		if err := decodeLog(enc[:n], new(raft.Log)); err == nil {
			t.Fatalf("decode of %d-byte prefix succeeded", n)
		}
	}
	if err := decodeLog(append(enc, 0), new(raft.Log)); err == nil {
		t.Fatal("decode with trailing byte succeeded")
	}
}

func FuzzDecodeLog(f *testing.F) {
	f.Add(appendLog(nil, entry(1)))
	f.Add(appendLog(nil, &raft.Log{}))
	f.Add([]byte{1, 0, 0, 0, 1, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		var l raft.Log
		if err := decodeLog(b, &l); err != nil {
			return
		}
		var again raft.Log
		if err := decodeLog(appendLog(nil, &l), &again); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if !sameLog(&l, &again) {
			t.Fatalf("re-encode changed entry: %+v vs %+v", l, again)
		}
	})
}
