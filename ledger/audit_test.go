package ledger

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
)

// The auditor's cases: what a changed, cut or restored ledger directory
// must make Check report.

// copyDir copies a stopped ledger's directory, as a backup does.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// stampedLedger appends records from..to-1 to a running ledger of dir and
// stops it once a time-stamped checkpoint covers them.
func stampedLedger(t *testing.T, cfg Config, from, to int) {
	t.Helper()
	l := startLedger(t, cfg)
	for i := from; i < to; i++ {
		appendWait(t, l.Ledger, testRecord(i, "EE/GOV/1/full", ""), testBody(i))
	}
	waitStamped(t, l.Ledger)
	l.stop(t)
}

// reader opens dir with OpenReader, closed at cleanup.
func reader(t *testing.T, dir string) *Ledger {
	t.Helper()
	r, err := OpenReader(dir, testBodyKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func exportCheckpoint(t *testing.T, dir, msgID string) *ledgerv1.SignedCheckpoint {
	t.Helper()
	r, err := OpenReader(dir, testBodyKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := r.Export(msgID)
	if err != nil {
		t.Fatal(err)
	}
	return b.GetCheckpoint()
}

// TestCheckAgainstEarlierCheckpoints restores a ledger from an older copy,
// which is consistent in itself: Check passes, and only a checkpoint the
// ledger signed after the copy (from an evidence bundle an auditor kept)
// shows it was rolled back; once the restored node appends other records
// in place of the lost ones, the same checkpoint shows the fork.
func TestCheckAgainstEarlierCheckpoints(t *testing.T) {
	p := newTestPKI(t)
	dir := filepath.Join(t.TempDir(), "ledger")
	cfg := testConfig(p, dir)
	stampedLedger(t, cfg, 0, 4)
	backup := filepath.Join(t.TempDir(), "backup")
	copyDir(t, dir, backup)
	stampedLedger(t, cfg, 4, 9)
	later := exportCheckpoint(t, dir, "msg-000007") // kept by an auditor
	early := exportCheckpoint(t, dir, "msg-000001")

	r := reader(t, dir)
	if _, err := r.CheckWith(context.Background(), CheckOptions{Roots: p.roots(), Against: []*ledgerv1.SignedCheckpoint{early, later}}); err != nil {
		t.Fatalf("intact ledger against its own checkpoints: %v", err)
	}
	_ = r.Close()

	// Restore the backup in place of the ledger.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	copyDir(t, backup, dir)
	r = reader(t, dir)
	if _, err := r.Check(context.Background(), p.roots()); err != nil {
		t.Fatalf("the restored copy is consistent in itself, check: %v", err)
	}
	_, err := r.CheckWith(context.Background(), CheckOptions{Roots: p.roots(), Against: []*ledgerv1.SignedCheckpoint{early, later}})
	if ReasonOf(err) != ReasonRolledBack {
		t.Fatalf("rolled back ledger: %v, want %s", err, ReasonRolledBack)
	}
	_ = r.Close()

	// The restored node goes on: other records take the lost indexes.
	stampedLedger(t, cfg, 100, 106)
	r = reader(t, dir)
	if _, err := r.Check(context.Background(), p.roots()); err != nil {
		t.Fatalf("the forked ledger is consistent in itself, check: %v", err)
	}
	_, err = r.CheckWith(context.Background(), CheckOptions{Roots: p.roots(), Against: []*ledgerv1.SignedCheckpoint{later}})
	if ReasonOf(err) != ReasonForked {
		t.Fatalf("forked ledger: %v, want %s", err, ReasonForked)
	}
	if _, err := r.CheckWith(context.Background(), CheckOptions{Roots: p.roots(), Against: []*ledgerv1.SignedCheckpoint{early}}); err != nil {
		t.Fatalf("a checkpoint from before the backup still holds: %v", err)
	}

	// A checkpoint of another node's ledger is named as such.
	odir := filepath.Join(t.TempDir(), "other")
	ocfg := testConfig(p, odir)
	ocfg.Origin = "EE/GOV/70000311/ss1"
	stampedLedger(t, ocfg, 0, 2)
	foreign := exportCheckpoint(t, odir, "msg-000001")
	if _, err := r.CheckWith(context.Background(), CheckOptions{Roots: p.roots(), Against: []*ledgerv1.SignedCheckpoint{foreign}}); ReasonOf(err) != ReasonOriginMismatch {
		t.Fatalf("another node's checkpoint: %v, want %s", err, ReasonOriginMismatch)
	}
	// A forged one (changed root) fails on its signature.
	forged := proto.Clone(later).(*ledgerv1.SignedCheckpoint)
	forged.Checkpoint = flip(forged.Checkpoint, len(forged.Checkpoint)-3)
	if _, err := r.CheckWith(context.Background(), CheckOptions{Roots: p.roots(), Against: []*ledgerv1.SignedCheckpoint{forged}}); ReasonOf(err) != ReasonCheckpointSignature && ReasonOf(err) != ReasonCheckpointMalformed {
		t.Fatalf("forged checkpoint: %v", err)
	}
}

// TestCheckFindsTampering changes a stopped ledger's store in the ways an
// insider without the node's key could, and checks the reason Check gives.
func TestCheckFindsTampering(t *testing.T) {
	p := newTestPKI(t)
	stranger := newTestPKI(t) // a key of another CA
	resign := func(k *testPKI, sc *ledgerv1.SignedCheckpoint) {
		h := sha256.Sum256(append([]byte(checkpointPrefix), sc.Checkpoint...))
		sc.Signature, _ = k.key.Sign(rand.Reader, h[:], crypto.SHA256)
		sc.SignerChain = [][]byte{k.chain[0].Raw}
		sc.TimestampToken = nil
	}
	lastCP := func(txn *badger.Txn) (uint64, *ledgerv1.SignedCheckpoint) {
		it := txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: []byte{pfxCheckpoint}})
		defer it.Close()
		it.Seek(checkpointKey(^uint64(0)))
		sc, err := itemCheckpoint(it.Item())
		if err != nil {
			t.Fatal(err)
		}
		return keyUint(it.Item().Key()[1:]), sc
	}
	for _, tc := range []struct {
		name   string
		reason Reason
		harm   func(txn *badger.Txn) error
	}{
		{"middle record deleted", ReasonStoreCorrupt, func(txn *badger.Txn) error { return txn.Delete(entryKey(3)) }},
		{"records reordered", ReasonIndexMismatch, func(txn *badger.Txn) error {
			a, _ := txnRaw(txn, entryKey(2))
			b, _ := txnRaw(txn, entryKey(3))
			_ = txn.Set(entryKey(2), b)
			return txn.Set(entryKey(3), a)
		}},
		{"tail cut", ReasonTruncated, func(txn *badger.Txn) error {
			_ = txn.Delete(msgKey("msg-000007", 7))
			return txn.Delete(entryKey(7))
		}},
		{"checkpoint signed again by a key the roots do not certify", ReasonSignerUntrusted, func(txn *badger.Txn) error {
			size, sc := lastCP(txn)
			resign(stranger, sc)
			b, _ := proto.Marshal(sc)
			return txn.Set(checkpointKey(size), b)
		}},
		{"checkpoint of another origin", ReasonOriginMismatch, func(txn *badger.Txn) error {
			size, sc := lastCP(txn)
			cp := &ledgerv1.Checkpoint{}
			_ = proto.Unmarshal(sc.Checkpoint, cp)
			cp.Origin = "EE/GOV/9/ss9"
			sc.Checkpoint, _ = marshal(cp)
			resign(p, sc)
			b, _ := proto.Marshal(sc)
			return txn.Set(checkpointKey(size), b)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig(p, dir)
			stampedLedger(t, cfg, 0, 4)
			stampedLedger(t, cfg, 4, 8) // a second checkpoint, at 8
			r := reader(t, dir)
			if _, err := r.Check(context.Background(), p.roots()); err != nil {
				t.Fatalf("before harm: %v", err)
			}
			if err := r.db.Update(tc.harm); err != nil {
				t.Fatal(err)
			}
			_, err := r.Check(context.Background(), p.roots())
			if ReasonOf(err) != tc.reason {
				t.Fatalf("check: %v, want %s", err, tc.reason)
			}
		})
	}
}

// TestOpenReaderRefusesNoLedger: a mistyped directory is refused, not
// created and found "OK" with 0 entries.
func TestOpenReaderRefusesNoLedger(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	if _, err := OpenReader(missing, nil, nil); !errors.Is(err, ErrNoLedger) {
		t.Fatalf("missing directory: %v", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenReader created %s: %v", missing, err)
	}
	if _, err := OpenReader(t.TempDir(), nil, nil); !errors.Is(err, ErrNoLedger) {
		t.Fatalf("empty directory: %v", err)
	}
	// A running ledger's directory: the error says why.
	l := startLedger(t, testConfig(newTestPKI(t), t.TempDir()))
	if _, err := OpenReader(l.cfg.Dir, nil, nil); err == nil || !strings.Contains(err.Error(), "running node") {
		t.Fatalf("directory of a running ledger: %v", err)
	}
}

// TestCheckProgress: a long check reports how far it got.
func TestCheckProgress(t *testing.T) {
	p := newTestPKI(t)
	dir := t.TempDir()
	stampedLedger(t, testConfig(p, dir), 0, 10)
	r := reader(t, dir)
	var calls [][2]uint64
	if _, err := r.CheckWith(context.Background(), CheckOptions{Progress: func(done, total uint64) {
		calls = append(calls, [2]uint64{done, total})
	}}); err != nil {
		t.Fatal(err)
	}
	if len(calls) < 2 || calls[0] != [2]uint64{0, 10} || calls[len(calls)-1] != [2]uint64{10, 10} {
		t.Fatalf("progress calls %v, want (0,10) first and (10,10) last", calls)
	}
}

// TestBundleOriginMustBeSigner: a node cannot pass off its checkpoint as
// another node's ledger; verify names the mismatch.
func TestBundleOriginMustBeSigner(t *testing.T) {
	p := newTestPKI(t) // signs as EE/GOV/70000310/ss1
	dir := t.TempDir()
	cfg := testConfig(p, dir)
	cfg.Origin = "EE/GOV/70000311/ss1"
	stampedLedger(t, cfg, 0, 2)
	r := reader(t, dir)
	b, err := r.Export("msg-000001")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := proto.Marshal(b)
	if _, err := VerifyBundle(data, p.roots()); ReasonOf(err) != ReasonOriginMismatch {
		t.Fatalf("verify: %v, want %s", err, ReasonOriginMismatch)
	}
	if _, err := r.Check(context.Background(), p.roots()); ReasonOf(err) != ReasonOriginMismatch {
		t.Fatalf("check: %v, want %s", err, ReasonOriginMismatch)
	}
}
