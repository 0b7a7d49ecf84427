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
