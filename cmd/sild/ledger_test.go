package main

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	"github.com/sildmesh/sild/ledger"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/tsa"
)

// makeLedger writes a small ledger with time-stamped checkpoints into dir
// and returns the trust bundle file and body key file.
func makeLedger(t *testing.T, dir string) (trustFile, keyFile string) {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	now := time.Now()
	ca, err := pki.NewCA(td, "EE root", 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	tkey, _ := pki.NewKey()
	tcert, _ := ca.Issue(pki.KindTSA, tkey.Public(), spiffeid.RequireFromPath(td, "/registry/tsa"), time.Hour, now)
	tcfg := tsa.DefaultConfig()
	tcfg.Signer, tcfg.Cert = tkey, tcert
	auth, err := tsa.New(tcfg)
	if err != nil {
		t.Fatal(err)
	}
	skey, _ := pki.NewKey()
	scert, _ := ca.Issue(pki.KindSigning, skey.Public(), spiffeid.RequireFromPath(td, "/node/GOV/1/ss1"), time.Hour, now)
	key := []byte("0123456789abcdef0123456789abcdef")
	cfg := ledger.DefaultConfig()
	cfg.Dir, cfg.Origin = filepath.Join(dir, "ledger"), "EE/GOV/1/ss1"
	cfg.Signer, cfg.SignerChain = skey, []*x509.Certificate{scert}
	cfg.Stamp = func(_ context.Context, d []byte) ([]byte, error) { return auth.Stamp(d) }
	cfg.CheckpointInterval = 10 * time.Millisecond
	cfg.BodyKey, cfg.DefaultBodyMode = key, ledger.BodyFull
	l, err := ledger.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	for i, id := range []string{"m-1", "m-2", "m-3"} {
		rec := &ledgerv1.Record{MessageId: id, Side: ledgerv1.Side_SIDE_PROVIDER, Client: "EE/GOV/1/a", Target: "EE/GOV/2/b",
			Service: "x.v1.S", Method: "Get", UserId: "EE3800", StartTime: timestamppb.New(now.Add(time.Duration(i) * time.Second))}
		body := &ledgerv1.Body{RequestMessages: [][]byte{[]byte("secret " + id)}}
		if _, err := l.Append(ctx, rec, body).Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		sc, err := l.Checkpoint(3)
		if err == nil && len(sc.GetTimestampToken()) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no time-stamped checkpoint")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	trustFile = filepath.Join(dir, "trust.pem")
	keyFile = filepath.Join(dir, "body.key")
	if err := os.WriteFile(trustFile, pki.EncodeCerts(ca.Cert), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return trustFile, keyFile
}

func TestLedgerCommands(t *testing.T) {
	dir := t.TempDir()
	trust, keyFile := makeLedger(t, dir)
	data := filepath.Join(dir, "ledger")
	bundle := filepath.Join(dir, "m-2.bundle")

	out, err := run(t, "ledger", "check", "--data", data, "--trust", trust, "--body-key-file", keyFile)
	if err != nil || !strings.Contains(out, "OK: 3 entries, 3 bodies") {
		t.Fatalf("check: %v\n%s", err, out)
	}
	out, err = run(t, "ledger", "export", "--data", data, "--message-id", "m-2", "-o", bundle, "--body-key-file", keyFile)
	if err != nil || !strings.Contains(out, "1 record(s)") {
		t.Fatalf("export: %v\n%s", err, out)
	}
	token := filepath.Join(dir, "token.tsr")
	out, err = run(t, "ledger", "verify", bundle, "--trust", trust, "-v", "--token-out", token)
	if err != nil || !strings.Contains(out, "OK: 1 record(s) of EE/GOV/1/ss1") || !strings.Contains(out, "message m-2") || !strings.Contains(out, "bodies checked: 1") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	if _, err := run(t, "ledger", "export", "--data", data, "--message-id", "nope", "-o", bundle+".x"); err == nil {
		t.Fatal("export of an unknown message id succeeded")
	}
	if _, err := run(t, "ledger", "verify", bundle); err == nil {
		t.Fatal("verify without --trust succeeded")
	}

	// A changed body byte: verify fails naming the reason.
	raw, _ := os.ReadFile(bundle)
	i := strings.Index(string(raw), "secret m-2")
	raw[i] ^= 1
	bad := filepath.Join(dir, "bad.bundle")
	_ = os.WriteFile(bad, raw, 0o600)
	if _, err := run(t, "ledger", "verify", bad, "--trust", trust); err == nil || !strings.Contains(err.Error(), "BODY_DIGEST_MISMATCH") {
		t.Fatalf("tampered bundle: %v", err)
	}

	// The token checks on its own with OpenSSL, as documented.
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not on PATH")
	}
	m := regexp.MustCompile(`stamp digest \(openssl ts -verify -digest\): ([0-9a-f]{64})`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no stamp digest in\n%s", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ossl, err := exec.CommandContext(ctx, "openssl", "ts", "-verify", "-digest", m[1], "-in", token, "-token_in", "-CAfile", trust).CombinedOutput()
	if err != nil || !strings.Contains(string(ossl), "Verification: OK") {
		t.Fatalf("openssl ts -verify: %v\n%s", err, ossl)
	}
}
