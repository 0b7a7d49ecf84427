package ledger

import (
	"bytes"
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	"github.com/sildmesh/sild/ledger/merkle"
)

// TestProofsAcrossArchivedBoundary archives a prefix that ends inside a
// subtree too small to be stored (recomputed from entries), appends until
// that subtree and larger ones complete, and checks that every root,
// inclusion and consistency proof still matches the tree the ledger
// acknowledged, before and after a restart, and that Check passes.
func TestProofsAcrossArchivedBoundary(t *testing.T) {
	p := newTestPKI(t)
	dir := t.TempDir()
	l := startLedger(t, testConfig(p, dir))
	var roots []merkle.Hash
	var leaves []merkle.Hash
	add := func(lo, hi int) {
		for i := lo; i < hi; i++ {
			idx := appendWait(t, l.Ledger, testRecord(i, "EE/GOV/1/off", ""), nil)
			s, err := l.Get(idx)
			if err != nil {
				t.Fatal(err)
			}
			leaves = append(leaves, merkle.HashLeaf(s.Raw))
			_, r := l.Root()
			if r != merkle.RootOf(leaves) {
				t.Fatalf("root after %d leaves is not the tree of the entries", len(leaves))
			}
			roots = append(roots, r)
		}
	}
	add(0, 21)
	waitStamped(t, l.Ledger)
	if _, err := l.Archive(context.Background(), at(5), t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if end, _, _ := l.ArchiveHead(); end != 5 {
		t.Fatalf("archived up to %d, want 5", end)
	}
	add(21, 70)
	checkProofs := func(l *Ledger) {
		t.Helper()
		size := uint64(len(leaves))
		for n := uint64(1); n <= size; n++ {
			r, err := l.RootAt(n)
			if err != nil || r != roots[n-1] {
				t.Fatalf("root at %d: %v", n, err)
			}
			for i := uint64(0); i < n; i++ {
				path, err := l.InclusionProof(i, n)
				if err != nil {
					t.Fatalf("inclusion %d in %d: %v", i, n, err)
				}
				if err := merkle.VerifyInclusion(i, n, leaves[i], toHashesT(t, path), r); err != nil {
					t.Fatalf("inclusion %d in %d: %v", i, n, err)
				}
			}
			for m := uint64(1); m <= n; m += 3 {
				proof, err := l.ConsistencyProof(m, n)
				if err != nil {
					t.Fatal(err)
				}
				if err := merkle.VerifyConsistency(m, n, roots[m-1], r, toHashesT(t, proof)); err != nil {
					t.Fatalf("consistency %d to %d: %v", m, n, err)
				}
			}
		}
	}
	checkProofs(l.Ledger)
	waitStamped(t, l.Ledger)
	if rep := mustCheck(t, l.Ledger, p); rep.Archived != 5 || rep.Entries != 70 {
		t.Fatalf("check: %s", rep)
	}
	l.stop(t)

	r, err := OpenReader(dir, testBodyKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if s, root := r.Root(); s != 70 || root != roots[69] {
		t.Fatalf("reopened at %d leaves with another root", s)
	}
	checkProofs(r)
	mustCheck(t, r, p)
}

// TestEntryBytesIsMarshal: the directly encoded entry is what proto.Marshal
// (deterministic) makes of the same Entry, so leaves hash the same.
func TestEntryBytesIsMarshal(t *testing.T) {
	rec, _ := marshal(testRecord(7, "EE/GOV/1/full", "EE38001010000"))
	digest := make([]byte, 32)
	for _, tc := range []struct {
		i      uint64
		digest []byte
		at     time.Time
	}{
		{0, nil, time.Unix(0, 0)},
		{1, digest, time.Unix(0, 5)},
		{1 << 40, nil, time.Unix(1700000000, 0)},
		{^uint64(0), digest, time.Date(2026, 11, 23, 9, 0, 0, 123456789, time.UTC)},
		{300, nil, time.Unix(-62135596800, 999999999)},
	} {
		want, err := marshal(&ledgerv1.Entry{Index: tc.i, Record: rec, BodyDigest: tc.digest, AppendTime: timestamppb.New(tc.at)})
		if err != nil {
			t.Fatal(err)
		}
		got, recOff := entryBytes(tc.i, rec, tc.digest, tc.at)
		if !bytes.Equal(got, want) {
			t.Errorf("entry %d at %v: encoded %x, marshal %x", tc.i, tc.at, got, want)
		}
		if recOff+len(rec) > len(got) || !bytes.Equal(got[recOff:recOff+len(rec)], rec) {
			t.Errorf("entry %d: the record is not at offset %d", tc.i, recOff)
		}
	}
}

// TestSizeWhenEverythingIsArchived: the tree size has no key of its own;
// with every entry archived and pruned it is the end of the archive, and a
// restarted ledger appends after it with the same tree.
func TestSizeWhenEverythingIsArchived(t *testing.T) {
	p := newTestPKI(t)
	dir := t.TempDir()
	l := startLedger(t, testConfig(p, dir))
	appendRange(t, l.Ledger, 0, 10)
	waitStamped(t, l.Ledger)
	size, root := l.Root()
	if _, err := l.Archive(context.Background(), at(1000), t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if end, _, _ := l.ArchiveHead(); end != size {
		t.Fatalf("archived up to %d of %d", end, size)
	}
	l.stop(t)

	l = startLedger(t, testConfig(p, dir))
	if s, r := l.Root(); s != size || r != root {
		t.Fatalf("reopened at size %d (want %d), same root %v", s, size, r == root)
	}
	if i := appendWait(t, l.Ledger, testRecord(10, "EE/GOV/1/off", ""), nil); i != size {
		t.Fatalf("appended at %d, want %d", i, size)
	}
	waitStamped(t, l.Ledger)
	if rep := mustCheck(t, l.Ledger, p); rep.Entries != size+1 || rep.Archived != size {
		t.Fatalf("check: %s", rep)
	}
}
