package ledger

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	"github.com/sildmesh/sild/ledger/merkle"
)

// Stored is a record as the ledger holds it.
type Stored struct {
	Index  uint64
	Entry  *ledgerv1.Entry
	Record *ledgerv1.Record
	// Raw is the serialized Entry, the leaf data.
	Raw []byte
}

func txnStored(txn *badger.Txn, i uint64) (*Stored, error) {
	raw, err := txnEntryRaw(txn, i)
	if errors.Is(err, ErrNotFound) {
		if aerr := txnArchivedError(txn, i); aerr != nil {
			return nil, aerr
		}
	}
	if err != nil {
		return nil, fmt.Errorf("entry %d: %w", i, err)
	}
	s := &Stored{Index: i, Raw: raw, Entry: &ledgerv1.Entry{}, Record: &ledgerv1.Record{}}
	if err := proto.Unmarshal(raw, s.Entry); err != nil {
		return nil, fmt.Errorf("entry %d: %w", i, err)
	}
	if err := proto.Unmarshal(s.Entry.GetRecord(), s.Record); err != nil {
		return nil, fmt.Errorf("record %d: %w", i, err)
	}
	return s, nil
}

// Get returns the record at leaf index i.
func (l *Ledger) Get(i uint64) (*Stored, error) {
	var s *Stored
	err := l.db.View(func(txn *badger.Txn) error {
		var err error
		s, err = txnStored(txn, i)
		return err
	})
	return s, err
}

// ByMessageID returns the records of a message id (usually one per side
// that this node played), oldest first.
func (l *Ledger) ByMessageID(id string) ([]*Stored, error) {
	var out []*Stored
	err := l.db.View(func(txn *badger.Txn) error {
		pfx := indexPrefix(pfxMsg, id)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: pfx})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			s, err := txnStored(txn, keyUint(it.Item().Key()[len(pfx):]))
			if err != nil {
				return err
			}
			out = append(out, s)
		}
		return nil
	})
	return out, err
}

// Recent calls fn with each record appended at or after since, newest
// first, until fn returns an error (returned as is; ErrStop stops without
// error). It reads one entry after another within one read transaction, so
// its cost is that of the records it visits: a restarted node learns the
// message ids of its recent exchanges from it. The scan stops at the first
// record appended before since (append times follow the index, barring the
// clock going back).
func (l *Ledger) Recent(since time.Time, fn func(*Stored) error) error {
	err := l.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: []byte{pfxEntry}, PrefetchValues: true, PrefetchSize: 256})
		defer it.Close()
		for it.Seek(entryKey(^uint64(0))); it.Valid(); it.Next() {
			i := keyUint(it.Item().Key()[1:])
			s, err := txnStored(txn, i)
			if err != nil {
				return err
			}
			if s.Entry.GetAppendTime().AsTime().Before(since) {
				return nil
			}
			if err := fn(s); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, ErrStop) {
		return nil
	}
	return err
}

// ErrStop, returned by the function given to Recent, ends the scan early
// without error.
var ErrStop = errors.New("stop")

// ByClient returns the records of calls made by client (a subsystem) that
// started in [from, to), oldest first, at most limit (0: no limit). A zero
// from or to leaves that end open.
func (l *Ledger) ByClient(client string, from, to time.Time, limit int) ([]*Stored, error) {
	return l.byTime(pfxClient, client, from, to, limit)
}

// ByService returns the records of calls to service (a gRPC service name)
// of the target subsystem that started in [from, to).
func (l *Ledger) ByService(target, service string, from, to time.Time, limit int) ([]*Stored, error) {
	return l.byTime(pfxService, target+"/"+service, from, to, limit)
}

// ByUser returns the records of calls made on behalf of userID that started
// in [from, to): who looked at whose data, and why.
func (l *Ledger) ByUser(userID string, from, to time.Time, limit int) ([]*Stored, error) {
	return l.byTime(pfxUser, userID, from, to, limit)
}

func nanos(t time.Time, zero uint64) uint64 {
	if t.IsZero() {
		return zero
	}
	n := t.UnixNano()
	if n < 0 {
		return 0
	}
	return uint64(n)
}

func (l *Ledger) byTime(pfx byte, id string, from, to time.Time, limit int) ([]*Stored, error) {
	lo, hi := nanos(from, 0), nanos(to, math.MaxUint64)
	var out []*Stored
	err := l.db.View(func(txn *badger.Txn) error {
		idx, err := txnIndexed(txn, pfx, id, lo, hi, limit)
		if err != nil {
			return err
		}
		for _, i := range idx {
			s, err := txnStored(txn, i)
			if err != nil {
				return err
			}
			out = append(out, s)
		}
		return nil
	})
	return out, err
}

// Body returns the body kept for leaf i, decrypted and checked against the
// entry's body digest; ErrNotFound if none was kept.
func (l *Ledger) Body(i uint64) (*ledgerv1.Body, error) {
	var b *ledgerv1.Body
	err := l.db.View(func(txn *badger.Txn) error {
		raw, err := l.txnBody(txn, i)
		if err != nil {
			return err
		}
		b = &ledgerv1.Body{}
		return proto.Unmarshal(raw, b)
	})
	return b, err
}

// txnBody returns the serialized body of leaf i, checked against the entry.
func (l *Ledger) txnBody(txn *badger.Txn, i uint64) ([]byte, error) {
	e, err := txnEntry(txn, i)
	if err != nil {
		return nil, err
	}
	if len(e.GetBodyDigest()) == 0 {
		return nil, fmt.Errorf("body %d: %w", i, ErrNotFound)
	}
	sealed, err := txnRaw(txn, bodyKey(i))
	if err != nil {
		return nil, fmt.Errorf("body %d: %w", i, err)
	}
	raw, err := l.open(i, sealed)
	if err != nil {
		return nil, fmt.Errorf("body %d: %w", i, err)
	}
	if sum := sha256.Sum256(raw); !bytes.Equal(sum[:], e.GetBodyDigest()) {
		return nil, fmt.Errorf("body %d: digest mismatch", i)
	}
	return raw, nil
}

func hashesToBytes(hs []merkle.Hash) [][]byte {
	out := make([][]byte, len(hs))
	for i := range hs {
		out[i] = bytes.Clone(hs[i][:])
	}
	return out
}

// InclusionProof returns the audit path of leaf i in the tree of size
// leaves (size at most Size()).
func (l *Ledger) InclusionProof(i, size uint64) ([][]byte, error) {
	if size > l.Size() {
		return nil, fmt.Errorf("inclusion proof: size %d beyond tree size %d", size, l.Size())
	}
	var p []merkle.Hash
	err := l.db.View(func(txn *badger.Txn) error {
		var err error
		p, err = merkle.InclusionProof(txnNodes(txn), i, size)
		return err
	})
	return hashesToBytes(p), err
}

// ConsistencyProof returns the proof that the tree of size2 extends the tree
// of size1.
func (l *Ledger) ConsistencyProof(size1, size2 uint64) ([][]byte, error) {
	if size2 > l.Size() {
		return nil, fmt.Errorf("consistency proof: size %d beyond tree size %d", size2, l.Size())
	}
	var p []merkle.Hash
	err := l.db.View(func(txn *badger.Txn) error {
		var err error
		p, err = merkle.ConsistencyProof(txnNodes(txn), size1, size2)
		return err
	})
	return hashesToBytes(p), err
}

// RootAt returns the root of the tree when it had size leaves.
func (l *Ledger) RootAt(size uint64) (merkle.Hash, error) {
	if size > l.Size() {
		return merkle.Hash{}, fmt.Errorf("root at %d: beyond tree size %d", size, l.Size())
	}
	var h merkle.Hash
	err := l.db.View(func(txn *badger.Txn) error {
		var err error
		h, err = merkle.RootAt(txnNodes(txn), size)
		return err
	})
	return h, err
}

// Checkpoint returns the signed checkpoint of the given tree size.
func (l *Ledger) Checkpoint(size uint64) (*ledgerv1.SignedCheckpoint, error) {
	var sc *ledgerv1.SignedCheckpoint
	err := l.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(checkpointKey(size))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("checkpoint %d: %w", size, ErrNotFound)
		}
		if err != nil {
			return err
		}
		sc, err = itemCheckpoint(it)
		return err
	})
	return sc, err
}

// Checkpoints returns the sizes of all signed checkpoints and whether each
// is time-stamped, in order.
func (l *Ledger) Checkpoints() (sizes []uint64, stamped []bool, err error) {
	err = l.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxCheckpoint}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			sc, err := itemCheckpoint(it.Item())
			if err != nil {
				return err
			}
			sizes = append(sizes, keyUint(it.Item().Key()[1:]))
			stamped = append(stamped, len(sc.GetTimestampToken()) > 0)
		}
		return nil
	})
	return sizes, stamped, err
}

// ErrNoCheckpoint: no signed checkpoint covers the records yet.
var ErrNoCheckpoint = errors.New("no checkpoint covers the records yet")

// Export returns the evidence bundle of a message id: its records, the
// bodies kept (when the ledger has the body key), the earliest time-stamped
// checkpoint covering them (or, if none is stamped yet, the latest signed
// one) and an inclusion proof of each record in it.
func (l *Ledger) Export(messageID string) (*ledgerv1.EvidenceBundle, error) {
	recs, err := l.ByMessageID(messageID)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", messageID, err)
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("export %s: %w", messageID, ErrNotFound)
	}
	var maxIdx uint64
	for _, r := range recs {
		maxIdx = max(maxIdx, r.Index)
	}
	b := &ledgerv1.EvidenceBundle{Version: 1}
	err = l.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxCheckpoint}})
		defer it.Close()
		var chosen *ledgerv1.SignedCheckpoint
		var size uint64
		for it.Seek(checkpointKey(maxIdx + 1)); it.Valid(); it.Next() {
			sc, err := itemCheckpoint(it.Item())
			if err != nil {
				return err
			}
			chosen, size = sc, keyUint(it.Item().Key()[1:])
			if len(sc.GetTimestampToken()) > 0 {
				break
			}
		}
		if chosen == nil {
			return ErrNoCheckpoint
		}
		b.Checkpoint = chosen
		for _, r := range recs {
			path, err := merkle.InclusionProof(txnNodes(txn), r.Index, size)
			if err != nil {
				return err
			}
			item := &ledgerv1.EvidenceItem{Entry: r.Raw, InclusionPath: hashesToBytes(path)}
			if len(r.Entry.GetBodyDigest()) > 0 && l.aead != nil {
				body, err := l.txnBody(txn, r.Index)
				if err != nil {
					return err
				}
				item.Body = body
			}
			b.Items = append(b.Items, item)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", messageID, err)
	}
	return b, nil
}
