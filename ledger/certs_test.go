package ledger

import (
	"bytes"
	"context"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	"github.com/sildmesh/sild/ledger/merkle"
)

// countKeys counts the keys with a prefix.
func countKeys(t *testing.T, l *Ledger, pfx byte) int {
	t.Helper()
	n := 0
	err := l.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfx}, PrefetchValues: false})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCertificatesStoredOnce appends records whose signatures carry
// certificate chains: each certificate is stored once, each entry reads
// back (and hashes) as appended, before and after a restart, and Check and
// the proofs pass.
func TestCertificatesStoredOnce(t *testing.T) {
	p := newTestPKI(t)
	dir := t.TempDir()
	l := startLedger(t, testConfig(p, dir))
	other := newTestPKI(t) // the provider's chain differs from the consumer's
	appended := map[string]*ledgerv1.Record{}
	rec := func(i int) *ledgerv1.Record {
		r := signedRecord(i, p)
		r.ProviderSignature.SignerChain = [][]byte{other.chain[0].Raw}
		appended[r.GetMessageId()] = r
		return r
	}
	appendConcurrently(t, l.Ledger, 0, 30, rec)
	if n := countKeys(t, l.Ledger, pfxCert); n != 2 {
		t.Fatalf("%d certificates stored, want 2", n)
	}
	var leaves []merkle.Hash
	check := func(l *Ledger, n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			s, err := l.Get(uint64(i))
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(s.Record, appended[s.Record.GetMessageId()]) {
				t.Fatalf("record %d reads back as %v", i, s.Record)
			}
			if !bytes.Equal(s.Record.GetConsumerSignature().GetSignerChain()[0], p.chain[0].Raw) ||
				!bytes.Equal(s.Record.GetProviderSignature().GetSignerChain()[0], other.chain[0].Raw) {
				t.Fatalf("record %d: certificates not restored", i)
			}
			if i < len(leaves) && merkle.HashLeaf(s.Raw) != leaves[i] {
				t.Fatalf("entry %d reads back different from what was appended", i)
			}
			if i >= len(leaves) {
				leaves = append(leaves, merkle.HashLeaf(s.Raw))
			}
		}
		if _, root := l.Root(); root != merkle.RootOf(leaves[:n]) {
			t.Fatal("tree root is not the tree of the entries read back")
		}
	}
	check(l.Ledger, 30)
	// Stored much smaller than appended.
	err := l.db.View(func(txn *badger.Txn) error {
		v, err := txnRaw(txn, entryKey(3))
		if err != nil {
			return err
		}
		e, err := txnEntryRaw(txn, 3)
		if err != nil {
			return err
		}
		if len(v) > len(e)-2*len(p.chain[0].Raw)+100 {
			t.Errorf("entry stored in %d bytes, appended %d", len(v), len(e))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	waitStamped(t, l.Ledger)
	mustCheck(t, l.Ledger, p)
	l.stop(t)

	// After a restart the certificates are known: none is stored again.
	l = startLedger(t, testConfig(p, dir))
	check(l.Ledger, 30)
	appendConcurrently(t, l.Ledger, 30, 40, rec)
	if n := countKeys(t, l.Ledger, pfxCert); n != 2 {
		t.Fatalf("%d certificates stored after a restart, want 2", n)
	}
	check(l.Ledger, 40)
	waitStamped(t, l.Ledger)
	mustCheck(t, l.Ledger, p)
}

// TestCheckFindsCertificateDamage: a changed shared certificate fails
// Check (STORE_CORRUPT), and so does a changed stored entry (TREE_MISMATCH).
func TestCheckFindsCertificateDamage(t *testing.T) {
	p := newTestPKI(t)
	for name, tc := range map[string]struct {
		harm   func(txn *badger.Txn) error
		reason Reason
	}{
		"certificate changed": {func(txn *badger.Txn) error {
			h := sha256.Sum256(p.chain[0].Raw)
			c := bytes.Clone(p.chain[0].Raw)
			c[len(c)-1] ^= 1
			return txn.Set(certKey(h), c)
		}, ReasonStoreCorrupt},
		"certificate removed": {func(txn *badger.Txn) error {
			return txn.Delete(certKey(sha256.Sum256(p.chain[0].Raw)))
		}, ReasonStoreCorrupt},
		"entry changed": {func(txn *badger.Txn) error {
			v, err := txnRaw(txn, entryKey(2))
			if err != nil {
				return err
			}
			v[len(v)-1] ^= 1
			return txn.Set(entryKey(2), v)
		}, ReasonTreeMismatch},
	} {
		t.Run(name, func(t *testing.T) {
			l := startLedger(t, testConfig(p, t.TempDir()))
			appendConcurrently(t, l.Ledger, 0, 5, func(i int) *ledgerv1.Record { return signedRecord(i, p) })
			waitStamped(t, l.Ledger)
			mustCheck(t, l.Ledger, p)
			if err := l.db.Update(tc.harm); err != nil {
				t.Fatal(err)
			}
			if _, err := l.Check(context.Background(), p.roots()); ReasonOf(err) != tc.reason {
				t.Fatalf("check: %v, want %s", err, tc.reason)
			}
		})
	}
}

// TestCompactExpandAnyRecord: whatever the record bytes (here every prefix
// of a real record, most of them malformed), an entry expands back to
// exactly what was compacted.
func TestCompactExpandAnyRecord(t *testing.T) {
	p := newTestPKI(t)
	db, err := badger.Open(badger.DefaultOptions(t.TempDir()).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	full, _ := marshal(signedRecord(7, p))
	cs := &certStore{}
	for n := 0; n <= len(full); n++ {
		rec := full[:n]
		e, recOff := entryBytes(uint64(n), rec, nil, time.Unix(1700000000, 5))
		err := db.Update(func(txn *badger.Txn) error {
			added := map[string][sha256.Size]byte{}
			var setErr error
			stored := cs.compact(e, recOff, certSpans(rec), added, func(k, v []byte) {
				if setErr == nil {
					setErr = txn.Set(k, bytes.Clone(v))
				}
			})
			if setErr != nil {
				return setErr
			}
			cs.remember(added)
			if err := txn.Set(entryKey(uint64(n)), stored); err != nil {
				return err
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		err = db.View(func(txn *badger.Txn) error {
			got, err := txnEntryRaw(txn, uint64(n))
			if err != nil {
				return err
			}
			if !bytes.Equal(got, e) {
				t.Fatalf("record prefix %d: expanded entry differs", n)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(certSpans(full)) != 2 {
		t.Fatalf("%d certificates found in a record with two", len(certSpans(full)))
	}
}

// TestArchiveRestoresCertificates: archive files hold entries as appended
// (with their certificates), and the ledger checks after pruning them.
func TestArchiveRestoresCertificates(t *testing.T) {
	p := newTestPKI(t)
	l := startLedger(t, testConfig(p, t.TempDir()))
	rec := func(i int) *ledgerv1.Record {
		r := signedRecord(i, p)
		r.EndTime = timestampAt(i)
		return r
	}
	appendConcurrently(t, l.Ledger, 0, 20, rec)
	waitStamped(t, l.Ledger)
	infos, err := l.Archive(context.Background(), baseTime.Add(10*time.Second), t.TempDir())
	if err != nil || len(infos) != 1 || infos[0].End != 10 {
		t.Fatalf("archive: %v %+v", err, infos)
	}
	a := &ledgerv1.Archive{}
	if err := proto.Unmarshal(readFile(t, infos[0].File), a); err != nil {
		t.Fatal(err)
	}
	for k, ae := range a.GetEntries() {
		e, r := &ledgerv1.Entry{}, &ledgerv1.Record{}
		if err := proto.Unmarshal(ae.GetEntry(), e); err != nil {
			t.Fatal(err)
		}
		if err := proto.Unmarshal(e.GetRecord(), r); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(r.GetConsumerSignature().GetSignerChain()[0], p.chain[0].Raw) {
			t.Fatalf("archived entry %d lacks its certificate", k)
		}
		path := toHashesT(t, ae.GetInclusionPath())
		cp := &ledgerv1.Checkpoint{}
		if err := proto.Unmarshal(a.GetCheckpoint().GetCheckpoint(), cp); err != nil {
			t.Fatal(err)
		}
		if err := merkle.VerifyInclusion(e.GetIndex(), cp.GetTreeSize(), merkle.HashLeaf(ae.GetEntry()), path, merkle.Hash(cp.GetRootHash())); err != nil {
			t.Fatalf("archived entry %d: %v", k, err)
		}
	}
	mustCheck(t, l.Ledger, p)
}

func timestampAt(i int) *timestamppb.Timestamp {
	return timestamppb.New(baseTime.Add(time.Duration(i) * time.Second))
}
