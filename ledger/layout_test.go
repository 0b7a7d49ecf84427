package ledger

import (
	"context"
	"testing"

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
