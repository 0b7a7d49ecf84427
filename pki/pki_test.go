package pki

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestIssueAndVerify(t *testing.T) {
	now := time.Now()
	td := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	ca, err := NewCA(td, "EE root", 365*24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewCA(spiffeid.RequireTrustDomainFromString("fi.sild.test"), "FI root", time.Hour, now)
	key, _ := NewKey()
	csr, _ := NewCSR(key)
	pub, err := ParseCSR(csr)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://ee.sild.test/node/GOV/1/ss1")

	for _, k := range []Kind{KindSVID, KindSigning, KindTSA} {
		t.Run(k.String(), func(t *testing.T) {
			cert, err := ca.Issue(k, pub, id, 24*time.Hour, now)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Verify(cert, []*x509.Certificate{ca.Cert}, k, now)
			if err != nil || got != id {
				t.Fatalf("Verify = %v, %v", got, err)
			}
			if _, err := Verify(cert, []*x509.Certificate{ca.Cert}, k, now.Add(25*time.Hour)); err == nil {
				t.Fatal("expired certificate verified")
			}
			if _, err := Verify(cert, []*x509.Certificate{other.Cert}, k, now); err == nil {
				t.Fatal("certificate verified against another root")
			}
		})
	}

	svid, _ := ca.Issue(KindSVID, pub, id, time.Hour, now)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	if _, err := x509svid.ParseRaw(svid.Raw, keyDER); err != nil {
		t.Fatalf("go-spiffe rejects the SVID: %v", err)
	}
	signing, _ := ca.Issue(KindSigning, pub, id, time.Hour, now)
	if _, err := Verify(signing, []*x509.Certificate{ca.Cert}, KindTSA, now); err == nil {
		t.Fatal("signing certificate accepted as TSA certificate")
	}
	tsa, _ := ca.Issue(KindTSA, pub, id, time.Hour, now)
	for name, c := range map[string]*x509.Certificate{"svid": svid, "tsa": tsa} {
		if _, err := Verify(c, []*x509.Certificate{ca.Cert}, KindSigning, now); err == nil {
			t.Fatalf("%s certificate accepted as a signing certificate", name)
		}
	}
	critical := false
	for _, e := range tsa.Extensions {
		if e.Id.String() == "2.5.29.37" {
			critical = e.Critical
		}
	}
	if !critical {
		t.Fatal("TSA certificate's extended key usage is not critical")
	}
	if _, err := ca.Issue(KindSVID, pub, spiffeid.RequireFromString("spiffe://fi.sild.test/node/a/b/c"), time.Hour, now); err == nil {
		t.Fatal("issued for a foreign trust domain")
	}
	capped, _ := ca.Issue(KindSVID, pub, id, 10*365*24*time.Hour, now)
	if capped.NotAfter.After(ca.Cert.NotAfter) {
		t.Fatal("certificate outlives its CA")
	}
}

func TestParseCSRRejectsGarbage(t *testing.T) {
	key, _ := NewKey()
	csr, _ := NewCSR(key)
	csr[len(csr)-3] ^= 0xff
	if _, err := ParseCSR(csr); err == nil {
		t.Fatal("tampered CSR accepted")
	}
	if _, err := ParseCSR([]byte("nope")); err == nil {
		t.Fatal("garbage accepted")
	}
}

func TestPEMRoundTrip(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	ca, _ := NewCA(td, "EE root", time.Hour, time.Now())
	certs, err := DecodeCerts(EncodeCerts(ca.Cert, ca.Cert))
	if err != nil || len(certs) != 2 || !certs[0].Equal(ca.Cert) {
		t.Fatalf("DecodeCerts = %v, %v", certs, err)
	}
	pemKey, _ := EncodeKey(ca.Key)
	k, err := DecodeKey(pemKey)
	if err != nil {
		t.Fatal(err)
	}
	h1, _ := KeyHash(k.Public())
	h2, _ := KeyHash(ca.Cert.PublicKey)
	if h1 != h2 || !strings.HasPrefix(h1, "sha256:") {
		t.Fatalf("key hash %s != %s", h1, h2)
	}
	if _, err := DecodeCerts([]byte("-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n")); err == nil {
		t.Fatal("key accepted as certificate")
	}
	// ReadCerts reads the same from a file, and its errors name the file.
	dir := t.TempDir()
	good, junk := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "junk.pem")
	os.WriteFile(good, EncodeCerts(ca.Cert), 0o600)
	os.WriteFile(junk, pemKey, 0o600)
	if certs, err := ReadCerts(good); err != nil || len(certs) != 1 || !certs[0].Equal(ca.Cert) {
		t.Fatalf("ReadCerts = %v, %v", certs, err)
	}
	for _, f := range []string{junk, filepath.Join(dir, "missing.pem")} {
		if _, err := ReadCerts(f); err == nil || !strings.Contains(err.Error(), f) {
			t.Errorf("ReadCerts(%s): %v", f, err)
		}
	}
}

// CertKeyHash, read off the certificate, names the same key as KeyHash for
// every kind of key pki issues certificates for.
func TestCertKeyHashIsKeyHash(t *testing.T) {
	now := time.Now()
	ca, err := NewCA(spiffeid.RequireTrustDomainFromString("ee.sild.test"), "EE root", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	p256, _ := NewKey()
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	id := spiffeid.RequireFromString("spiffe://ee.sild.test/node/GOV/1/ss1")
	for name, pub := range map[string]crypto.PublicKey{"p256": p256.Public(), "ed25519": ed.Public()} {
		cert, err := ca.Issue(KindSigning, pub, id, time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		want, err := KeyHash(pub)
		if err != nil {
			t.Fatal(err)
		}
		if got := CertKeyHash(cert); got != want {
			t.Errorf("%s: CertKeyHash %s, KeyHash %s", name, got, want)
		}
	}
	if CertKeyHash(ca.Cert) == Fingerprint(ca.Cert) {
		t.Error("the key hash is the certificate's fingerprint")
	}
}
