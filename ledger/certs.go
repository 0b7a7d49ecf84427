package ledger

// Certificates stored once.
//
// The exchange's records carry the consumer's and the provider's signature,
// each with its signer's certificate chain: about half of a record's bytes,
// the same certificates in every record between two nodes. Every byte of
// an entry is copied into Badger's log, memtable and tables and written
// back by each synced commit, so the store keeps each certificate once,
// under x || SHA-256(certificate), and an entry that holds certificates is
// stored as
//
//	0x00, uvarint(n), n × (uvarint(offset), SHA-256), the entry without them
//
// where each offset is where a certificate's bytes start in the entry.
// Stored entries are expanded back, byte for byte, before anything reads
// them (the leaf hash is over the entry as appended). A serialized Entry
// never starts with 0x00 (a field number 0 tag), so an entry without
// certificates is stored as it is.

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/encoding/protowire"
)

const pfxCert = 'x'

func certKey(h [sha256.Size]byte) []byte { return append([]byte{pfxCert}, h[:]...) }

// Field numbers of the certificates in a serialized Record: the signer
// chains (3) of the consumer (18) and provider (19) batch signatures.
const (
	recordConsumerSignature = 18
	recordProviderSignature = 19
	signatureSignerChain    = 3
)

// minStoredCert is the smallest value worth storing apart.
const minStoredCert = 128

// span is a certificate's bytes in a serialized record, [start, end).
type span struct{ start, end int }

// certSpans finds the signer-chain certificates of a serialized Record.
// Anything it does not parse is left in place.
func certSpans(rec []byte) []span {
	var out []span
	forEachBytesField(rec, 0, func(num protowire.Number, off int, v []byte) {
		if num != recordConsumerSignature && num != recordProviderSignature {
			return
		}
		forEachBytesField(v, off, func(num protowire.Number, off int, v []byte) {
			if num == signatureSignerChain && len(v) >= minStoredCert {
				out = append(out, span{off, off + len(v)})
			}
		})
	})
	return out
}

// forEachBytesField calls fn for each length-delimited field of the
// message b (which starts at offset base) with the offset of its value.
func forEachBytesField(b []byte, base int, fn func(num protowire.Number, off int, v []byte)) {
	for pos := 0; pos < len(b); {
		num, typ, n := protowire.ConsumeTag(b[pos:])
		if n < 0 {
			return
		}
		pos += n
		if typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b[pos:])
			if m < 0 {
				return
			}
			fn(num, base+pos+m-len(v), v)
			pos += m
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b[pos:])
		if m < 0 {
			return
		}
		pos += m
	}
}

// certStore tracks the certificates already stored; only the committer
// uses it.
type certStore struct {
	known map[string][sha256.Size]byte // certificate -> its hash
}

// compact returns the stored form of entry e, whose record starts at recOff
// and has its certificates at spans (offsets in the record). It calls set
// for each certificate neither stored yet nor in added (the commit's new
// ones), and adds it there, to remember once the commit succeeded.
func (cs *certStore) compact(e []byte, recOff int, spans []span, added map[string][sha256.Size]byte, set func(k, v []byte)) []byte {
	if len(spans) == 0 {
		return e
	}
	head := []byte{0}
	head = binary.AppendUvarint(head, uint64(len(spans)))
	body := make([]byte, 0, len(e))
	prev := 0
	for _, s := range spans {
		start, end := recOff+s.start, recOff+s.end
		cert := e[start:end]
		h, ok := cs.known[string(cert)]
		if !ok {
			if h, ok = added[string(cert)]; !ok {
				h = sha256.Sum256(cert)
				set(certKey(h), cert)
				added[string(cert)] = h
			}
		}
		head = binary.AppendUvarint(head, uint64(start))
		head = append(head, h[:]...)
		body = append(body, e[prev:start]...)
		prev = end
	}
	body = append(body, e[prev:]...)
	return append(head, body...)
}

// remember marks certificates stored.
func (cs *certStore) remember(added map[string][sha256.Size]byte) {
	if cs.known == nil {
		cs.known = map[string][sha256.Size]byte{}
	}
	for c, h := range added {
		cs.known[c] = h
	}
}

// loadCerts returns the certificates the store holds.
func loadCerts(txn *badger.Txn) (*certStore, error) {
	cs := &certStore{known: map[string][sha256.Size]byte{}}
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxCert}})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		k := it.Item().Key()
		if len(k) != 1+sha256.Size {
			return nil, fmt.Errorf("certificate key %x malformed", k)
		}
		err := it.Item().Value(func(v []byte) error {
			cs.known[string(v)] = [sha256.Size]byte(k[1:])
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return cs, nil
}

var errStoredEntry = errors.New("stored entry malformed")

// expandEntry returns the entry of a stored value (v itself when it holds
// no certificates), reading the certificates from txn and checking each
// against its hash.
func expandEntry(txn *badger.Txn, v []byte) ([]byte, error) {
	if len(v) == 0 || v[0] != 0 {
		return v, nil
	}
	n, k := binary.Uvarint(v[1:])
	if k <= 0 || n > uint64(len(v)) {
		return nil, errStoredEntry
	}
	refs := v[1+k:]
	type ref struct {
		off  uint64
		hash [sha256.Size]byte
	}
	rs := make([]ref, 0, n)
	for range n {
		off, k := binary.Uvarint(refs)
		if k <= 0 || len(refs) < k+sha256.Size {
			return nil, errStoredEntry
		}
		rs = append(rs, ref{off, [sha256.Size]byte(refs[k : k+sha256.Size])})
		refs = refs[k+sha256.Size:]
	}
	body := refs
	out := make([]byte, 0, 2*len(v))
	for _, r := range rs {
		gap := r.off - uint64(len(out))
		if r.off < uint64(len(out)) || gap > uint64(len(body)) {
			return nil, errStoredEntry
		}
		out = append(out, body[:gap]...)
		body = body[gap:]
		cert, err := txnRaw(txn, certKey(r.hash))
		if err != nil { // not ErrNotFound: the entry is there
			return nil, fmt.Errorf("%w: certificate %x: %v", errStoredEntry, r.hash[:8], err)
		}
		if sha256.Sum256(cert) != r.hash {
			return nil, fmt.Errorf("%w: certificate %x does not match its hash", errStoredEntry, r.hash[:8])
		}
		out = append(out, cert...)
	}
	return append(out, body...), nil
}

// txnEntryRaw returns the serialized Entry of leaf i, ErrNotFound if it is
// not stored.
func txnEntryRaw(txn *badger.Txn, i uint64) ([]byte, error) {
	v, err := txnRaw(txn, entryKey(i))
	if err != nil {
		return nil, err
	}
	e, err := expandEntry(txn, v)
	if err != nil {
		return nil, fmt.Errorf("entry %d: %w", i, err)
	}
	return e, nil
}
