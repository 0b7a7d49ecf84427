package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/pki"
)

// hostilePeer is a bundle endpoint for fi.sild.test whose TLS certificate
// is a genuine SVID of its root (so pinning and bundle authentication
// succeed) but whose answers are chosen by the test.
type hostilePeer struct {
	td    spiffeid.TrustDomain
	ca    *pki.CA
	srv   *httptest.Server
	serve http.HandlerFunc
}

func newHostilePeer(t *testing.T) *hostilePeer {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("fi.sild.test")
	ca, err := pki.NewCA(td, "FI root", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue(pki.KindSVID, key.Public(), spiffeid.RequireFromString("spiffe://fi.sild.test/registry/r1"), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	p := &hostilePeer{td: td, ca: ca}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { p.serve(w, r) }))
	p.srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}}}
	p.srv.StartTLS()
	t.Cleanup(p.srv.Close)
	return p
}

// bundle is a well-formed bundle of roots with a refresh hint.
func (p *hostilePeer) bundle(t *testing.T, roots ...*x509.Certificate) []byte {
	t.Helper()
	b := spiffebundle.FromX509Authorities(p.td, roots)
	b.SetRefreshHint(5 * time.Second)
	data, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func (p *hostilePeer) link(held bool) *registryv1.FederationLink {
	l := &registryv1.FederationLink{
		Instance: "FI", TrustDomain: p.td.Name(), BundleEndpointUrl: p.srv.URL + "/",
		EndpointSpiffeId: "spiffe://fi.sild.test/registry/r1", RootFingerprint: pki.Fingerprint(p.ca.Cert),
	}
	if held {
		l.PeerBundle = [][]byte{p.ca.Cert.Raw}
	}
	return l
}

// TestPeerBundleEndpointHostile: whatever a peer's bundle endpoint serves,
// on the first (pinned) fetch and on a refresh authenticated by the bundle
// held, the fetch ends promptly with an error that names the problem, and
// a good bundle passes with its refresh hint.
func TestPeerBundleEndpointHostile(t *testing.T) {
	p := newHostilePeer(t)
	other, err := pki.NewCA(p.td, "another FI root", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	many := make([]*x509.Certificate, maxPeerRoots+1)
	for i := range many {
		ca, err := pki.NewCA(p.td, "FI root", time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		many[i] = ca.Cert
	}
	good, tooMany, noRoots := p.bundle(t, p.ca.Cert, other.Cert), p.bundle(t, many...), p.bundle(t)
	cases := []struct {
		name  string
		serve http.HandlerFunc
		want  string // in the error; "" for success
	}{
		{"good", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(good) }, ""},
		{"endless body", func(w http.ResponseWriter, r *http.Request) {
			chunk := []byte(`{"keys":[` + strings.Repeat(" ", 64<<10))
			for r.Context().Err() == nil {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}, "larger than"},
		{"server error with a bundle", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write(good)
		}, "status 500"},
		{"redirect elsewhere", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "https://127.0.0.1:1/", http.StatusFound)
		}, "status 302"},
		{"not JSON", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("<html>")) }, "bundle for fi.sild.test"},
		{"no roots", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(noRoots) }, "bundle for fi.sild.test"},
		{"too many roots", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(tooMany) }, "more than"},
	}
	for _, held := range []bool{false, true} {
		for _, c := range cases {
			name := c.name + map[bool]string{false: " (first fetch)", true: " (refresh)"}[held]
			t.Run(name, func(t *testing.T) {
				p.serve = c.serve
				ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
				defer cancel()
				start := time.Now()
				b, err := (&Server{}).fetchPeerBundle(ctx, p.link(held))
				if took := time.Since(start); took > 5*time.Second {
					t.Errorf("fetch took %s", took)
				}
				if c.want == "" {
					if err != nil || len(b.roots) != 2 || b.hint != 5*time.Second {
						t.Fatalf("good bundle: %d roots, hint %s, %v", len(b.roots), b.hint, err)
					}
					return
				}
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("error %v, want one naming %q", err, c.want)
				}
			})
		}
	}
}

// TestCheckDirectoryDropsForeignNodeIDs: a peer's directory entry for one of
// its nodes must carry the SPIFFE ID that node maps to in the peer's trust
// domain; one pointing at a node of another trust domain (or another node)
// is dropped, so calls cannot be steered to it.
func TestCheckDirectoryDropsForeignNodeIDs(t *testing.T) {
	fiTD := spiffeid.RequireTrustDomainFromString("fi.sild.test")
	eeTD := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	n1, _ := ident.ParseNode("FI/GOV/0245437-2/ss1")
	n2, _ := ident.ParseNode("FI/GOV/0245437-2/ss2")
	lv, _ := ident.ParseNode("LV/GOV/1/ss1")
	id := func(td spiffeid.TrustDomain, n ident.Node) string {
		i, err := ident.NodeSPIFFEID(td, n)
		if err != nil {
			t.Fatal(err)
		}
		return i.String()
	}
	d := &registryv1.ExportDirectory{Instance: "FI", TrustDomain: "fi.sild.test", Nodes: []*registryv1.Node{
		{Id: n1.Proto(), SpiffeId: id(fiTD, n1), Address: "fi:1"},
		{Id: n2.Proto(), SpiffeId: id(eeTD, n2), Address: "ee:1"}, // an EE node's ID
		{Id: n2.Proto(), SpiffeId: id(fiTD, n1), Address: "fi:2"}, // another node's ID
		{Id: lv.Proto(), SpiffeId: id(fiTD, lv), Address: "lv:1"}, // a third ecosystem's node
		{Id: &identv1.NodeId{}, SpiffeId: id(fiTD, n1)},
	}}
	out, err := checkDirectory(d)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.GetNodes()) != 1 || out.GetNodes()[0].GetAddress() != "fi:1" {
		t.Fatalf("nodes kept: %v", out.GetNodes())
	}
}

// FuzzParsePeerBundle: whatever a bundle endpoint serves, parsing never
// panics, and what it accepts has 1 to maxPeerRoots roots.
func FuzzParsePeerBundle(f *testing.F) {
	td := spiffeid.RequireTrustDomainFromString("fi.sild.test")
	ca, err := pki.NewCA(td, "FI root", time.Hour, time.Now())
	if err != nil {
		f.Fatal(err)
	}
	b := spiffebundle.FromX509Authorities(td, []*x509.Certificate{ca.Cert})
	b.SetRefreshHint(time.Minute)
	seed, _ := b.Marshal()
	f.Add(seed)
	f.Add([]byte(`{"keys":[]}`))
	f.Add([]byte(`{"keys":[{"use":"x509-svid","kty":"EC","x5c":["AAAA"]}],"spiffe_refresh_hint":-1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		pb, err := parsePeerBundle(td, data)
		if err == nil && (len(pb.roots) == 0 || len(pb.roots) > maxPeerRoots) {
			t.Fatalf("accepted %d roots", len(pb.roots))
		}
	})
}
