package ledger

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	"github.com/sildmesh/sild/ledger/merkle"
	"github.com/sildmesh/sild/tsa"
)

// CheckReport summarises a successful Check.
type CheckReport struct {
	Entries uint64
	// Archived is the number of leading leaves archived and pruned; their
	// tree nodes are checked only through the checkpoints.
	Archived uint64
	// ArchiveSHA256 is the SHA-256 of the last archive file (the chain head).
	ArchiveSHA256 []byte
	Bodies        int // bodies present (and, with the body key, decrypted and checked)
	Checkpoints   int
	Stamped       int // checkpoints with a time-stamp token
	// TokensVerified is the number of tokens checked against the trust
	// bundle (only when Check was given roots).
	TokensVerified int
}

// Check is a full consistency check of the ledger (an fsck): every entry
// decodes and sits at its index, the stored tree matches the tree recomputed
// from the entries, every index key points to a record that has that value
// and every record is indexed, every body is present (and, with the body
// key, decrypts to its digest), every checkpoint's root matches the tree at
// its size, its signature verifies and successive checkpoints are consistent;
// with roots, every time-stamp token is verified too. Run it on a ledger
// that is not appending (e.g. opened with OpenReader). The error is a
// *VerifyError.
func (l *Ledger) Check(ctx context.Context, roots []*x509.Certificate) (*CheckReport, error) {
	rep := &CheckReport{}
	err := l.db.View(func(txn *badger.Txn) error {
		size, err := getSize(txn)
		if err != nil {
			return fail(ReasonStoreCorrupt, -1, "tree size: %v", err)
		}
		rep.Entries = size
		cps, err := checkpointsIn(txn)
		if err != nil {
			return err
		}
		archived, head, err := checkArchives(txn, size)
		if err != nil {
			return err
		}
		rep.Archived, rep.ArchiveSHA256 = archived, head
		// Index keys expected from the records, checked against the store.
		want := map[string]bool{}
		get, storedNode := txnNodes(txn), txnStoredNodes(txn)
		if err := checkNodeKeys(txn, size, archived); err != nil {
			return err
		}
		rng, err := rangeAt(get, archived)
		if err != nil {
			return err
		}
		nextCP := 0
		var prevSize uint64
		var prevRoot merkle.Hash
		// Checkpoints within the archived prefix: against the stored tree.
		for nextCP < len(cps) && cps[nextCP].size <= archived {
			root, err := merkle.RootAt(get, cps[nextCP].size)
			if err != nil {
				return fail(ReasonStoreCorrupt, -1, "root at %d: %v", cps[nextCP].size, err)
			}
			if err := l.checkCheckpoint(txn, cps[nextCP], root, prevSize, prevRoot, roots, rep); err != nil {
				return err
			}
			prevSize, prevRoot = cps[nextCP].size, root
			nextCP++
		}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxEntry}})
		defer it.Close()
		i := archived
		for it.Rewind(); it.Valid(); it.Next() {
			if i%4096 == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			if k := keyUint(it.Item().Key()[1:]); k < archived {
				return fail(ReasonStoreCorrupt, -1, "entry %d was archived but is still stored (an interrupted prune: run archive again)", k)
			} else if k != i {
				return fail(ReasonStoreCorrupt, -1, "entry key %d where %d was expected", k, i)
			}
			if i >= size {
				return fail(ReasonStoreCorrupt, -1, "entry %d beyond tree size %d", i, size)
			}
			raw, err := it.Item().ValueCopy(nil)
			if err == nil {
				raw, err = expandEntry(txn, raw)
			}
			if err != nil {
				return fail(ReasonStoreCorrupt, -1, "entry %d: %v", i, err)
			}
			e := &ledgerv1.Entry{}
			rec := &ledgerv1.Record{}
			if err := proto.Unmarshal(raw, e); err != nil {
				return fail(ReasonEntryMalformed, -1, "entry %d: %v", i, err)
			}
			if err := proto.Unmarshal(e.GetRecord(), rec); err != nil {
				return fail(ReasonEntryMalformed, -1, "record %d: %v", i, err)
			}
			if e.GetIndex() != i {
				return fail(ReasonIndexMismatch, -1, "entry %d says index %d", i, e.GetIndex())
			}
			var treeErr error
			rng.Append(merkle.HashLeaf(raw), func(n merkle.Node, h merkle.Hash) {
				if treeErr != nil || n.Level < minStoredLevel {
					return // lower subtrees are computed from these entries
				}
				stored, err := storedNode(n)
				if err != nil || stored != h {
					treeErr = fail(ReasonTreeMismatch, -1, "tree node %d/%d at entry %d does not match the entries", n.Level, n.Index, i)
				}
			})
			if treeErr != nil {
				return treeErr
			}
			if len(e.GetBodyDigest()) > 0 {
				sealed, err := txnRaw(txn, bodyKey(i))
				if err != nil {
					return fail(ReasonStoreCorrupt, -1, "body %d: %v", i, err)
				}
				if l.aead != nil {
					body, err := l.open(i, sealed)
					if err != nil {
						return fail(ReasonBodyMismatch, -1, "body %d does not decrypt: %v", i, err)
					}
					if sum := sha256.Sum256(body); !bytes.Equal(sum[:], e.GetBodyDigest()) {
						return fail(ReasonBodyMismatch, -1, "body %d does not match its digest", i)
					}
				}
				rep.Bodies++
			}
			ts := e.GetAppendTime().AsTime().UnixNano()
			if st := rec.GetStartTime(); st != nil {
				ts = st.AsTime().UnixNano()
			}
			want[string(msgKey(rec.GetMessageId(), i))] = true
			for _, p := range partiesOf(rec) {
				want[string(timeIndexKey(p.pfx, p.id, ts, i))] = true
			}
			i++
			for nextCP < len(cps) && cps[nextCP].size == i {
				if err := l.checkCheckpoint(txn, cps[nextCP], rng.Root(), prevSize, prevRoot, roots, rep); err != nil {
					return err
				}
				prevSize, prevRoot = i, rng.Root()
				nextCP++
			}
		}
		if i != size {
			return fail(ReasonStoreCorrupt, -1, "%d entries for tree size %d", i, size)
		}
		if rng.Root() != mustRoot(get, size) {
			return fail(ReasonTreeMismatch, -1, "stored tree root differs from the entries")
		}
		if nextCP != len(cps) {
			return fail(ReasonCheckpointMalformed, -1, "checkpoint of size %d beyond the tree (size %d)", cps[nextCP].size, size)
		}
		return checkIndexes(txn, want, archived)
	})
	if err != nil {
		var ve *VerifyError
		if !errors.As(err, &ve) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			err = fail(ReasonStoreCorrupt, -1, "%v", err)
		}
		return nil, err
	}
	return rep, nil
}

// checkNodeKeys checks that every stored tree node is one the layout
// stores: a complete subtree of the tree from minStoredLevel up, or the
// leaf hash of an archived leaf. (Their hashes are checked against the
// entries, or for the archived prefix through the checkpoints.)
func checkNodeKeys(txn *badger.Txn, size, archived uint64) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxNode}, PrefetchValues: false})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		k := it.Item().Key()
		if len(k) != 10 {
			return fail(ReasonStoreCorrupt, -1, "tree node key %q malformed", k)
		}
		lvl, idx := k[1], keyUint(k[2:])
		complete := lvl < 64 && idx < size>>lvl
		if !(lvl >= minStoredLevel && complete) && !(lvl == 0 && idx < archived) {
			return fail(ReasonTreeMismatch, -1, "tree node %d/%d is not part of the stored tree (size %d, %d archived)", lvl, idx, size, archived)
		}
	}
	return nil
}

func mustRoot(get merkle.NodeGetter, size uint64) merkle.Hash {
	h, err := merkle.RootAt(get, size)
	if err != nil {
		return merkle.Hash{} // differs from any real root
	}
	return h
}

type storedCP struct {
	size uint64
	sc   *ledgerv1.SignedCheckpoint
}

func checkpointsIn(txn *badger.Txn) ([]storedCP, error) {
	var out []storedCP
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxCheckpoint}})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		sc, err := itemCheckpoint(it.Item())
		if err != nil {
			return nil, fail(ReasonCheckpointMalformed, -1, "%v", err)
		}
		out = append(out, storedCP{size: keyUint(it.Item().Key()[1:]), sc: sc})
	}
	return out, nil
}

func (l *Ledger) checkCheckpoint(txn *badger.Txn, c storedCP, root merkle.Hash, prevSize uint64, prevRoot merkle.Hash, roots []*x509.Certificate, rep *CheckReport) error {
	cp, _, err := checkCheckpointSignature(c.sc)
	if err != nil {
		return err
	}
	if cp.GetTreeSize() != c.size || !bytes.Equal(cp.GetRootHash(), root[:]) {
		return fail(ReasonTreeMismatch, -1, "checkpoint %d does not match the tree", c.size)
	}
	if prevSize > 0 {
		proof, err := merkle.ConsistencyProof(txnNodes(txn), prevSize, c.size)
		if err != nil {
			return fail(ReasonStoreCorrupt, -1, "consistency proof %d to %d: %v", prevSize, c.size, err)
		}
		if err := merkle.VerifyConsistency(prevSize, c.size, prevRoot, root, proof); err != nil {
			return fail(ReasonConsistencyProof, -1, "checkpoint %d to %d: %v", prevSize, c.size, err)
		}
	}
	rep.Checkpoints++
	if len(c.sc.GetTimestampToken()) > 0 {
		rep.Stamped++
		if len(roots) > 0 {
			if _, err := tsa.Verify(c.sc.GetTimestampToken(), StampDigest(c.sc), roots); err != nil {
				return fail(ReasonTimestampInvalid, -1, "checkpoint %d: %v", c.size, err)
			}
			rep.TokensVerified++
		}
	}
	return nil
}

// checkIndexes checks that the index keys in the store are exactly want:
// the message-id keys, and the records named by the party index groups.
// Message-id keys of archived leaves are kept (they name the archive).
func checkIndexes(txn *badger.Txn, want map[string]bool, archived uint64) error {
	for _, pfx := range []byte{pfxClient, pfxService, pfxUser} {
		if err := checkPartyIndex(txn, pfx, want); err != nil {
			return err
		}
	}
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxMsg}, PrefetchValues: false})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		k := string(it.Item().Key())
		if len(k) >= 10 && keyUint([]byte(k[len(k)-8:])) < archived && k[len(k)-9] == 0 {
			continue
		}
		if !want[k] {
			return fail(ReasonIndexMismatch, -1, "index key %q names no such record", k)
		}
		delete(want, k)
	}
	for k := range want {
		return fail(ReasonIndexMismatch, -1, "record not indexed: %q", k)
	}
	return nil
}

// String renders the report for the CLI.
func (r *CheckReport) String() string {
	s := fmt.Sprintf("%d entries, %d bodies, %d checkpoints (%d time-stamped, %d tokens verified)",
		r.Entries, r.Bodies, r.Checkpoints, r.Stamped, r.TokensVerified)
	if r.Archived > 0 {
		s += fmt.Sprintf(", %d archived (last archive sha256 %x)", r.Archived, r.ArchiveSHA256)
	}
	return s
}

// checkArchives checks that the archive refs cover a contiguous prefix of
// the tree and that no body of it is still stored; it returns the prefix's
// end and the last archive's hash.
func checkArchives(txn *badger.Txn, size uint64) (uint64, []byte, error) {
	refs, err := txnArchiveRefs(txn)
	if err != nil {
		return 0, nil, fail(ReasonStoreCorrupt, -1, "%v", err)
	}
	var end uint64
	var head []byte
	for _, r := range refs {
		if r.GetFirstIndex() != end || r.GetEndIndex() <= r.GetFirstIndex() || len(r.GetSha256()) != sha256.Size {
			return 0, nil, fail(ReasonStoreCorrupt, -1, "archive %s (records %d to %d) does not follow the archived prefix ending at %d", r.GetFile(), r.GetFirstIndex(), r.GetEndIndex(), end)
		}
		end, head = r.GetEndIndex(), r.GetSha256()
	}
	if end > size {
		return 0, nil, fail(ReasonStoreCorrupt, -1, "archived prefix %d beyond tree size %d", end, size)
	}
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxBody}, PrefetchValues: false})
	defer it.Close()
	if it.Rewind(); it.Valid() {
		if k := keyUint(it.Item().Key()[1:]); k < end {
			return 0, nil, fail(ReasonStoreCorrupt, -1, "body %d was archived but is still stored", k)
		}
	}
	return end, head, nil
}

// rangeAt rebuilds the tree's right edge at size from the stored nodes.
func rangeAt(get merkle.NodeGetter, size uint64) (*merkle.Range, error) {
	var peaks []merkle.Hash
	for _, n := range merkle.PeakNodes(size) {
		h, err := get(n)
		if err != nil {
			return nil, fail(ReasonStoreCorrupt, -1, "tree of size %d: %v", size, err)
		}
		peaks = append(peaks, h)
	}
	r, err := merkle.NewRange(size, peaks)
	if err != nil {
		return nil, fail(ReasonStoreCorrupt, -1, "%v", err)
	}
	return r, nil
}
