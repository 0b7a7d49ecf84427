package ledger

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

// FuzzCheckStore changes one value of a real ledger's store (a byte
// flipped, the value cut short, or the key deleted) and runs Check on it,
// as an auditor does on a ledger directory they were handed: Check must
// not panic, and must find every change but the deletion of a checkpoint
// (a ledger need not keep every checkpoint it signed; CheckWith's Against
// catches the loss of records a kept one covered).
func FuzzCheckStore(f *testing.F) {
	p := newTestPKI(f)
	dir := f.TempDir()
	cfg := testConfig(p, dir)
	l := startLedger(f, cfg)
	for i := 0; i < 20; i++ { // 16 and more: stored subtree hashes too
		r := testRecord(i, "EE/GOV/1/full", "EE3800")
		if i%3 == 0 {
			r.ConsumerSignature = batchSign(f, p, r.RequestDigest) // a stored certificate
		}
		if _, err := l.Append(context.Background(), r, testBody(i)).Wait(context.Background()); err != nil {
			f.Fatal(err)
		}
		if i == 9 {
			waitStamped(f, l.Ledger)
		}
	}
	waitStamped(f, l.Ledger)
	l.stop(f)
	r, err := OpenReader(dir, testBodyKey, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = r.Close() })
	type kv struct{ k, v []byte }
	var store []kv
	err = r.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			store = append(store, kv{it.Item().KeyCopy(nil), v})
		}
		return nil
	})
	if err != nil {
		f.Fatal(err)
	}
	check := func(txn *badger.Txn) error {
		err := r.checkTxn(context.Background(), txn, CheckOptions{Roots: p.roots()}, &CheckReport{})
		var ve *VerifyError
		if err != nil && !errors.As(err, &ve) {
			err = fail(ReasonStoreCorrupt, -1, "%v", err)
		}
		return err
	}
	if err := r.db.View(check); err != nil {
		f.Fatalf("intact store: %v", err)
	}
	for i := range store {
		f.Add(uint16(i), uint32(0), uint8(1), uint32(0))
		f.Add(uint16(i), uint32(7), uint8(0x80), uint32(0))
		f.Add(uint16(i), uint32(0), uint8(0), uint32(5))
		f.Add(uint16(i), uint32(0), uint8(0), uint32(0))
	}
	f.Fuzz(func(t *testing.T, which uint16, off uint32, x uint8, cut uint32) {
		e := store[int(which)%len(store)]
		v := bytes.Clone(e.v)
		del := x == 0 && cut == 0
		if x != 0 && len(v) > 0 {
			v[int(off%uint32(len(v)))] ^= x
		}
		if cut != 0 && len(v) > 0 {
			v = v[:int(cut%uint32(len(v)))]
		}
		if !del && bytes.Equal(v, e.v) {
			return
		}
		txn := r.db.NewTransaction(true)
		defer txn.Discard()
		var werr error
		if del {
			werr = txn.Delete(e.k)
		} else {
			werr = txn.Set(e.k, v)
		}
		if werr != nil {
			t.Fatal(werr)
		}
		err := check(txn)
		if err == nil && !(del && e.k[0] == pfxCheckpoint) {
			t.Fatalf("key %q: change not found (deleted %v, value %x)", e.k, del, v)
		}
	})
}
