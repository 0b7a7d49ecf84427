package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func mintSVID(t *testing.T, ca *CA, id string) *x509svid.SVID {
	t.Helper()
	key, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue(KindSVID, key.Public(), spiffeid.RequireFromString(id), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	svid, err := NewSVID(key, cert)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

func TestNewSVID(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	ca, err := NewCA(td, "EE root", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	svid := mintSVID(t, ca, "spiffe://ee.sild.test/registry/r1")
	if svid.ID.String() != "spiffe://ee.sild.test/registry/r1" {
		t.Fatalf("ID = %s", svid.ID)
	}
	other, _ := NewKey()
	if _, err := NewSVID(other, svid.Certificates[0]); err == nil {
		t.Fatal("NewSVID accepted a key that does not match the leaf")
	}
	if _, err := NewSVID(other); err == nil {
		t.Fatal("NewSVID accepted no certificate")
	}
	if _, err := NewSVID(ca.Key, ca.Cert); err == nil {
		t.Fatal("NewSVID accepted a CA certificate as leaf")
	}
	sign, err := ca.Issue(KindSigning, other.Public(), svid.ID, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if s, err := NewSVID(other, sign); err != nil || s.ID != svid.ID {
		// A signing certificate is a valid SVID shape too (digitalSignature).
		t.Fatalf("NewSVID(signing cert) = %v, %v", s, err)
	}
}

func TestSourcesSetAndGet(t *testing.T) {
	var empty SVIDSource
	if _, err := empty.GetX509SVID(); !errors.Is(err, ErrNoSVID) {
		t.Fatalf("zero SVIDSource err = %v, want ErrNoSVID", err)
	}
	ee := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	fi := spiffeid.RequireTrustDomainFromString("fi.sild.test")
	eeCA, _ := NewCA(ee, "EE", time.Hour, time.Now())
	fiCA, _ := NewCA(fi, "FI", time.Hour, time.Now())

	a, b := mintSVID(t, eeCA, "spiffe://ee.sild.test/registry/a"), mintSVID(t, eeCA, "spiffe://ee.sild.test/registry/b")
	src := NewSVIDSource(a)
	if got, _ := src.GetX509SVID(); got != a {
		t.Fatal("source does not return its SVID")
	}
	src.Set(b)
	if got, _ := src.GetX509SVID(); got != b {
		t.Fatal("Set did not replace the SVID")
	}

	eeB := x509bundle.FromX509Authorities(ee, []*x509.Certificate{eeCA.Cert})
	bs := NewBundleSource(eeB, nil)
	if _, err := bs.GetX509BundleForTrustDomain(fi); err == nil {
		t.Fatal("bundle for an unknown trust domain")
	}
	// The source holds a copy: the caller's later change does not leak in.
	eeB.AddX509Authority(fiCA.Cert)
	got, err := bs.GetX509BundleForTrustDomain(ee)
	if err != nil || len(got.X509Authorities()) != 1 {
		t.Fatalf("ee bundle = %v, %v; want the one authority given", got, err)
	}
	bs.Set(x509bundle.FromX509Authorities(fi, []*x509.Certificate{fiCA.Cert}), x509bundle.FromX509Authorities(ee, []*x509.Certificate{eeCA.Cert}))
	if l := bs.Bundles(); len(l) != 2 || l[0].TrustDomain() != ee || l[1].TrustDomain() != fi {
		t.Fatalf("Bundles = %v", l)
	}
	bs.Set()
	if _, err := bs.GetX509BundleForTrustDomain(ee); err == nil {
		t.Fatal("bundle still there after Set()")
	}

	// Concurrent use (run with -race).
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 100; j++ {
				src.Set(a)
				_, _ = src.GetX509SVID()
				bs.Set(x509bundle.FromX509Authorities(ee, []*x509.Certificate{eeCA.Cert}))
				_, _ = bs.GetX509BundleForTrustDomain(ee)
			}
		}()
	}
	wg.Wait()
}

// TestRotationInTLS checks that go-spiffe's tlsconfig picks up Set on the
// next handshake: the server's new SVID is presented, and a trust domain taken
// out of the bundle is refused.
func TestRotationInTLS(t *testing.T) {
	ee := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	ca, err := NewCA(ee, "EE", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	bundle := x509bundle.FromX509Authorities(ee, []*x509.Certificate{ca.Cert})
	serverSVIDs := NewSVIDSource(mintSVID(t, ca, "spiffe://ee.sild.test/registry/s"))
	serverBundles := NewBundleSource(bundle)
	clientSVIDs := NewSVIDSource(mintSVID(t, ca, "spiffe://ee.sild.test/registry/c"))
	clientBundles := NewBundleSource(bundle)

	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(serverSVIDs, serverBundles, tlsconfig.AuthorizeMemberOf(ee)))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait() // after ln.Close below, which ends the accept loop
	defer ln.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	clientCfg := tlsconfig.MTLSClientConfig(clientSVIDs, clientBundles, tlsconfig.AuthorizeMemberOf(ee))
	roundTrip := func() (*x509.Certificate, error) {
		d := &net.Dialer{Timeout: 30 * time.Second}
		c, err := tls.DialWithDialer(d, "tcp", ln.Addr().String(), clientCfg)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write([]byte("x")); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			return nil, err
		}
		return c.ConnectionState().PeerCertificates[0], nil
	}

	first, err := roundTrip()
	if err != nil {
		t.Fatal(err)
	}
	renewed := mintSVID(t, ca, "spiffe://ee.sild.test/registry/s")
	serverSVIDs.Set(renewed)
	second, err := roundTrip()
	if err != nil {
		t.Fatal(err)
	}
	if second.Equal(first) || !second.Equal(renewed.Certificates[0]) {
		t.Fatal("server did not present its renewed SVID")
	}

	// The server stops trusting ee: the client's certificate is refused
	// (in TLS 1.3 the client learns it on its first read).
	serverBundles.Set()
	if _, err := roundTrip(); err == nil {
		t.Fatal("handshake succeeded after the server dropped the client's trust domain")
	}
	serverBundles.Set(bundle)
	if _, err := roundTrip(); err != nil {
		t.Fatalf("after restoring the bundle: %v", err)
	}
}
