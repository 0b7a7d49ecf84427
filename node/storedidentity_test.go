package node_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/node"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry/registrytest"
)

// runToEnd runs a node that is expected to refuse to start and returns
// Run's error (nil if it ran until the deadline).
func runToEnd(t *testing.T, cfg node.Config) error {
	t.Helper()
	n, err := node.New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return n.Run(ctx)
}

// expireIdentity replaces the certificates in a node's data directory by
// ones the ecosystem's CA issued for the same keys two days ago, valid for a
// day: the node as it is after being stopped past its SVID's expiry.
func expireIdentity(t *testing.T, ctx context.Context, c *registrytest.Cluster, dir string, n ident.Node) {
	t.Helper()
	resp, err := c.AdminClient(c.Live()[0]).Backup(c.Ctx(ctx), &registryv1.BackupRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var st registryv1.State
	if err := proto.Unmarshal(resp.GetState(), &st); err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(st.GetCa().GetCertificate())
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := x509.ParsePKCS8PrivateKey(st.GetCa().GetKey())
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString(st.GetTrustDomain())
	ca := &pki.CA{Cert: caCert, Key: caKey.(crypto.Signer), TrustDomain: td}
	id, err := ident.NodeSPIFFEID(td, n)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		key, cert string
		kind      pki.Kind
	}{{"svid.key", "svid.crt", pki.KindSVID}, {"signing.key", "signing.crt", pki.KindSigning}} {
		b, err := os.ReadFile(filepath.Join(dir, f.key))
		if err != nil {
			t.Fatal(err)
		}
		key, err := pki.DecodeKey(b)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := ca.Issue(f.kind, key.Public(), id, 24*time.Hour, time.Now().Add(-48*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.cert), pki.EncodeCerts(cert), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func svidNotAfter(t *testing.T, dir string) time.Time {
	t.Helper()
	certs, err := pki.ReadCerts(filepath.Join(dir, "svid.crt"))
	if err != nil {
		t.Fatal(err)
	}
	return certs[0].NotAfter
}

// TestStoredIdentity: at start a node checks the identity in its data
// directory: another node's is refused; an expired one is replaced with a
// join token, and without one the node says how to get one.
func TestStoredIdentity(t *testing.T) {
	c := registrytest.Start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	self, _ := ident.ParseNode("EE/GOV/70000310/ss1")
	dir := t.TempDir()
	spent := c.NodeToken(ctx, self)
	cfg := nodeConfig(c, self.String(), dir, spent)
	r := startNode(t, cfg)
	registrytest.WaitFor(t, 30*time.Second, "node ready", func() bool { code, _ := readyz(r.n); return code == http.StatusOK })
	r.stop(t)
	cfg.JoinToken = ""
	svidFile := filepath.Join(dir, "svid.crt")
	unchanged := func(t *testing.T, before []byte) {
		t.Helper()
		if now, _ := os.ReadFile(svidFile); !bytes.Equal(now, before) {
			t.Error("the refused start changed the identity in data_dir")
		}
	}

	t.Run("another node's", func(t *testing.T) {
		before, _ := os.ReadFile(svidFile)
		other := cfg
		other.Node = "EE/GOV/70000310/ss9"
		err := runToEnd(t, other)
		if err == nil {
			t.Fatal("a node started with another node's identity")
		}
		t.Log(err)
		for _, want := range []string{dir, "identity of node EE/GOV/70000310/ss1", "not of node EE/GOV/70000310/ss9", "--data"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
		unchanged(t, before)
	})

	expireIdentity(t, ctx, c, dir, self)
	expired := svidNotAfter(t, dir).UTC().Format(time.RFC3339)

	t.Run("expired, no token", func(t *testing.T) {
		before, _ := os.ReadFile(svidFile)
		err := runToEnd(t, cfg)
		if err == nil {
			t.Fatal("a node with an expired SVID started")
		}
		t.Log(err)
		for _, want := range []string{"SVID", "expired at " + expired, "sild ctl node token " + self.String(), "--token", "SILD_NODE_TOKEN"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
		unchanged(t, before)
	})

	t.Run("expired, spent token", func(t *testing.T) {
		withSpent := cfg
		withSpent.JoinToken = spent // e.g. left in the service's environment since the first start
		err := runToEnd(t, withSpent)
		if err == nil {
			t.Fatal("a node with an expired SVID and a spent token started")
		}
		t.Log(err)
		for _, want := range []string{"expired at " + expired, "joining again", "sild ctl node token " + self.String(), "join token is unknown, used"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
	})

	t.Run("expired, new token", func(t *testing.T) {
		tok, err := c.AdminClient(c.Live()[0]).CreateJoinToken(c.Ctx(ctx), &registryv1.CreateJoinTokenRequest{Node: self.Proto()})
		if err != nil {
			t.Fatal(err)
		}
		rejoin := cfg
		rejoin.JoinToken = tok.GetToken()
		rejoin.TrustBundle = "" // the roots kept in data_dir serve
		r := startNode(t, rejoin)
		registrytest.WaitFor(t, 30*time.Second, "node ready after joining again", func() bool { code, _ := readyz(r.n); return code == http.StatusOK })
		if exp := svidNotAfter(t, dir); !exp.After(time.Now()) {
			t.Fatalf("SVID in data_dir still expired (%v)", exp)
		}
		r.stop(t)
		// The new identity serves the next start without a token.
		r = startNode(t, cfg)
		registrytest.WaitFor(t, 30*time.Second, "node ready on the next start", func() bool { code, _ := readyz(r.n); return code == http.StatusOK })
	})
}
