package pki

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestTrustHelpers(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	ca, err := NewCA(td, "EE", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	roots, err := ParseDERs([][]byte{ca.Cert.Raw})
	if err != nil || len(roots) != 1 || !roots[0].Equal(ca.Cert) {
		t.Fatalf("ParseDERs: %v", err)
	}
	if _, err := ParseDERs([][]byte{[]byte("junk")}); err == nil {
		t.Fatal("junk parsed")
	}
	// A root without a URI SAN (not a sild root) comes first: skipped, no panic.
	key, _ := NewKey()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "plain"}, NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	plain, _ := x509.ParseCertificate(der)
	if got, err := TrustDomainOf([]*x509.Certificate{plain, ca.Cert}); err != nil || got != td {
		t.Fatalf("TrustDomainOf: %v %v", got, err)
	}
	if _, err := TrustDomainOf([]*x509.Certificate{plain}); err == nil {
		t.Fatal("a bundle without a trust domain accepted")
	}
	auth := AuthorizeRegistry(td)
	for id, ok := range map[string]bool{
		"spiffe://ee.sild.test/registry/r1":    true,
		"spiffe://ee.sild.test/node/GOV/1/ss1": false,
		"spiffe://fi.sild.test/registry/r1":    false,
	} {
		if err := auth(spiffeid.RequireFromString(id), nil); (err == nil) != ok {
			t.Errorf("%s: %v", id, err)
		}
	}
}
