// Package merkle is the RFC 6962 / RFC 9162 Merkle tree of the ledger: leaf
// and node hashing (SHA-256(0x00 || data), SHA-256(0x01 || left || right)),
// an append-only compact range that yields the new complete subtrees on each
// append, proof generation from a store of complete subtrees, and inclusion
// and consistency proof verification.
package merkle

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"math/bits"
)

// HashSize is the size of every hash in the tree.
const HashSize = sha256.Size

// Hash is a node of the tree.
type Hash = [HashSize]byte

// ErrProof is wrapped by every proof verification failure.
var ErrProof = errors.New("merkle proof invalid")

// EmptyRoot is the root of the empty tree: SHA-256 of nothing.
var EmptyRoot = Hash(sha256.Sum256(nil))

// HashLeaf returns SHA-256(0x00 || data).
func HashLeaf(data []byte) Hash {
	h := sha256.New()
	h.Write([]byte{0})
	h.Write(data)
	var out Hash
	h.Sum(out[:0])
	return out
}

// HashChildren returns SHA-256(0x01 || l || r).
func HashChildren(l, r Hash) Hash {
	var buf [1 + 2*HashSize]byte
	buf[0] = 1
	copy(buf[1:], l[:])
	copy(buf[1+HashSize:], r[:])
	return sha256.Sum256(buf[:])
}

// splitPoint is the largest power of two smaller than n (n >= 2).
func splitPoint(n uint64) uint64 {
	return 1 << (bits.Len64(n-1) - 1)
}

// RootOf computes the tree hash of leaf hashes directly (MTH of RFC 6962).
func RootOf(leaves []Hash) Hash {
	switch len(leaves) {
	case 0:
		return EmptyRoot
	case 1:
		return leaves[0]
	}
	k := splitPoint(uint64(len(leaves)))
	return HashChildren(RootOf(leaves[:k]), RootOf(leaves[k:]))
}

// Node names a complete subtree: the 2^Level leaves starting at Index<<Level.
type Node struct {
	Level uint8
	Index uint64
}

// Range is the right edge of an append-only tree: the roots of its complete
// subtrees, largest first (one per set bit of Size). The zero Range is the
// empty tree.
type Range struct {
	size  uint64
	peaks []Hash
}

// NewRange rebuilds a range of the given size from its peaks, largest first.
func NewRange(size uint64, peaks []Hash) (*Range, error) {
	if bits.OnesCount64(size) != len(peaks) {
		return nil, fmt.Errorf("merkle range: size %d needs %d peaks, got %d", size, bits.OnesCount64(size), len(peaks))
	}
	return &Range{size: size, peaks: append([]Hash(nil), peaks...)}, nil
}

// PeakNodes lists the complete subtrees whose roots are the peaks of a tree
// of the given size, largest first.
func PeakNodes(size uint64) []Node {
	var out []Node
	var start uint64
	for lvl := 63; lvl >= 0; lvl-- {
		if size&(1<<lvl) != 0 {
			out = append(out, Node{Level: uint8(lvl), Index: start >> lvl})
			start += 1 << lvl
		}
	}
	return out
}

// Size is the number of leaves.
func (r *Range) Size() uint64 { return r.size }

// Append adds a leaf hash and calls store for every subtree it completes,
// the leaf itself first, each with its hash.
func (r *Range) Append(leaf Hash, store func(Node, Hash)) {
	idx := r.size
	h := leaf
	if store != nil {
		store(Node{Level: 0, Index: idx}, h)
	}
	lvl := uint8(0)
	for idx&1 == 1 {
		left := r.peaks[len(r.peaks)-1]
		r.peaks = r.peaks[:len(r.peaks)-1]
		h = HashChildren(left, h)
		idx >>= 1
		lvl++
		if store != nil {
			store(Node{Level: lvl, Index: idx}, h)
		}
	}
	r.peaks = append(r.peaks, h)
	r.size++
}

// Root is the tree hash of the range.
func (r *Range) Root() Hash {
	if r.size == 0 {
		return EmptyRoot
	}
	h := r.peaks[len(r.peaks)-1]
	for i := len(r.peaks) - 2; i >= 0; i-- {
		h = HashChildren(r.peaks[i], h)
	}
	return h
}

// Clone returns an independent copy.
func (r *Range) Clone() *Range {
	return &Range{size: r.size, peaks: append([]Hash(nil), r.peaks...)}
}

// NodeGetter returns the hash of a complete subtree already stored.
type NodeGetter func(Node) (Hash, error)

// subtree returns MTH(D[start:end]) using stored complete subtrees.
func subtree(get NodeGetter, start, end uint64) (Hash, error) {
	n := end - start
	if n&(n-1) == 0 && start%n == 0 {
		return get(Node{Level: uint8(bits.TrailingZeros64(n)), Index: start / n})
	}
	k := splitPoint(n)
	l, err := subtree(get, start, start+k)
	if err != nil {
		return Hash{}, err
	}
	r, err := subtree(get, start+k, end)
	if err != nil {
		return Hash{}, err
	}
	return HashChildren(l, r), nil
}

// RootAt returns the root of the tree of the given size (size >= 1).
func RootAt(get NodeGetter, size uint64) (Hash, error) {
	if size == 0 {
		return EmptyRoot, nil
	}
	return subtree(get, 0, size)
}

// InclusionProof returns the audit path of leaf index in the tree of size
// leaves, leaf to root (RFC 6962 PATH).
func InclusionProof(get NodeGetter, index, size uint64) ([]Hash, error) {
	if index >= size {
		return nil, fmt.Errorf("inclusion proof: index %d not in tree of size %d", index, size)
	}
	var path []Hash
	var rec func(m, start, end uint64) error
	rec = func(m, start, end uint64) error {
		n := end - start
		if n == 1 {
			return nil
		}
		k := splitPoint(n)
		var sib Hash
		var err error
		if m < k {
			if err = rec(m, start, start+k); err != nil {
				return err
			}
			sib, err = subtree(get, start+k, end)
		} else {
			if err = rec(m-k, start+k, end); err != nil {
				return err
			}
			sib, err = subtree(get, start, start+k)
		}
		path = append(path, sib)
		return err
	}
	if err := rec(index, 0, size); err != nil {
		return nil, err
	}
	return path, nil
}

// ConsistencyProof returns the proof that the tree of size2 extends the tree
// of size1 (RFC 6962 PROOF), 0 < size1 <= size2.
func ConsistencyProof(get NodeGetter, size1, size2 uint64) ([]Hash, error) {
	if size1 == 0 || size1 > size2 {
		return nil, fmt.Errorf("consistency proof: bad sizes %d, %d", size1, size2)
	}
	var path []Hash
	var rec func(m, start, end uint64, b bool) error
	rec = func(m, start, end uint64, b bool) error {
		n := end - start
		if m == n {
			if !b {
				h, err := subtree(get, start, end)
				if err != nil {
					return err
				}
				path = append(path, h)
			}
			return nil
		}
		k := splitPoint(n)
		var h Hash
		var err error
		if m <= k {
			if err = rec(m, start, start+k, b); err != nil {
				return err
			}
			h, err = subtree(get, start+k, end)
		} else {
			if err = rec(m-k, start+k, end, false); err != nil {
				return err
			}
			h, err = subtree(get, start, start+k)
		}
		path = append(path, h)
		return err
	}
	if err := rec(size1, 0, size2, true); err != nil {
		return nil, err
	}
	return path, nil
}

// RootFromInclusionProof returns the root implied by leaf at index in a tree
// of size with the given path (RFC 9162 section 2.1.3.2).
func RootFromInclusionProof(index, size uint64, leaf Hash, path []Hash) (Hash, error) {
	if index >= size {
		return Hash{}, fmt.Errorf("%w: index %d not in tree of size %d", ErrProof, index, size)
	}
	fn, sn := index, size-1
	r := leaf
	for _, p := range path {
		if sn == 0 {
			return Hash{}, fmt.Errorf("%w: path too long", ErrProof)
		}
		if fn&1 == 1 || fn == sn {
			r = HashChildren(p, r)
			if fn&1 == 0 {
				for fn&1 == 0 && fn != 0 {
					fn >>= 1
					sn >>= 1
				}
			}
		} else {
			r = HashChildren(r, p)
		}
		fn >>= 1
		sn >>= 1
	}
	if sn != 0 {
		return Hash{}, fmt.Errorf("%w: path too short", ErrProof)
	}
	return r, nil
}

// VerifyInclusion checks that leaf is at index in the tree of size with root.
func VerifyInclusion(index, size uint64, leaf Hash, path []Hash, root Hash) error {
	r, err := RootFromInclusionProof(index, size, leaf, path)
	if err != nil {
		return err
	}
	if r != root {
		return fmt.Errorf("%w: inclusion path leads to another root", ErrProof)
	}
	return nil
}

// VerifyConsistency checks that the tree of size2 with root2 extends the
// tree of size1 with root1 (RFC 9162 section 2.1.4.2).
func VerifyConsistency(size1, size2 uint64, root1, root2 Hash, path []Hash) error {
	switch {
	case size1 > size2:
		return fmt.Errorf("%w: size %d > %d", ErrProof, size1, size2)
	case size1 == size2:
		if len(path) != 0 || root1 != root2 {
			return fmt.Errorf("%w: equal sizes need equal roots and an empty proof", ErrProof)
		}
		return nil
	case size1 == 0:
		if len(path) != 0 {
			return fmt.Errorf("%w: proof from the empty tree must be empty", ErrProof)
		}
		return nil
	case len(path) == 0:
		return fmt.Errorf("%w: empty proof", ErrProof)
	}
	if size1&(size1-1) == 0 {
		path = append([]Hash{root1}, path...)
	}
	fn, sn := size1-1, size2-1
	for fn&1 == 1 {
		fn >>= 1
		sn >>= 1
	}
	fr, sr := path[0], path[0]
	for _, c := range path[1:] {
		if sn == 0 {
			return fmt.Errorf("%w: proof too long", ErrProof)
		}
		if fn&1 == 1 || fn == sn {
			fr = HashChildren(c, fr)
			sr = HashChildren(c, sr)
			if fn&1 == 0 {
				for fn&1 == 0 && fn != 0 {
					fn >>= 1
					sn >>= 1
				}
			}
		} else {
			sr = HashChildren(sr, c)
		}
		fn >>= 1
		sn >>= 1
	}
	if sn != 0 {
		return fmt.Errorf("%w: proof too short", ErrProof)
	}
	if fr != root1 || sr != root2 {
		return fmt.Errorf("%w: consistency proof leads to other roots", ErrProof)
	}
	return nil
}
