package sign

import (
	"crypto/sha256"
	"errors"
	"math/bits"
)

// HashSize is the size of digests, tree hashes and inclusion path entries.
const HashSize = sha256.Size

// leafHash is the RFC 6962 hash of one leaf: SHA-256(0x00 || digest).
func leafHash(digest []byte) [HashSize]byte {
	h := sha256.New()
	h.Write([]byte{0})
	h.Write(digest)
	var out [HashSize]byte
	h.Sum(out[:0])
	return out
}

// nodeHash is the RFC 6962 hash of an interior node: SHA-256(0x01 || l || r).
func nodeHash(l, r *[HashSize]byte) [HashSize]byte {
	var buf [1 + 2*HashSize]byte
	buf[0] = 1
	copy(buf[1:], l[:])
	copy(buf[1+HashSize:], r[:])
	return sha256.Sum256(buf[:])
}

// splitPoint is the largest power of two smaller than n (n > 1).
func splitPoint(n uint64) uint64 {
	return 1 << (bits.Len64(n-1) - 1)
}

// buildTree returns the RFC 6962 root of leaves and appends to paths[i] the
// inclusion path of leaf i (leaf to root).
func buildTree(leaves [][HashSize]byte, paths [][][HashSize]byte) [HashSize]byte {
	n := uint64(len(leaves))
	if n == 1 {
		return leaves[0]
	}
	k := splitPoint(n)
	l := buildTree(leaves[:k], paths[:k])
	r := buildTree(leaves[k:], paths[k:])
	for i := range paths[:k] {
		paths[i] = append(paths[i], r)
	}
	for i := range paths[k:] {
		paths[k+uint64(i)] = append(paths[k+uint64(i)], l)
	}
	return nodeHash(&l, &r)
}

// pathLen is the length of the inclusion path of leaf index in a tree of size
// leaves (index < size).
func pathLen(index, size uint64) int {
	n := 0
	for size > 1 {
		k := splitPoint(size)
		if index < k {
			size = k
		} else {
			index -= k
			size -= k
		}
		n++
	}
	return n
}

var errBadPath = errors.New("inclusion path does not fit leaf index and tree size")

// rootFromPath recomputes the tree root from a leaf hash and its inclusion
// path (RFC 9162, section 2.1.3.2).
func rootFromPath(leaf [HashSize]byte, index, size uint64, path [][HashSize]byte) ([HashSize]byte, error) {
	if index >= size {
		return leaf, errBadPath
	}
	fn, sn := index, size-1
	r := leaf
	for i := range path {
		if sn == 0 {
			return r, errBadPath
		}
		if fn&1 == 1 || fn == sn {
			r = nodeHash(&path[i], &r)
			for fn&1 == 0 && fn != 0 {
				fn >>= 1
				sn >>= 1
			}
		} else {
			r = nodeHash(&r, &path[i])
		}
		fn >>= 1
		sn >>= 1
	}
	if sn != 0 {
		return r, errBadPath
	}
	return r, nil
}
