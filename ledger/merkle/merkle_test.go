package merkle

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
)

// The leaves and roots of the RFC 6962 reference test vectors
// (certificate-transparency merkle_tree_test).
var vectorLeaves = []string{"", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"}

var vectorRoots = []string{
	"6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
	"fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
	"aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
	"d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
	"4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
	"76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
	"ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
	"5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}

// memTree is a tree with every complete subtree kept in a map, as the ledger
// keeps them in Badger.
type memTree struct {
	r      Range
	nodes  map[Node]Hash
	leaves []Hash
}

func newMemTree() *memTree { return &memTree{nodes: map[Node]Hash{}} }

func (t *memTree) add(h Hash) {
	t.leaves = append(t.leaves, h)
	t.r.Append(h, func(n Node, h Hash) { t.nodes[n] = h })
}

func (t *memTree) get(n Node) (Hash, error) {
	h, ok := t.nodes[n]
	if !ok {
		return Hash{}, fmt.Errorf("node %+v not stored", n)
	}
	return h, nil
}

func leafN(i int) Hash {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(i))
	return HashLeaf(b[:])
}

func TestVectors(t *testing.T) {
	if hex.EncodeToString(EmptyRoot[:]) != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" {
		t.Fatal("empty root")
	}
	tr := newMemTree()
	for i, l := range vectorLeaves {
		d, _ := hex.DecodeString(l)
		tr.add(HashLeaf(d))
		got := tr.r.Root()
		if hex.EncodeToString(got[:]) != vectorRoots[i] {
			t.Fatalf("root of %d leaves = %x, want %s", i+1, got, vectorRoots[i])
		}
		if r := RootOf(tr.leaves); r != got {
			t.Fatalf("RootOf(%d) = %x", i+1, r)
		}
		if r, err := RootAt(tr.get, uint64(i+1)); err != nil || r != got {
			t.Fatalf("RootAt(%d) = %x %v", i+1, r, err)
		}
	}
	// Known proofs from the same vectors: inclusion of leaf 0 in the tree of
	// 8, and consistency from 1, 4 and 6 to 8.
	p, _ := InclusionProof(tr.get, 0, 8)
	want := []string{"96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7", "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"}
	checkHashes(t, "inclusion 0 in 8", p, want)
	c, _ := ConsistencyProof(tr.get, 1, 8)
	checkHashes(t, "consistency 1 to 8", c, want)
	c, _ = ConsistencyProof(tr.get, 6, 8)
	checkHashes(t, "consistency 6 to 8", c, []string{"0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a", "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0", "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"})
	c, _ = ConsistencyProof(tr.get, 4, 8)
	checkHashes(t, "consistency 4 to 8", c, []string{"6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"})
}

func checkHashes(t *testing.T, name string, got []Hash, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d hashes, want %d", name, len(got), len(want))
	}
	for i := range got {
		if hex.EncodeToString(got[i][:]) != want[i] {
			t.Fatalf("%s[%d] = %x, want %s", name, i, got[i], want[i])
		}
	}
}

func TestProofsProperty(t *testing.T) {
	tr := newMemTree()
	const max = 70
	roots := []Hash{EmptyRoot}
	for i := 0; i < max; i++ {
		tr.add(leafN(i))
		roots = append(roots, tr.r.Root())
		if RootOf(tr.leaves) != roots[i+1] {
			t.Fatalf("range root differs from MTH at size %d", i+1)
		}
	}
	for size := uint64(1); size <= max; size++ {
		for idx := uint64(0); idx < size; idx++ {
			p, err := InclusionProof(tr.get, idx, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyInclusion(idx, size, leafN(int(idx)), p, roots[size]); err != nil {
				t.Fatalf("inclusion %d in %d: %v", idx, size, err)
			}
			if err := VerifyInclusion(idx, size, leafN(int(idx)+1), p, roots[size]); !errors.Is(err, ErrProof) {
				t.Fatalf("wrong leaf accepted at %d/%d", idx, size)
			}
			if len(p) > 0 {
				p[len(p)/2][3] ^= 1
				if VerifyInclusion(idx, size, leafN(int(idx)), p, roots[size]) == nil {
					t.Fatalf("changed path accepted at %d/%d", idx, size)
				}
				if VerifyInclusion(idx, size, leafN(int(idx)), p[:len(p)-1], roots[size]) == nil {
					t.Fatalf("short path accepted at %d/%d", idx, size)
				}
			}
			if VerifyInclusion(idx, size+1, leafN(int(idx)), p, roots[size]) == nil && size+1 <= max {
				t.Fatalf("wrong size accepted at %d/%d", idx, size)
			}
		}
		for m := uint64(1); m <= size; m++ {
			c, err := ConsistencyProof(tr.get, m, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyConsistency(m, size, roots[m], roots[size], c); err != nil {
				t.Fatalf("consistency %d to %d: %v", m, size, err)
			}
			if m < size {
				if VerifyConsistency(m, size, roots[m-1], roots[size], c) == nil {
					t.Fatalf("wrong old root accepted %d to %d", m, size)
				}
				c[0][0] ^= 1
				if VerifyConsistency(m, size, roots[m], roots[size], c) == nil {
					t.Fatalf("changed proof accepted %d to %d", m, size)
				}
			}
		}
	}
}

func TestRangeRebuild(t *testing.T) {
	tr := newMemTree()
	for i := 0; i < 37; i++ {
		tr.add(leafN(i))
		var peaks []Hash
		for _, n := range PeakNodes(tr.r.Size()) {
			h, err := tr.get(n)
			if err != nil {
				t.Fatal(err)
			}
			peaks = append(peaks, h)
		}
		r, err := NewRange(tr.r.Size(), peaks)
		if err != nil {
			t.Fatal(err)
		}
		if r.Root() != tr.r.Root() {
			t.Fatalf("rebuilt range root differs at %d", i+1)
		}
		c := r.Clone()
		c.Append(leafN(99), nil)
		if r.Size() != tr.r.Size() {
			t.Fatal("clone shares state")
		}
	}
	if _, err := NewRange(3, nil); err == nil {
		t.Fatal("bad peak count accepted")
	}
}

// FuzzVerify runs the verifiers on arbitrary proofs: no panics, and a proof
// built from fuzz input never proves a leaf that is not in the tree.
func FuzzVerify(f *testing.F) {
	tr := newMemTree()
	for i := 0; i < 20; i++ {
		tr.add(leafN(i))
	}
	root := tr.r.Root()
	f.Add(uint64(3), uint64(20), []byte{})
	f.Add(uint64(0), uint64(1), make([]byte, 64))
	f.Fuzz(func(t *testing.T, idx, size uint64, raw []byte) {
		var path []Hash
		for len(raw) >= HashSize {
			var h Hash
			copy(h[:], raw)
			path = append(path, h)
			raw = raw[HashSize:]
		}
		if VerifyInclusion(idx, size, leafN(1000), path, root) == nil {
			t.Fatal("proved a leaf not in the tree")
		}
		_ = VerifyConsistency(idx, size, root, root, path)
	})
}
