package registry_test

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry/gconf"
	"github.com/sildmesh/sild/registry/registrytest"
)

func parseRoots(t *testing.T, ders [][]byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// TestRootRotationReachesNodesAndPeers rotates EE's root CA in three phases
// while EE is federated with FI: the new root reaches FI before it issues
// anything, certificates issued after activation chain to it, the link
// stays active, and finishing drops the old root everywhere.
func TestRootRotationReachesNodesAndPeers(t *testing.T) {
	ee := ecosystem(t, "EE", "ee.sild.test")
	fi := ecosystem(t, "FI", "fi.sild.test")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	eeAdm, fiAdm := ee.AdminClient(ee.Servers[0]), fi.AdminClient(fi.Servers[0])
	if _, err := eeAdm.AddFederationLink(ee.Ctx(ctx), linkTo(fi, "FI", "fi.sild.test")); err != nil {
		t.Fatal(err)
	}
	if _, err := fiAdm.AddFederationLink(fi.Ctx(ctx), linkTo(ee, "EE", "ee.sild.test")); err != nil {
		t.Fatal(err)
	}
	waitLink(t, ee, ctx, "FI", registryv1.LinkState_LINK_STATE_ACTIVE)
	waitLink(t, fi, ctx, "EE", registryv1.LinkState_LINK_STATE_ACTIVE)
	node := joinTestNode(t, ee, ctx)
	oldRoot := ee.Roots[0]

	// Prepare: two roots published; FI learns the new one.
	prep, err := eeAdm.RotateCA(ee.Ctx(ctx), &registryv1.RotateCARequest{Phase: registryv1.CARotationPhase_CA_ROTATION_PHASE_PREPARE})
	if err != nil {
		t.Fatal(err)
	}
	if len(prep.GetRoots()) != 2 {
		t.Fatalf("roots after prepare: %d", len(prep.GetRoots()))
	}
	both := parseRoots(t, prep.GetRoots())
	newRoot := both[1]
	registrytest.WaitFor(t, 20*time.Second, "FI holds both EE roots", func() bool {
		return len(linkState(t, fi, ctx, "EE").GetPeerBundle()) == 2
	})
	ee.Roots = both // operators refresh their bundle file after prepare

	// Activate: new certificates chain to the new root.
	if _, err := eeAdm.RotateCA(ee.Ctx(ctx), &registryv1.RotateCARequest{Phase: registryv1.CARotationPhase_CA_ROTATION_PHASE_ACTIVATE}); err != nil {
		t.Fatal(err)
	}
	nodes := registryv1.NewNodeServiceClient(nodeConn(t, ee, ee.Servers[0], node.key, node.chain)) // old-root SVID, still trusted
	keys := newNodeKeys(t)
	rr, err := nodes.Renew(ctx, &registryv1.RenewRequest{SvidCsr: keys.svidCSR, SigningCsr: keys.signCSR})
	if err != nil {
		t.Fatalf("renew with an SVID of the old root: %v", err)
	}
	svid, _ := x509.ParseCertificate(rr.GetCertificates().GetSvidChain()[0])
	if _, err := pki.Verify(svid, []*x509.Certificate{newRoot}, pki.KindSVID, time.Now()); err != nil {
		t.Fatalf("renewed SVID does not chain to the new root: %v", err)
	}
	if len(rr.GetCertificates().GetTrustBundle()) != 2 {
		t.Fatalf("renewal trust bundle: %d roots", len(rr.GetCertificates().GetTrustBundle()))
	}
	// The registry server re-issues its own SVID under the new root.
	registrytest.WaitFor(t, 20*time.Second, "registry SVID under the new root", func() bool {
		return dialOnly(ee.Servers[0].Srv.APIAddr(), newRoot) == nil
	})
	// The configuration is signed under the new root: a node that only
	// knew the old root learns the new one from the prepared configuration.
	cfg, err := nodes.GetConfig(ctx, &registryv1.GetConfigRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gconf.Verify(cfg.GetConfig(), both, time.Now()); err != nil {
		t.Fatalf("config with both roots: %v", err)
	}
	if _, err := gconf.Verify(cfg.GetConfig(), []*x509.Certificate{oldRoot}, time.Now()); err == nil {
		t.Fatal("config after activation verified with the old root alone")
	}
	// The federation link keeps working across the activation.
	time.Sleep(time.Second) // several refreshes of FI's link
	if l := linkState(t, fi, ctx, "EE"); l.GetState() != registryv1.LinkState_LINK_STATE_ACTIVE {
		t.Fatalf("FI's link after activation: %v %s", l.GetState(), l.GetStatus())
	}

	// Finish: the old root is gone, here and at FI.
	fin, err := eeAdm.RotateCA(ee.Ctx(ctx), &registryv1.RotateCARequest{Phase: registryv1.CARotationPhase_CA_ROTATION_PHASE_FINISH})
	if err != nil {
		t.Fatal(err)
	}
	if len(fin.GetRoots()) != 1 || !parseRoots(t, fin.GetRoots())[0].Equal(newRoot) {
		t.Fatal("finish did not leave the new root alone")
	}
	registrytest.WaitFor(t, 20*time.Second, "FI drops the old root", func() bool {
		b := linkState(t, fi, ctx, "EE").GetPeerBundle()
		return len(b) == 1 && string(b[0]) == string(newRoot.Raw)
	})
	// Phases out of order are refused.
	if _, err := eeAdm.RotateCA(ee.Ctx(ctx), &registryv1.RotateCARequest{Phase: registryv1.CARotationPhase_CA_ROTATION_PHASE_FINISH}); err == nil {
		t.Fatal("finish without a rotation accepted")
	}
}

// dialOnly connects to the registry API trusting only root.
func dialOnly(addr string, root *x509.Certificate) error {
	td := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	tc := tlsconfig.TLSClientConfig(x509bundle.FromX509Authorities(td, []*x509.Certificate{root}), tlsconfig.AuthorizeMemberOf(td))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// Without an API key the server refuses the call; any answer other than
	// Unavailable means the TLS handshake, and so the server's SVID, passed.
	_, err = registryv1.NewAdminServiceClient(conn).RaftStatus(ctx, &registryv1.RaftStatusRequest{})
	if status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded {
		return err
	}
	return nil
}
