package ledger

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	"github.com/sildmesh/sild/ledger/merkle"
)

// Key layout. Integers are big-endian so that keys sort numerically.
//
//	e <index>                 -> serialized Entry (the leaf data)
//	b <index>                 -> nonce || AES-GCM(serialized Body)
//	n <level> <index>         -> hash of a complete subtree of at least
//	                             2^minStoredLevel leaves (see txnNodes), and
//	                             the leaf hash of every archived leaf
//	k <size>                  -> serialized SignedCheckpoint
//	m <message id> 0 <index>  -> (index by message id)
//	c <client> 0 <second> <index>, s <target/service> 0 <second> <index>,
//	u <user id> 0 <second> <index> -> (start time, index)... of the records
//	                             of one commit, party and second of start
//	                             time (see partyindex.go)
//	a <end index>             -> serialized ArchiveRef (see archive.go)
//	x <SHA-256>               -> a certificate the stored entries share
//	                             (see certs.go)
const (
	pfxEntry      = 'e'
	pfxBody       = 'b'
	pfxNode       = 'n'
	pfxCheckpoint = 'k'
	pfxMsg        = 'm'
	pfxClient     = 'c'
	pfxService    = 's'
	pfxUser       = 'u'
)

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

func keyUint(b []byte) uint64 {
	if len(b) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b[:8])
}

func entryKey(i uint64) []byte      { return append([]byte{pfxEntry}, u64(i)...) }
func bodyKey(i uint64) []byte       { return append([]byte{pfxBody}, u64(i)...) }
func checkpointKey(s uint64) []byte { return append([]byte{pfxCheckpoint}, u64(s)...) }
func nodeKey(n merkle.Node) []byte {
	return append([]byte{pfxNode, n.Level}, u64(n.Index)...)
}

// indexPrefix is the prefix of one party's index keys.
func indexPrefix(pfx byte, id string) []byte {
	k := make([]byte, 0, len(id)+2)
	k = append(k, pfx)
	k = append(k, id...)
	return append(k, 0)
}

func timeIndexKey(pfx byte, id string, nanos int64, i uint64) []byte {
	k := indexPrefix(pfx, id)
	k = append(k, u64(uint64(nanos))...)
	return append(k, u64(i)...)
}

func msgKey(id string, i uint64) []byte { return append(indexPrefix(pfxMsg, id), u64(i)...) }

var marshalOpts = proto.MarshalOptions{Deterministic: true}

func marshal(m proto.Message) ([]byte, error) { return marshalOpts.Marshal(m) }

// getSize returns the tree size: one past the last entry, or the end of
// the archived prefix if that is further (every entry archived). Entries
// are only ever appended, and pruned from the front, so no key of its own
// (written by every commit) is needed.
func getSize(txn *badger.Txn) (uint64, error) {
	var size uint64
	it := txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: []byte{pfxEntry}})
	if it.Seek(entryKey(^uint64(0))); it.Valid() {
		size = keyUint(it.Item().Key()[1:]) + 1
	}
	it.Close()
	head, err := txnArchiveHead(txn)
	if err != nil {
		return 0, err
	}
	if head != nil {
		size = max(size, head.GetEndIndex())
	}
	return size, nil
}

// minStoredLevel is the height of the smallest subtrees whose hashes are
// stored. Lower ones (a subtree of fewer than 16 leaves) are recomputed
// from the entries when a proof needs them: storing every subtree would
// cost two keys per record in every synced commit, these cost an eighth
// of a key, and a proof reads at most 15 extra entries per such subtree.
const minStoredLevel = 4

// txnNodes returns the hash of any complete subtree: stored from
// minStoredLevel up, else computed from the leaves below it.
func txnNodes(txn *badger.Txn) merkle.NodeGetter {
	stored := txnStoredNodes(txn)
	var get merkle.NodeGetter
	get = func(n merkle.Node) (merkle.Hash, error) {
		switch {
		case n.Level >= minStoredLevel:
			return stored(n)
		case n.Level == 0:
			return txnLeafHash(txn, n.Index, stored)
		}
		l, err := get(merkle.Node{Level: n.Level - 1, Index: 2 * n.Index})
		if err != nil {
			return l, err
		}
		r, err := get(merkle.Node{Level: n.Level - 1, Index: 2*n.Index + 1})
		if err != nil {
			return r, err
		}
		return merkle.HashChildren(l, r), nil
	}
	return get
}

// txnLeafHash hashes the entry of leaf i, or returns the leaf hash stored
// when the entry was archived and pruned.
func txnLeafHash(txn *badger.Txn, i uint64, stored merkle.NodeGetter) (merkle.Hash, error) {
	raw, err := txnEntryRaw(txn, i)
	if errors.Is(err, ErrNotFound) {
		return stored(merkle.Node{Level: 0, Index: i})
	}
	if err != nil {
		return merkle.Hash{}, fmt.Errorf("leaf %d: %w", i, err)
	}
	return merkle.HashLeaf(raw), nil
}

// txnStoredNodes reads stored subtree hashes only.
func txnStoredNodes(txn *badger.Txn) merkle.NodeGetter {
	return func(n merkle.Node) (merkle.Hash, error) {
		var h merkle.Hash
		it, err := txn.Get(nodeKey(n))
		if err != nil {
			return h, fmt.Errorf("tree node %d/%d: %w", n.Level, n.Index, err)
		}
		err = it.Value(func(v []byte) error {
			if len(v) != merkle.HashSize {
				return fmt.Errorf("tree node %d/%d: corrupt", n.Level, n.Index)
			}
			copy(h[:], v)
			return nil
		})
		return h, err
	}
}

func txnRaw(txn *badger.Txn, key []byte) ([]byte, error) {
	it, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return it.ValueCopy(nil)
}

func txnEntry(txn *badger.Txn, i uint64) (*ledgerv1.Entry, error) {
	raw, err := txnEntryRaw(txn, i)
	if errors.Is(err, ErrNotFound) {
		if aerr := txnArchivedError(txn, i); aerr != nil {
			return nil, aerr
		}
	}
	if err != nil {
		return nil, fmt.Errorf("entry %d: %w", i, err)
	}
	e := &ledgerv1.Entry{}
	if err := proto.Unmarshal(raw, e); err != nil {
		return nil, fmt.Errorf("entry %d: %w", i, err)
	}
	return e, nil
}

func itemCheckpoint(it *badger.Item) (*ledgerv1.SignedCheckpoint, error) {
	sc := &ledgerv1.SignedCheckpoint{}
	err := it.Value(func(v []byte) error { return proto.Unmarshal(v, sc) })
	if err != nil {
		return nil, fmt.Errorf("checkpoint %d: %w", keyUint(it.Key()[1:]), err)
	}
	return sc, nil
}

// bodyAAD binds an encrypted body to its leaf.
func bodyAAD(i uint64) []byte { return append([]byte("sild-ledger-body-v1"), u64(i)...) }

func (l *Ledger) seal(i uint64, body []byte) []byte {
	nonce := make([]byte, l.aead.NonceSize(), l.aead.NonceSize()+len(body)+l.aead.Overhead())
	_, _ = rand.Read(nonce)
	return l.aead.Seal(nonce, nonce, body, bodyAAD(i))
}

func (l *Ledger) open(i uint64, sealed []byte) ([]byte, error) {
	if l.aead == nil {
		return nil, errors.New("no body key")
	}
	ns := l.aead.NonceSize()
	if len(sealed) < ns {
		return nil, errors.New("sealed body too short")
	}
	return l.aead.Open(nil, sealed[:ns], sealed[ns:], bodyAAD(i))
}

// entryBytes is the serialized ledgerv1.Entry of leaf i, byte for byte what
// the deterministic proto.Marshal of that message gives, encoded directly:
// the record, most of the entry, is copied once and nothing else is
// allocated. recOff is where rec starts in it (certs.go cuts certificates
// out of the record by their offsets).
func entryBytes(i uint64, rec, bodyDigest []byte, appended time.Time) (entry []byte, recOff int) {
	var ts [2 * (1 + binary.MaxVarintLen64)]byte // google.protobuf.Timestamp
	t := ts[:0]
	if s := appended.Unix(); s != 0 {
		t = protowire.AppendTag(t, 1, protowire.VarintType)
		t = protowire.AppendVarint(t, uint64(s))
	}
	if n := appended.Nanosecond(); n != 0 {
		t = protowire.AppendTag(t, 2, protowire.VarintType)
		t = protowire.AppendVarint(t, uint64(n))
	}
	// Four fields, each at most a one-byte tag and a varint (value or length).
	b := make([]byte, 0, 4*(1+binary.MaxVarintLen64)+len(rec)+len(bodyDigest)+len(t))
	if i != 0 {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, i)
	}
	if len(rec) > 0 {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(len(rec)))
		recOff = len(b)
		b = append(b, rec...)
	}
	if len(bodyDigest) > 0 {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendBytes(b, bodyDigest)
	}
	b = protowire.AppendTag(b, 4, protowire.BytesType)
	return protowire.AppendBytes(b, t), recOff
}

// writeBatch writes batch as the next leaves into one transaction and
// commits it synchronously. On success rng holds the new tree.
func (l *Ledger) writeBatch(batch []*pending, rng *merkle.Range) error {
	txn := l.db.NewTransaction(true)
	defer txn.Discard()
	now := l.cfg.Now()
	var setErr error
	set := func(k, v []byte) {
		if setErr == nil {
			setErr = txn.Set(k, v)
		}
	}
	var groups indexGroups
	newCerts := map[string][sha256.Size]byte{}
	for _, p := range batch {
		i := rng.Size()
		var digest []byte
		if p.body != nil {
			sum := sha256.Sum256(p.body)
			digest = sum[:]
			set(bodyKey(i), l.seal(i, p.body))
		}
		eb, recOff := entryBytes(i, p.rec, digest, now)
		set(entryKey(i), l.certs.compact(eb, recOff, p.certs, newCerts, set))
		set(msgKey(p.msgID, i), nil)
		start := p.start
		if start.IsZero() {
			start = now
		}
		ts := start.UnixNano()
		for _, pt := range p.parties {
			groups.add(pt.pfx, pt.id, ts, i)
		}
		rng.Append(merkle.HashLeaf(eb), func(n merkle.Node, h merkle.Hash) {
			if n.Level >= minStoredLevel {
				set(nodeKey(n), h[:])
			}
		})
		p.fut.index = i
	}
	groups.set(set)
	if setErr != nil {
		return setErr
	}
	if err := txn.Commit(); err != nil {
		return err
	}
	l.certs.remember(newCerts)
	return nil
}

// commit makes batch durable, splitting it if Badger finds it too big, and
// resolves its futures.
func (l *Ledger) commit(batch []*pending) {
	l.mu.RLock()
	rng := l.rng.Clone()
	l.mu.RUnlock()
	first := rng.Size()
	err := l.writeBatch(batch, rng)
	if errors.Is(err, badger.ErrTxnTooBig) && len(batch) > 1 {
		l.commit(batch[:len(batch)/2])
		l.commit(batch[len(batch)/2:])
		return
	}
	if err != nil {
		l.logger.Error("ledger commit failed", "records", len(batch), "err", err)
		for _, p := range batch {
			p.fut.err = unavailable("ledger cannot store records")
			close(p.fut.done)
		}
		return
	}
	l.mu.Lock()
	l.rng = rng
	l.mu.Unlock()
	l.records.Add(uint64(len(batch))) // before commits: see Stats
	l.commits.Add(1)
	l.hmu.Lock()
	if len(l.unstamped) == 0 || l.unstamped[len(l.unstamped)-1].first < first {
		l.unstamped = append(l.unstamped, mark{first: first, at: l.cfg.Now()})
	}
	l.hmu.Unlock()
	for _, p := range batch {
		close(p.fut.done)
	}
}

// badgerLogger passes Badger's messages to slog (its info and debug
// messages at debug level). It formats a message only if the level is
// enabled: Badger logs at debug level on every write.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) log(level slog.Level, f string, a []any) {
	ctx := context.Background()
	if b.l.Enabled(ctx, level) {
		b.l.Log(ctx, level, strings.TrimRight(fmt.Sprintf(f, a...), "\n"), "component", "badger")
	}
}

func (b badgerLogger) Errorf(f string, a ...any)   { b.log(slog.LevelError, f, a) }
func (b badgerLogger) Warningf(f string, a ...any) { b.log(slog.LevelWarn, f, a) }
func (b badgerLogger) Infof(f string, a ...any)    { b.log(slog.LevelDebug, f, a) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.log(slog.LevelDebug, f, a) }
