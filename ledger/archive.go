package ledger

// Retention: the oldest leaves of the ledger move to hash-linked archive
// files and are pruned from the store.
//
// An archive file is a serialized ledgerv1.Archive: a header (origin, leaf
// range [first, end), SHA-256 of the previous archive file, the age limit
// applied), the earliest time-stamped signed checkpoint whose tree covers
// the range, and each leaf's serialized Entry with its body as stored
// (still encrypted under the body key) and its inclusion path in that
// checkpoint. So every archive verifies on its own, offline, with the same
// checks as an evidence bundle, and consecutive files link by hash.
//
// Pruning deletes the archived entries, their bodies and their party/time
// index keys, but stores each pruned entry's leaf hash in its place and
// keeps the tree's stored nodes (so the root, new
// checkpoints and every proof of the kept records are unaffected), the
// signed checkpoints, and the message-id index keys (so a query for an
// archived message names the archive that holds it). For each archive the
// store keeps an ArchiveRef under "a" || big-endian end index; the last one
// is the head of the chain.
//
// Crash safety: the file is written atomically (temporary file, fsync,
// rename, fsync of the directory) before the store changes; its name
// depends only on its first index, so a rerun after a crash rewrites the
// same name (a file beyond the ledger's last ArchiveRef is such a leftover:
// its records are still in the ledger). The ArchiveRef is committed in the same synced transaction as
// the first batch of deletions; any leaf below the head that is still
// present (a crash between deletion batches) is pruned by the next Archive
// or New.

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	"github.com/sildmesh/sild/ledger/merkle"
)

// MaxArchiveEntries is the most leaves one archive file holds; Archive
// writes as many files as needed.
const MaxArchiveEntries = 50000

// pruneBatch is the most leaves pruned per synced transaction (a variable
// for the crash test).
var pruneBatch uint64 = 500

// Reasons of archive verification failures (see also the bundle reasons,
// which apply to an archive's checkpoint and entries).
const (
	ReasonArchiveMalformed Reason = "ARCHIVE_MALFORMED"
	ReasonArchiveLink      Reason = "ARCHIVE_LINK_BROKEN"
)

const pfxArchive = 'a'

func archiveKey(end uint64) []byte { return append([]byte{pfxArchive}, u64(end)...) }

// ArchiveFileName is the base name of the archive starting at leaf first.
func ArchiveFileName(first uint64) string { return fmt.Sprintf("ledger-%020d.archive", first) }

// ErrArchived matches (errors.Is) an *ArchivedError.
var ErrArchived = errors.New("record archived")

// ArchivedError is returned for a record that was archived and pruned.
type ArchivedError struct {
	Index uint64
	Ref   *ledgerv1.ArchiveRef
}

func (e *ArchivedError) Error() string {
	return fmt.Sprintf("record %d was archived to %s (records %d to %d, sha256 %x); check it with 'sild ledger verify-archive'",
		e.Index, e.Ref.GetFile(), e.Ref.GetFirstIndex(), e.Ref.GetEndIndex()-1, e.Ref.GetSha256())
}

// Is makes errors.Is(err, ErrArchived) hold.
func (e *ArchivedError) Is(target error) bool { return target == ErrArchived }

// ArchiveInfo describes one archive file written by Archive.
type ArchiveInfo struct {
	// File is the path of the archive file.
	File string
	// The file holds the leaves [First, End).
	First, End uint64
	SHA256     []byte
	PrevSHA256 []byte
	// CheckpointSize is the tree size of the checkpoint the leaves are
	// proven against.
	CheckpointSize uint64
}

func txnArchiveRef(it *badger.Item) (*ledgerv1.ArchiveRef, error) {
	ref := &ledgerv1.ArchiveRef{}
	if err := it.Value(func(v []byte) error { return proto.Unmarshal(v, ref) }); err != nil {
		return nil, fmt.Errorf("archive ref %d: %w", keyUint(it.Key()[1:]), err)
	}
	return ref, nil
}

// txnArchiveRefs returns every archive ref, oldest first.
func txnArchiveRefs(txn *badger.Txn) ([]*ledgerv1.ArchiveRef, error) {
	var out []*ledgerv1.ArchiveRef
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxArchive}})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		ref, err := txnArchiveRef(it.Item())
		if err != nil {
			return nil, err
		}
		out = append(out, ref)
	}
	return out, nil
}

// txnArchiveHead returns the last archive ref, or nil.
func txnArchiveHead(txn *badger.Txn) (*ledgerv1.ArchiveRef, error) {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxArchive}, Reverse: true})
	defer it.Close()
	it.Seek(archiveKey(^uint64(0)))
	if !it.Valid() {
		return nil, nil
	}
	return txnArchiveRef(it.Item())
}

// txnArchivedError returns an *ArchivedError if leaf i was archived, else nil.
func txnArchivedError(txn *badger.Txn, i uint64) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxArchive}})
	defer it.Close()
	it.Seek(archiveKey(i + 1))
	if !it.Valid() {
		return nil
	}
	ref, err := txnArchiveRef(it.Item())
	if err != nil {
		return err
	}
	if i < ref.GetFirstIndex() || i >= ref.GetEndIndex() {
		return nil
	}
	return &ArchivedError{Index: i, Ref: ref}
}

// ArchiveHead returns the end of the archived prefix (leaves below it are
// archived and pruned) and the SHA-256 of the last archive file (nil when
// nothing was archived).
func (l *Ledger) ArchiveHead() (end uint64, sha []byte, err error) {
	err = l.db.View(func(txn *badger.Txn) error {
		ref, err := txnArchiveHead(txn)
		if ref != nil {
			end, sha = ref.GetEndIndex(), ref.GetSha256()
		}
		return err
	})
	return end, sha, err
}

// Archives returns the refs of every archive, oldest first.
func (l *Ledger) Archives() ([]*ledgerv1.ArchiveRef, error) {
	var refs []*ledgerv1.ArchiveRef
	err := l.db.View(func(txn *badger.Txn) error {
		var err error
		refs, err = txnArchiveRefs(txn)
		return err
	})
	return refs, err
}

// Archive moves the leading leaves that ended (record end time, or append
// time without one) before the given time, and that a time-stamped
// checkpoint covers, into archive files in dir (at most MaxArchiveEntries
// each) and prunes them from the store. It stops at the first leaf that is
// too young or not yet covered. It returns the archives written, none if
// nothing was due. Archive may run while the ledger appends, and on a
// ledger opened with OpenReader (the node stopped); calls are serialized.
func (l *Ledger) Archive(ctx context.Context, before time.Time, dir string) ([]*ArchiveInfo, error) {
	l.amu.Lock()
	defer l.amu.Unlock()
	if err := l.finishPrune(); err != nil {
		return nil, err
	}
	// Temporary files of an archive interrupted by a crash.
	if tmps, err := filepath.Glob(filepath.Join(dir, "ledger-*.archive.tmp-*")); err == nil {
		for _, f := range tmps {
			_ = os.Remove(f)
		}
	}
	var out []*ArchiveInfo
	for {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		a, err := l.writeArchive(ctx, before, dir, MaxArchiveEntries)
		if err != nil || a == nil {
			return out, err
		}
		if err := l.commitArchive(a); err != nil {
			return out, err
		}
		out = append(out, a)
		l.logger.Info("ledger archived", "file", a.File, "first", a.First, "end", a.End)
	}
}

// writeArchive is the first phase of Archive: it writes the next archive
// file (at most limit leaves) atomically and returns it, or nil if nothing
// is due. The store is not changed.
func (l *Ledger) writeArchive(ctx context.Context, before time.Time, dir string, limit int) (*ArchiveInfo, error) {
	var a *ledgerv1.Archive
	info := &ArchiveInfo{}
	err := l.db.View(func(txn *badger.Txn) error {
		head, err := txnArchiveHead(txn)
		if err != nil {
			return err
		}
		first, prev := uint64(0), make([]byte, sha256.Size)
		if head != nil {
			first, prev = head.GetEndIndex(), head.GetSha256()
		}
		size, err := getSize(txn)
		if err != nil {
			return err
		}
		latest, err := stampedCheckpoint(txn, ^uint64(0), true)
		if err != nil {
			return err
		}
		limitEnd := min(size, latest.size, first+uint64(limit))
		end := first
		var stored []*Stored
		for ; end < limitEnd; end++ {
			if end%1024 == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			s, err := txnStored(txn, end)
			if err != nil {
				return err
			}
			t := s.Entry.GetAppendTime().AsTime()
			if et := s.Record.GetEndTime(); et != nil {
				t = et.AsTime()
			}
			if !t.Before(before) {
				break
			}
			stored = append(stored, s)
		}
		if end == first {
			return nil
		}
		cp, err := stampedCheckpoint(txn, end, false)
		if err != nil {
			return err
		}
		if cp.sc == nil {
			return fmt.Errorf("no time-stamped checkpoint covers record %d", end-1)
		}
		cpMsg := &ledgerv1.Checkpoint{}
		if err := proto.Unmarshal(cp.sc.GetCheckpoint(), cpMsg); err != nil {
			return fmt.Errorf("checkpoint %d: %w", cp.size, err)
		}
		a = &ledgerv1.Archive{
			Header: &ledgerv1.ArchiveHeader{Version: 1, Origin: cpMsg.GetOrigin(), FirstIndex: first, EndIndex: end,
				PrevArchiveSha256: prev, Created: timestamppbOf(l.cfg.Now()), Before: timestamppbOf(before)},
			Checkpoint: cp.sc,
		}
		get := txnNodes(txn)
		for _, s := range stored {
			path, err := merkle.InclusionProof(get, s.Index, cp.size)
			if err != nil {
				return err
			}
			ae := &ledgerv1.ArchivedEntry{Entry: s.Raw, InclusionPath: hashesToBytes(path)}
			if len(s.Entry.GetBodyDigest()) > 0 {
				if ae.SealedBody, err = txnRaw(txn, bodyKey(s.Index)); err != nil {
					return fmt.Errorf("body %d: %w", s.Index, err)
				}
			}
			a.Entries = append(a.Entries, ae)
		}
		info.First, info.End, info.PrevSHA256, info.CheckpointSize = first, end, prev, cp.size
		return nil
	})
	if err != nil || a == nil {
		if err != nil {
			err = fmt.Errorf("archive: %w", err)
		}
		return nil, err
	}
	data, err := marshal(a)
	if err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	info.File = filepath.Join(dir, ArchiveFileName(info.First))
	if err := writeFileAtomic(info.File, data); err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	sum := sha256.Sum256(data)
	info.SHA256 = sum[:]
	return info, nil
}

// stampedCheckpoint returns the time-stamped checkpoint of the largest size
// at most size (reverse) or of the smallest size at least size, or a zero
// storedCP if there is none.
func stampedCheckpoint(txn *badger.Txn, size uint64, reverse bool) (storedCP, error) {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxCheckpoint}, Reverse: reverse})
	defer it.Close()
	for it.Seek(checkpointKey(size)); it.Valid(); it.Next() {
		sc, err := itemCheckpoint(it.Item())
		if err != nil {
			return storedCP{}, err
		}
		if len(sc.GetTimestampToken()) > 0 {
			return storedCP{size: keyUint(it.Item().Key()[1:]), sc: sc}, nil
		}
	}
	return storedCP{}, nil
}

// writeFileAtomic writes data to path via a synced temporary file and a
// rename, then syncs the directory.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // fails harmlessly after the rename
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// commitArchive is the second phase of Archive: it records the archive as
// the chain head and prunes its leaves.
func (l *Ledger) commitArchive(a *ArchiveInfo) error {
	ref, err := marshal(&ledgerv1.ArchiveRef{FirstIndex: a.First, EndIndex: a.End, File: filepath.Base(a.File), Sha256: a.SHA256})
	if err != nil {
		return err
	}
	if err := l.prune(a.First, a.End, archiveKey(a.End), ref); err != nil {
		return fmt.Errorf("archive %s: %w", a.File, err)
	}
	return nil
}

// finishPrune prunes leaves below the archive head that are still stored
// (after a crash between pruning transactions).
func (l *Ledger) finishPrune() error {
	var first, end uint64
	err := l.db.View(func(txn *badger.Txn) error {
		head, err := txnArchiveHead(txn)
		if err != nil || head == nil {
			return err
		}
		end = head.GetEndIndex()
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxEntry}, PrefetchValues: false})
		defer it.Close()
		it.Rewind()
		if it.Valid() {
			first = keyUint(it.Item().Key()[1:])
		} else {
			first = end
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("finish pruning: %w", err)
	}
	if first >= end {
		return nil
	}
	l.logger.Warn("ledger finishing an interrupted prune", "first", first, "end", end)
	if err := l.prune(first, end, nil, nil); err != nil {
		return fmt.Errorf("finish pruning: %w", err)
	}
	return nil
}

// prune deletes the entries [first, end), their bodies and their party and
// time index keys in synced transactions of at most pruneBatch leaves; the
// first transaction also sets key to val (when key is not nil).
func (l *Ledger) prune(first, end uint64, key, val []byte) error {
	for lo := first; lo < end || key != nil; lo += pruneBatch {
		hi := min(end, lo+pruneBatch)
		txn := l.db.NewTransaction(true)
		err := func() error {
			if key != nil {
				if err := txn.Set(key, val); err != nil {
					return err
				}
			}
			for i := lo; i < hi; i++ {
				s, err := txnStored(txn, i)
				if errors.Is(err, ErrArchived) {
					continue // pruned before
				}
				if err != nil {
					return err
				}
				ts := s.Entry.GetAppendTime().AsTime().UnixNano()
				if st := s.Record.GetStartTime(); st != nil {
					ts = st.AsTime().UnixNano()
				}
				// The leaf hash replaces the entry in the tree: proofs
				// of kept leaves may need subtrees below minStoredLevel.
				h := merkle.HashLeaf(s.Raw)
				if err := txn.Set(nodeKey(merkle.Node{Level: 0, Index: i}), h[:]); err != nil {
					return err
				}
				for _, p := range partiesOf(s.Record) {
					if err := txnUnindex(txn, p.pfx, p.id, ts, i); err != nil {
						return err
					}
				}
				for _, k := range [][]byte{entryKey(i), bodyKey(i)} {
					if err := txn.Delete(k); err != nil {
						return err
					}
				}
			}
			return txn.Commit()
		}()
		txn.Discard()
		if err != nil {
			return err
		}
		key = nil
	}
	return nil
}

// ArchiveVerified is what a valid archive file proves.
type ArchiveVerified struct {
	Header *ledgerv1.ArchiveHeader
	// SHA256 of the file: the next archive's prev_archive_sha256.
	SHA256 []byte
	// The checkpoint, its signer and time-stamp, and the records.
	*Verified
	// SealedBodies is the number of (encrypted, unchecked) bodies.
	SealedBodies int
}

// VerifyArchive checks one serialized archive file offline against the trust
// bundle roots: its header against its entries, the checkpoint's signature,
// signer and time-stamp token, and every entry's inclusion in the checkpoint
// (the checks of VerifyBundle), and that every record ended before the
// header's age limit. When prevHash is not nil the header must
// link to it (the SHA-256 of the previous archive file, or 32 zero bytes for
// the first). Bodies are encrypted under the node's body key and are only
// checked to be present where the entry has a body digest. The error is a
// *VerifyError; its Item is the entry's position in the file.
func VerifyArchive(data, prevHash []byte, roots []*x509.Certificate) (*ArchiveVerified, error) {
	a := &ledgerv1.Archive{}
	if err := proto.Unmarshal(data, a); err != nil {
		return nil, fail(ReasonArchiveMalformed, -1, "decode: %v", err)
	}
	h := a.GetHeader()
	switch {
	case h == nil:
		return nil, fail(ReasonArchiveMalformed, -1, "no header")
	case h.GetVersion() != 1:
		return nil, fail(ReasonArchiveMalformed, -1, "version %d, want 1", h.GetVersion())
	case h.GetEndIndex() <= h.GetFirstIndex() || h.GetEndIndex()-h.GetFirstIndex() != uint64(len(a.GetEntries())):
		return nil, fail(ReasonArchiveMalformed, -1, "header says records %d to %d but the file holds %d", h.GetFirstIndex(), h.GetEndIndex(), len(a.GetEntries()))
	case len(h.GetPrevArchiveSha256()) != sha256.Size:
		return nil, fail(ReasonArchiveMalformed, -1, "previous archive hash has %d bytes", len(h.GetPrevArchiveSha256()))
	case h.GetFirstIndex() == 0 && !bytes.Equal(h.GetPrevArchiveSha256(), make([]byte, sha256.Size)):
		return nil, fail(ReasonArchiveLink, -1, "the first archive links to a previous one (%x)", h.GetPrevArchiveSha256())
	}
	if prevHash != nil && !bytes.Equal(h.GetPrevArchiveSha256(), prevHash) {
		return nil, fail(ReasonArchiveLink, -1, "links to previous archive %x, want %x", h.GetPrevArchiveSha256(), prevHash)
	}
	b := &ledgerv1.EvidenceBundle{Version: 1, Checkpoint: a.GetCheckpoint()}
	sealed := 0
	for _, e := range a.GetEntries() {
		b.Items = append(b.Items, &ledgerv1.EvidenceItem{Entry: e.GetEntry(), InclusionPath: e.GetInclusionPath()})
		if len(e.GetSealedBody()) > 0 {
			sealed++
		}
	}
	bundle, err := marshal(b)
	if err != nil {
		return nil, fail(ReasonArchiveMalformed, -1, "%v", err)
	}
	v, err := VerifyBundle(bundle, roots)
	if err != nil {
		return nil, err
	}
	if h.GetOrigin() != v.Origin {
		return nil, fail(ReasonArchiveMalformed, -1, "header origin %q, checkpoint origin %q", h.GetOrigin(), v.Origin)
	}
	for k, s := range v.Records {
		if want := h.GetFirstIndex() + uint64(k); s.Index != want {
			return nil, fail(ReasonIndexMismatch, k, "entry has index %d, want %d", s.Index, want)
		}
		if (len(s.Entry.GetBodyDigest()) > 0) != (len(a.GetEntries()[k].GetSealedBody()) > 0) {
			return nil, fail(ReasonBodyMismatch, k, "record %d: body digest and stored body disagree", s.Index)
		}
		ended := s.Entry.GetAppendTime().AsTime()
		if et := s.Record.GetEndTime(); et != nil {
			ended = et.AsTime()
		}
		if !ended.Before(h.GetBefore().AsTime()) {
			return nil, fail(ReasonArchiveMalformed, k, "record %d ended at %s, not before the archive's limit %s", s.Index,
				ended.UTC().Format(time.RFC3339Nano), h.GetBefore().AsTime().UTC().Format(time.RFC3339Nano))
		}
	}
	sum := sha256.Sum256(data)
	return &ArchiveVerified{Header: h, SHA256: sum[:], Verified: v, SealedBodies: sealed}, nil
}

// VerifyArchiveChain checks consecutive archive files, oldest first: each
// file as VerifyArchive does, and that each links to the one before (hash
// and leaf range). The first file links to nothing when it starts at leaf
// 0; a chain may also start later (at a file whose predecessor the caller
// does not have). The error names the file by position and is a
// *VerifyError.
func VerifyArchiveChain(files [][]byte, roots []*x509.Certificate) ([]*ArchiveVerified, error) {
	var out []*ArchiveVerified
	var prev *ArchiveVerified
	for k, data := range files {
		var prevHash []byte
		if prev != nil {
			prevHash = prev.SHA256
		}
		v, err := VerifyArchive(data, prevHash, roots)
		if err != nil {
			return out, fmt.Errorf("archive %d: %w", k, err)
		}
		if prev != nil && v.Header.GetFirstIndex() != prev.Header.GetEndIndex() {
			return out, fmt.Errorf("archive %d: %w", k, fail(ReasonArchiveLink, -1, "starts at record %d, the previous one ended at %d", v.Header.GetFirstIndex(), prev.Header.GetEndIndex()))
		}
		out = append(out, v)
		prev = v
	}
	return out, nil
}

// archiver archives, every Config.ArchiveInterval, the records older than
// Config.Retention.
func (l *Ledger) archiver(ctx context.Context) {
	t := time.NewTicker(l.cfg.ArchiveInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := l.Archive(ctx, l.cfg.Now().Add(-l.cfg.Retention), l.cfg.ArchiveDir); err != nil && ctx.Err() == nil {
			l.logger.Error("ledger archive failed", "dir", l.cfg.ArchiveDir, "err", err)
		}
	}
}

// ExportArchived builds the evidence bundle of a message id from an archive
// file, as Export does for the records still in the ledger: the archived
// records of the message with their inclusion proofs and the archive's
// time-stamped checkpoint, and, when bodyKey (the node's AES-256 body key)
// is given, the decrypted bodies, checked against their digests. The bundle
// verifies with VerifyBundle.
func ExportArchived(data []byte, messageID string, bodyKey []byte) (*ledgerv1.EvidenceBundle, error) {
	a := &ledgerv1.Archive{}
	if err := proto.Unmarshal(data, a); err != nil {
		return nil, fmt.Errorf("export %s from archive: %w", messageID, err)
	}
	var aead cipher.AEAD
	if len(bodyKey) > 0 {
		block, err := aes.NewCipher(bodyKey)
		if err != nil {
			return nil, fmt.Errorf("export %s from archive: body key: %w", messageID, err)
		}
		aead, _ = cipher.NewGCM(block)
	}
	b := &ledgerv1.EvidenceBundle{Version: 1, Checkpoint: a.GetCheckpoint()}
	for _, ae := range a.GetEntries() {
		e, rec := &ledgerv1.Entry{}, &ledgerv1.Record{}
		if err := proto.Unmarshal(ae.GetEntry(), e); err != nil {
			return nil, fmt.Errorf("export %s from archive: entry: %w", messageID, err)
		}
		if err := proto.Unmarshal(e.GetRecord(), rec); err != nil {
			return nil, fmt.Errorf("export %s from archive: record %d: %w", messageID, e.GetIndex(), err)
		}
		if rec.GetMessageId() != messageID {
			continue
		}
		item := &ledgerv1.EvidenceItem{Entry: ae.GetEntry(), InclusionPath: ae.GetInclusionPath()}
		if sealed := ae.GetSealedBody(); len(sealed) > 0 && aead != nil {
			ns := aead.NonceSize()
			if len(sealed) < ns {
				return nil, fmt.Errorf("export %s from archive: body %d too short", messageID, e.GetIndex())
			}
			body, err := aead.Open(nil, sealed[:ns], sealed[ns:], bodyAAD(e.GetIndex()))
			if err != nil {
				return nil, fmt.Errorf("export %s from archive: body %d: %w", messageID, e.GetIndex(), err)
			}
			if sum := sha256.Sum256(body); !bytes.Equal(sum[:], e.GetBodyDigest()) {
				return nil, fmt.Errorf("export %s from archive: body %d does not match its digest", messageID, e.GetIndex())
			}
			item.Body = body
		}
		b.Items = append(b.Items, item)
	}
	if len(b.Items) == 0 {
		return nil, fmt.Errorf("export %s from archive: %w", messageID, ErrNotFound)
	}
	return b, nil
}
