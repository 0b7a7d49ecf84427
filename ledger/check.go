package ledger

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	"github.com/sildmesh/sild/ledger/merkle"
	"github.com/sildmesh/sild/pki"
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

	origin string // of the checkpoints
}

// Check is a full consistency check of the ledger (an fsck): every entry
// decodes and sits at its index, the stored tree matches the tree recomputed
// from the entries, every index key points to a record that has that value
// and every record is indexed, every body is present (and, with the body
// key, decrypts to its digest), every checkpoint's root matches the tree at
// its size, its signature verifies and successive checkpoints are consistent;
// with roots, every time-stamp token is verified and every checkpoint's
// signer must be certified by them. Run it on a ledger that is not
// appending (e.g. opened with OpenReader). The error is a *VerifyError.
//
// A ledger restored from an old copy, or rewritten by someone holding the
// node's key, is consistent in itself: CheckWith's Against detects it
// with checkpoints the ledger signed earlier and others kept.
func (l *Ledger) Check(ctx context.Context, roots []*x509.Certificate) (*CheckReport, error) {
	return l.CheckWith(ctx, CheckOptions{Roots: roots})
}

// CheckOptions are what CheckWith checks beyond the store itself.
type CheckOptions struct {
	// Roots, when given, verify every time-stamp token and every
	// checkpoint signer's certificate (pki KindSigning).
	Roots []*x509.Certificate
	// Against are checkpoints this ledger signed earlier and that were kept
	// elsewhere (those of evidence bundles and archive files): the ledger
	// must still hold each one's tree. A ledger with fewer records than one
	// fails with LEDGER_ROLLED_BACK (restored from an older copy, or its
	// tail cut together with its checkpoints); one whose tree at that size
	// has another root fails with LEDGER_FORKED (records changed or
	// replaced, and the checkpoints signed again).
	Against []*ledgerv1.SignedCheckpoint
	// Progress, when set, is called as the entries are checked with how
	// many are done and how many there are, last with done == total.
	Progress func(done, total uint64)
}

// progressEvery is how many entries Check checks between Progress calls.
const progressEvery = 4096

// CheckWith is Check with options (trust roots, earlier checkpoints,
// progress). The error is a *VerifyError.
func (l *Ledger) CheckWith(ctx context.Context, opts CheckOptions) (*CheckReport, error) {
	rep := &CheckReport{}
	err := l.db.View(func(txn *badger.Txn) error { return l.checkTxn(ctx, txn, opts, rep) })
	if err != nil {
		var ve *VerifyError
		if !errors.As(err, &ve) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			err = fail(ReasonStoreCorrupt, -1, "%v", err)
		}
		return nil, err
	}
	return rep, nil
}

// checkTxn is CheckWith within txn.
func (l *Ledger) checkTxn(ctx context.Context, txn *badger.Txn, opts CheckOptions, rep *CheckReport) error {
	roots := opts.Roots
	progress := opts.Progress
	if progress == nil {
		progress = func(uint64, uint64) {}
	}
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
		if i%progressEvery == 0 {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			progress(i, size)
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
		return fail(ReasonTruncated, -1, "records %d to %d are missing: the ledger signed checkpoint %d over them (its tail was cut, or the store lost writes)", size, cps[nextCP].size-1, cps[nextCP].size)
	}
	progress(size, size)
	if err := checkIndexes(txn, want, archived); err != nil {
		return err
	}
	return checkAgainst(txn, size, cps, opts.Against, roots)
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
	if rep.origin == "" {
		rep.origin = cp.GetOrigin()
	} else if cp.GetOrigin() != rep.origin {
		return fail(ReasonOriginMismatch, -1, "checkpoint %d is of %q, the ones before of %q", c.size, cp.GetOrigin(), rep.origin)
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
	}
	if len(roots) > 0 {
		if _, err := verifyCheckpointTrust(c.sc, cp, roots); err != nil {
			return err
		}
		if len(c.sc.GetTimestampToken()) > 0 {
			rep.TokensVerified++
		}
	}
	return nil
}

// verifyCheckpointTrust checks a signed checkpoint (whose signature
// checkCheckpointSignature verified) against roots: its time-stamp token if
// it has one, and its signer's certificate (pki KindSigning) at the stamp's
// time, else at the checkpoint's. It returns the stamp time (zero if none).
func verifyCheckpointTrust(sc *ledgerv1.SignedCheckpoint, cp *ledgerv1.Checkpoint, roots []*x509.Certificate) (time.Time, error) {
	at := cp.GetTime().AsTime()
	var stamped time.Time
	if tok := sc.GetTimestampToken(); len(tok) > 0 {
		t, err := tsa.Verify(tok, StampDigest(sc), roots)
		if err != nil {
			return stamped, fail(ReasonTimestampInvalid, -1, "checkpoint %d: %v", cp.GetTreeSize(), err)
		}
		at, stamped = t, t
	}
	cert, err := x509.ParseCertificate(sc.GetSignerChain()[0])
	if err != nil {
		return stamped, fail(ReasonSignerUntrusted, -1, "checkpoint %d: signer certificate: %v", cp.GetTreeSize(), err)
	}
	id, err := pki.Verify(cert, roots, pki.KindSigning, at)
	if err != nil {
		return stamped, fail(ReasonSignerUntrusted, -1, "checkpoint %d: signer: %v", cp.GetTreeSize(), err)
	}
	if err := originSignedBy(cp.GetOrigin(), id); err != nil {
		return stamped, fail(ReasonOriginMismatch, -1, "checkpoint %d: %v", cp.GetTreeSize(), err)
	}
	return stamped, nil
}

// checkAgainst checks that the tree of every checkpoint in against (signed
// by this ledger earlier, kept elsewhere) is still the ledger's: the store
// holds at least its records, and its root at that size is the signed one.
func checkAgainst(txn *badger.Txn, size uint64, stored []storedCP, against []*ledgerv1.SignedCheckpoint, roots []*x509.Certificate) error {
	var origin string
	if len(stored) > 0 {
		cp := &ledgerv1.Checkpoint{}
		if err := proto.Unmarshal(stored[len(stored)-1].sc.GetCheckpoint(), cp); err == nil {
			origin = cp.GetOrigin()
		}
	}
	get := txnNodes(txn)
	for i, sc := range against {
		cp, _, err := checkCheckpointSignature(sc)
		if err != nil {
			return againstError(i, err)
		}
		when := "signed " + cp.GetTime().AsTime().UTC().Format(time.RFC3339)
		if len(roots) > 0 {
			stamped, err := verifyCheckpointTrust(sc, cp, roots)
			if err != nil {
				return againstError(i, err)
			}
			if !stamped.IsZero() {
				when += ", time-stamped " + stamped.UTC().Format(time.RFC3339)
			}
		}
		if origin != "" && cp.GetOrigin() != origin {
			return fail(ReasonOriginMismatch, i, "checkpoint is of %q, this ledger of %q", cp.GetOrigin(), origin)
		}
		if cp.GetTreeSize() > size {
			return fail(ReasonRolledBack, i, "this ledger holds %d records, but it signed checkpoint %d (%s) over %d: records were removed (restored from an older copy, or its tail cut with its checkpoints)",
				size, cp.GetTreeSize(), when, cp.GetTreeSize())
		}
		root, err := merkle.RootAt(get, cp.GetTreeSize())
		if err != nil {
			return fail(ReasonStoreCorrupt, i, "root at %d: %v", cp.GetTreeSize(), err)
		}
		if !bytes.Equal(root[:], cp.GetRootHash()) {
			return fail(ReasonForked, i, "this ledger's first %d records are not those of its checkpoint %d (%s): records were changed or replaced, and checkpoints signed again",
				cp.GetTreeSize(), cp.GetTreeSize(), when)
		}
	}
	return nil
}

// againstError numbers a failure of the i-th checkpoint of Against.
func againstError(i int, err error) error {
	var ve *VerifyError
	if errors.As(err, &ve) {
		return &VerifyError{Reason: ve.Reason, Item: i, Err: ve.Err}
	}
	return err
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
