package ledger

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sildmesh/sild/pki"
)

// TestSetSigner: after the node's signing key is renewed, checkpoints are
// signed with the new key, and the whole log still checks.
func TestSetSigner(t *testing.T) {
	p := newTestPKI(t)
	l := startLedger(t, testConfig(p, t.TempDir()))
	ctx := context.Background()
	if _, err := l.Append(ctx, testRecord(1, "EE/GOV/1/a", "u"), nil).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	waitStamped(t, l.Ledger)
	key, _ := pki.NewKey()
	cert, err := p.ca.Issue(pki.KindSigning, key.Public(), spiffeid.RequireFromString("spiffe://ee.sild.test/node/GOV/70000310/ss1"), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := l.SetSigner(key, []*x509.Certificate{p.chain[0]}); err == nil {
		t.Fatal("a chain that does not certify the key was accepted")
	}
	if err := l.SetSigner(key, []*x509.Certificate{cert}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(ctx, testRecord(2, "EE/GOV/1/a", "u"), nil).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	waitStamped(t, l.Ledger)
	cp, err := l.Checkpoint(l.Size())
	if err != nil {
		t.Fatal(err)
	}
	if string(cp.GetSignerChain()[0]) != string(cert.Raw) {
		t.Fatal("checkpoint not signed with the new key")
	}
	rep, err := l.Check(ctx, p.roots())
	if err != nil {
		t.Fatalf("check after the key change: %v (%v)", err, rep)
	}
}

// TestShutdownLeavesAStampedCheckpoint: records appended just before a
// graceful stop can be exported at once from the stopped ledger.
func TestShutdownLeavesAStampedCheckpoint(t *testing.T) {
	p := newTestPKI(t)
	dir := t.TempDir()
	cfg := testConfig(p, dir)
	cfg.CheckpointInterval = time.Hour // no periodic checkpoint in this test
	l := startLedger(t, cfg)
	ctx := context.Background()
	rec := testRecord(7, "EE/GOV/1/a", "u")
	if _, err := l.Append(ctx, rec, nil).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	l.stop(t)
	r, err := OpenReader(dir, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := r.Export(rec.GetMessageId())
	if err != nil {
		t.Fatalf("export after shutdown: %v", err)
	}
	data, err := marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyBundle(data, p.roots()); err != nil {
		t.Fatalf("verify: %v", err)
	}
}
