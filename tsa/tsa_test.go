package tsa

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sildmesh/sild/pki"
)

type testTSA struct {
	ca   *pki.CA
	auth *Authority
	cfg  Config
}

func newTestTSA(t testing.TB) *testTSA {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	now := time.Now()
	ca, err := pki.NewCA(td, "EE sild root", 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue(pki.KindTSA, key.Public(), spiffeid.RequireFromPath(td, "/registry/tsa"), time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Signer, cfg.Cert = key, cert
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &testTSA{ca: ca, auth: a, cfg: cfg}
}

func digestOf(s string) []byte {
	d := sha256.Sum256([]byte(s))
	return d[:]
}

func TestRequestVerify(t *testing.T) {
	x := newTestTSA(t)
	srv := httptest.NewServer(x.auth)
	defer srv.Close()
	ctx := context.Background()
	d := digestOf("checkpoint 1")
	before := time.Now().Add(-time.Second)
	tok1, err := Request(ctx, srv.Client(), srv.URL, d)
	if err != nil {
		t.Fatal(err)
	}
	tok2, err := Request(ctx, srv.Client(), srv.URL, d)
	if err != nil {
		t.Fatal(err)
	}
	roots := []*x509.Certificate{x.ca.Cert}
	v1, err := VerifyToken(tok1, d, roots)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := VerifyToken(tok2, d, roots)
	if err != nil {
		t.Fatal(err)
	}
	if v1.GenTime.Before(before) || v1.GenTime.After(time.Now().Add(time.Second)) {
		t.Fatalf("genTime %v not around now", v1.GenTime)
	}
	if v2.Serial.Cmp(v1.Serial) <= 0 {
		t.Fatalf("serials not increasing: %v then %v", v1.Serial, v2.Serial)
	}
	if !v1.Policy.Equal(DefaultPolicy) {
		t.Fatalf("policy %v", v1.Policy)
	}
	// In-process stamping gives a token that verifies the same way.
	tok3, err := x.auth.Stamp(d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(tok3, d, roots); err != nil {
		t.Fatal(err)
	}
}

func TestSerialsUniqueConcurrent(t *testing.T) {
	x := newTestTSA(t)
	const n = 64
	serials := make(chan *big.Int, n)
	for i := 0; i < n; i++ {
		go func() {
			tok, err := x.auth.Stamp(digestOf("x"))
			if err != nil {
				t.Error(err)
				serials <- nil
				return
			}
			v, err := VerifyToken(tok, digestOf("x"), []*x509.Certificate{x.ca.Cert})
			if err != nil {
				t.Error(err)
				serials <- nil
				return
			}
			serials <- v.Serial
		}()
	}
	seen := map[string]bool{}
	for i := 0; i < n; i++ {
		s := <-serials
		if s == nil {
			continue
		}
		if seen[s.String()] {
			t.Fatalf("serial %v issued twice", s)
		}
		seen[s.String()] = true
	}
}

func TestVerifyRefuses(t *testing.T) {
	x := newTestTSA(t)
	d := digestOf("data")
	tok, err := x.auth.Stamp(d)
	if err != nil {
		t.Fatal(err)
	}
	roots := []*x509.Certificate{x.ca.Cert}
	other := newTestTSA(t)
	if _, err := Verify(tok, digestOf("other"), roots); !errors.Is(err, ErrImprint) {
		t.Fatalf("other digest: %v", err)
	}
	if _, err := Verify(tok, d, []*x509.Certificate{other.ca.Cert}); !errors.Is(err, ErrCertificate) {
		t.Fatalf("other roots: %v", err)
	}
	// A token signed by a key whose certificate is not a TSA certificate.
	key, _ := pki.NewKey()
	sc, err := x.ca.Issue(pki.KindSigning, key.Public(), spiffeid.RequireFromPath(x.ca.TrustDomain, "/node/x"), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	bad := &Authority{cfg: x.cfg, last: big.NewInt(0)}
	bad.cfg.Signer, bad.cfg.Cert = key, sc
	bad.certs = sc.Raw
	sum := sha256.Sum256(sc.Raw)
	bad.essID = mustMarshal(signingCertificateV2{Certs: []essCertIDv2{{CertHash: sum[:]}}})
	bad.logger = x.auth.logger
	btok, err := bad.Stamp(d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(btok, d, roots); !errors.Is(err, ErrCertificate) {
		t.Fatalf("signing cert as TSA: %v", err)
	}
	// Every single-byte change is refused.
	for i := range tok {
		mod := bytes.Clone(tok)
		mod[i] ^= 0x01
		if _, err := Verify(mod, d, roots); err == nil {
			t.Fatalf("token with byte %d changed verifies", i)
		}
	}
}

func TestRejections(t *testing.T) {
	x := newTestTSA(t)
	req := func(mod func(*timeStampReq)) []byte {
		q := timeStampReq{Version: 1, MessageImprint: messageImprint{HashAlgorithm: pkix.AlgorithmIdentifier{Algorithm: oidSHA256}, HashedMessage: digestOf("a")}, Nonce: big.NewInt(7), CertReq: true}
		mod(&q)
		return mustMarshal(q)
	}
	tests := []struct {
		name string
		req  []byte
		fail int // -1: granted
	}{
		{"ok", req(func(*timeStampReq) {}), -1},
		{"ok with our policy", req(func(q *timeStampReq) { q.ReqPolicy = DefaultPolicy }), -1},
		{"garbage", []byte("hello"), failBadDataFormat},
		{"trailing data", append(req(func(*timeStampReq) {}), 0), failBadDataFormat},
		{"sha1", req(func(q *timeStampReq) {
			q.MessageImprint.HashAlgorithm.Algorithm = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
			q.MessageImprint.HashedMessage = make([]byte, 20)
		}), failBadAlg},
		{"short imprint", req(func(q *timeStampReq) { q.MessageImprint.HashedMessage = []byte{1, 2} }), failBadDataFormat},
		{"version 2", req(func(q *timeStampReq) { q.Version = 2 }), failBadRequest},
		{"other policy", req(func(q *timeStampReq) { q.ReqPolicy = asn1.ObjectIdentifier{1, 2, 3} }), failUnacceptedPolicy},
		{"extension", req(func(q *timeStampReq) {
			q.Extensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 2, 3}, Value: []byte{5, 0}}}
		}), failUnacceptedExtension},
		{"negative nonce", req(func(q *timeStampReq) { q.Nonce = big.NewInt(-1) }), failBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var resp timeStampResp
			if _, err := asn1.Unmarshal(x.auth.Respond(tt.req), &resp); err != nil {
				t.Fatal(err)
			}
			if tt.fail < 0 {
				if resp.Status.Status != statusGranted || len(resp.TimeStampToken.FullBytes) == 0 {
					t.Fatalf("not granted: %+v", resp.Status)
				}
				return
			}
			if resp.Status.Status != statusRejected || len(resp.TimeStampToken.FullBytes) != 0 {
				t.Fatalf("not rejected: %+v", resp.Status)
			}
			if resp.Status.FailInfo.At(tt.fail) != 1 {
				t.Fatalf("failInfo %x, want bit %d", resp.Status.FailInfo.Bytes, tt.fail)
			}
			if _, err := ParseReply(x.auth.Respond(tt.req)); !errors.Is(err, ErrRejected) {
				t.Fatalf("ParseReply: %v", err)
			}
		})
	}
}

func TestNonceEchoedAndCertReq(t *testing.T) {
	x := newTestTSA(t)
	d := digestOf("n")
	q := timeStampReq{Version: 1, MessageImprint: messageImprint{HashAlgorithm: pkix.AlgorithmIdentifier{Algorithm: oidSHA256}, HashedMessage: d}, Nonce: big.NewInt(123456789)}
	tok, err := ParseReply(x.auth.Respond(mustMarshal(q)))
	if err != nil {
		t.Fatal(err)
	}
	pt, err := parseToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	if pt.info.Nonce.Cmp(q.Nonce) != 0 {
		t.Fatalf("nonce %v", pt.info.Nonce)
	}
	if pt.cert != nil {
		t.Fatal("certificate included without certReq")
	}
	if _, err := Verify(tok, d, []*x509.Certificate{x.ca.Cert}); !errors.Is(err, ErrCertificate) {
		t.Fatalf("verify without certificate: %v", err)
	}
}

func TestHTTP(t *testing.T) {
	x := newTestTSA(t)
	srv := httptest.NewServer(x.auth)
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
	resp, err = srv.Client().Post(srv.URL, "application/octet-stream", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Fatalf("wrong content type: %d", resp.StatusCode)
	}
	resp, err = srv.Client().Post(srv.URL, ContentTypeQuery, bytes.NewReader(make([]byte, maxRequestBytes+10)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != ContentTypeReply {
		t.Fatalf("oversized: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if _, err := Request(context.Background(), srv.Client(), srv.URL, []byte{1}); err == nil {
		t.Fatal("short digest accepted")
	}
}

func TestNewRefuses(t *testing.T) {
	x := newTestTSA(t)
	other, _ := pki.NewKey()
	sc, _ := x.ca.Issue(pki.KindSigning, other.Public(), spiffeid.RequireFromPath(x.ca.TrustDomain, "/n"), time.Hour, time.Now())
	for name, mod := range map[string]func(*Config){
		"no signer":    func(c *Config) { c.Signer = nil },
		"no cert":      func(c *Config) { c.Cert = nil },
		"key mismatch": func(c *Config) { c.Signer = other },
		"not tsa":      func(c *Config) { c.Signer, c.Cert = other, sc },
	} {
		cfg := x.cfg
		mod(&cfg)
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestOpenSSL checks tokens and replies with OpenSSL, the reference verifier.
func TestOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not on PATH")
	}
	x := newTestTSA(t)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pki.EncodeCerts(x.ca.Cert), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "openssl", args...).CombinedOutput()
		return string(out), err
	}
	d := digestOf("openssl")
	tok, err := x.auth.Stamp(d)
	if err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(dir, "token.der")
	if err := os.WriteFile(tokFile, tok, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := run("ts", "-verify", "-digest", hex.EncodeToString(d), "-in", tokFile, "-token_in", "-CAfile", caFile)
	if err != nil || !strings.Contains(out, "Verification: OK") {
		t.Fatalf("openssl ts -verify: %v\n%s", err, out)
	}
	out, err = run("ts", "-verify", "-digest", hex.EncodeToString(digestOf("other")), "-in", tokFile, "-token_in", "-CAfile", caFile)
	if err == nil || strings.Contains(out, "Verification: OK") {
		t.Fatalf("openssl verified a token for another digest:\n%s", out)
	}
	out, err = run("ts", "-reply", "-in", tokFile, "-token_in", "-text")
	if err != nil || !strings.Contains(out, "Policy OID: "+DefaultPolicy.String()) || !strings.Contains(out, "Accuracy: 0x01 seconds") {
		t.Fatalf("openssl ts -reply -text: %v\n%s", err, out)
	}

	// A query made by OpenSSL, answered over HTTP, verified against the query.
	qFile := filepath.Join(dir, "q.tsq")
	dataFile := filepath.Join(dir, "data")
	if err := os.WriteFile(dataFile, []byte("some data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := run("ts", "-query", "-data", dataFile, "-sha256", "-cert", "-out", qFile); err != nil {
		t.Fatalf("openssl ts -query: %v\n%s", err, out)
	}
	q, err := os.ReadFile(qFile)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(x.auth)
	defer srv.Close()
	resp, err := srv.Client().Post(srv.URL, ContentTypeQuery, bytes.NewReader(q))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	resp.Body.Close()
	rFile := filepath.Join(dir, "r.tsr")
	if err := os.WriteFile(rFile, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = run("ts", "-reply", "-in", rFile, "-text")
	if err != nil || !strings.Contains(out, "Status: Granted.") || !strings.Contains(out, "Nonce: 0x") {
		t.Fatalf("openssl ts -reply: %v\n%s", err, out)
	}
	out, err = run("ts", "-verify", "-queryfile", qFile, "-in", rFile, "-CAfile", caFile)
	if err != nil || !strings.Contains(out, "Verification: OK") {
		t.Fatalf("openssl ts -verify -queryfile: %v\n%s", err, out)
	}
	out, err = run("ts", "-verify", "-data", dataFile, "-in", rFile, "-CAfile", caFile)
	if err != nil || !strings.Contains(out, "Verification: OK") {
		t.Fatalf("openssl ts -verify -data: %v\n%s", err, out)
	}
}
