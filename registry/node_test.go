package registry_test

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"net/http"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry/gconf"
	"github.com/sildmesh/sild/registry/registrytest"
	"github.com/sildmesh/sild/tsa"
)

var nodeID = &identv1.NodeId{Member: memberID("70000310"), NodeCode: "ss1"}

// nodeKeys is a node's two keys and their CSRs.
type nodeKeys struct {
	svid, sign       crypto.Signer
	svidCSR, signCSR []byte
}

func newNodeKeys(t testing.TB) nodeKeys {
	t.Helper()
	var k nodeKeys
	var err error
	if k.svid, err = pki.NewKey(); err != nil {
		t.Fatal(err)
	}
	if k.sign, err = pki.NewKey(); err != nil {
		t.Fatal(err)
	}
	if k.svidCSR, err = pki.NewCSR(k.svid); err != nil {
		t.Fatal(err)
	}
	if k.signCSR, err = pki.NewCSR(k.sign); err != nil {
		t.Fatal(err)
	}
	return k
}

// nodeConn dials a registry server as a node with an SVID (or with none).
func nodeConn(t testing.TB, c *registrytest.Cluster, m *registrytest.Member, key crypto.Signer, chain [][]byte) *grpc.ClientConn {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	bundle := x509bundle.FromX509Authorities(td, c.Roots)
	var tc = tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeMemberOf(td))
	if key != nil {
		var certs []*x509.Certificate
		for _, d := range chain {
			cert, err := x509.ParseCertificate(d)
			if err != nil {
				t.Fatal(err)
			}
			certs = append(certs, cert)
		}
		svid, err := pki.NewSVID(key, certs...)
		if err != nil {
			t.Fatal(err)
		}
		tc = tlsconfig.MTLSClientConfig(pki.NewSVIDSource(svid), bundle, tlsconfig.AuthorizeMemberOf(td))
	}
	conn, err := grpc.NewClient(m.Srv.APIAddr(), grpc.WithTransportCredentials(credentials.NewTLS(tc)), gconf.DialOption) // as nodes dial
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// testNode is a joined node's SVID key and chain.
type testNode struct {
	key   crypto.Signer
	chain [][]byte
}

// joinTestNode registers and joins node ss1 of member 70000310.
func joinTestNode(t testing.TB, c *registrytest.Cluster, ctx context.Context) testNode {
	t.Helper()
	admin := c.AdminClient(c.Servers[0])
	if _, err := admin.AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: memberID("70000310")}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AddNode(c.Ctx(ctx), &registryv1.AddNodeRequest{Id: nodeID}); err != nil {
		t.Fatal(err)
	}
	tok, err := admin.CreateJoinToken(c.Ctx(ctx), &registryv1.CreateJoinTokenRequest{Node: nodeID})
	if err != nil {
		t.Fatal(err)
	}
	k := newNodeKeys(t)
	anon := registryv1.NewNodeServiceClient(nodeConn(t, c, c.Servers[0], nil, nil))
	resp, err := anon.Join(ctx, &registryv1.JoinRequest{Token: tok.GetToken(), Node: nodeID, SvidCsr: k.svidCSR, SigningCsr: k.signCSR, Address: "127.0.0.1:7443"})
	if err != nil {
		t.Fatal(err)
	}
	return testNode{key: k.svid, chain: resp.GetCertificates().GetSvidChain()}
}

func wantReason(t *testing.T, what string, err error, code codes.Code, reason string) {
	t.Helper()
	if status.Code(err) != code || rpcerr.Reason(err) != reason {
		t.Fatalf("%s: got %v (reason %q), want %s / %s", what, err, rpcerr.Reason(err), code, reason)
	}
}

func TestNodeJoinRenewWatchAndRevoke(t *testing.T) {
	c := registrytest.Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	admin := c.AdminClient(c.Followers()[0])
	if _, err := admin.AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: memberID("70000310"), Name: "RIK"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AddNode(c.Ctx(ctx), &registryv1.AddNodeRequest{Id: nodeID}); err != nil {
		t.Fatal(err)
	}
	tok, err := admin.CreateJoinToken(c.Ctx(ctx), &registryv1.CreateJoinTokenRequest{Node: nodeID})
	if err != nil {
		t.Fatal(err)
	}
	keys := newNodeKeys(t)
	anon := registryv1.NewNodeServiceClient(nodeConn(t, c, c.Followers()[1], nil, nil))
	join := func(token string, k nodeKeys) (*registryv1.JoinResponse, error) {
		return anon.Join(ctx, &registryv1.JoinRequest{Token: token, Node: nodeID, SvidCsr: k.svidCSR, SigningCsr: k.signCSR, Address: "127.0.0.1:7443"})
	}

	// Bad inputs are refused before the token is spent.
	_, err = anon.Join(ctx, &registryv1.JoinRequest{Token: tok.GetToken(), Node: nodeID, SvidCsr: []byte("x"), SigningCsr: keys.signCSR, Address: "127.0.0.1:7443"})
	wantReason(t, "bad csr", err, codes.InvalidArgument, rpcerr.ReasonInvalidArgument)
	_, err = anon.Join(ctx, &registryv1.JoinRequest{Token: tok.GetToken(), Node: nodeID, SvidCsr: keys.svidCSR, SigningCsr: keys.signCSR, Address: "nohost"})
	wantReason(t, "bad address", err, codes.InvalidArgument, rpcerr.ReasonInvalidArgument)
	_, err = join("wrong-token", keys)
	wantReason(t, "wrong token", err, codes.FailedPrecondition, "TOKEN_INVALID")

	resp, err := join(tok.GetToken(), keys)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	svid, err := x509.ParseCertificate(resp.GetCertificates().GetSvidChain()[0])
	if err != nil {
		t.Fatal(err)
	}
	id, err := pki.Verify(svid, c.Roots, pki.KindSVID, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://ee.sild.test/node/GOV/70000310/ss1"; id.String() != want {
		t.Fatalf("svid id %s, want %s", id, want)
	}
	if ttl := time.Until(svid.NotAfter); ttl < 23*time.Hour || ttl > 25*time.Hour {
		t.Fatalf("svid ttl %s, want about 24h", ttl)
	}
	// The token is one-time.
	_, err = join(tok.GetToken(), newNodeKeys(t))
	wantReason(t, "reused token", err, codes.FailedPrecondition, "TOKEN_INVALID")

	// Watch the configuration as the node, from a third server.
	conn := nodeConn(t, c, c.Leader(), keys.svid, resp.GetCertificates().GetSvidChain())
	nodes := registryv1.NewNodeServiceClient(conn)
	watch, err := nodes.WatchConfig(ctx, &registryv1.WatchConfigRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// The first configurations may predate the join (publication is
	// coalesced); the node shows up active within a second.
	var found *registryv1.Node
	for found == nil || found.GetState() != registryv1.NodeState_NODE_STATE_ACTIVE {
		next, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := gconf.Verify(next.GetConfig(), c.Roots, time.Now())
		if err != nil {
			t.Fatalf("verify config: %v", err)
		}
		for _, n := range cfg.GetNodes() {
			if n.GetId().GetNodeCode() == "ss1" {
				found = n
			}
		}
	}
	if found.GetAddress() != "127.0.0.1:7443" || found.GetSpiffeId() != "spiffe://ee.sild.test/node/GOV/70000310/ss1" {
		t.Fatalf("node in config: %v", found)
	}
	// A committed change reaches the watcher.
	sub := &identv1.SubsystemId{Member: memberID("70000310"), SubsystemCode: "business-registry"}
	if _, err := admin.AddSubsystem(c.Ctx(ctx), &registryv1.AddSubsystemRequest{Id: sub}); err != nil {
		t.Fatal(err)
	}
	reg, err := admin.RegisterSubsystem(c.Ctx(ctx), &registryv1.RegisterSubsystemRequest{Subsystem: sub, Node: nodeID})
	if err != nil {
		t.Fatal(err)
	}
	if reg.GetRequest().GetState() != registryv1.RequestState_REQUEST_STATE_APPROVED {
		t.Fatalf("registration request %v, want auto-approved", reg.GetRequest())
	}
	for {
		next, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := gconf.Verify(next.GetConfig(), c.Roots, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if hosted(cfg, "business-registry") {
			break
		}
	}

	// Renewal over mTLS gives new certificates for new keys.
	renewed := newNodeKeys(t)
	rr, err := nodes.Renew(ctx, &registryv1.RenewRequest{SvidCsr: renewed.svidCSR, SigningCsr: renewed.signCSR})
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	if _, err := x509.ParseCertificate(rr.GetCertificates().GetSvidChain()[0]); err != nil {
		t.Fatal(err)
	}
	// Without an SVID there is no renewal and no configuration.
	_, err = anon.Renew(ctx, &registryv1.RenewRequest{SvidCsr: renewed.svidCSR, SigningCsr: renewed.signCSR})
	wantReason(t, "renew without svid", err, codes.Unauthenticated, rpcerr.ReasonUnauthenticated)
	_, err = anon.GetConfig(ctx, &registryv1.GetConfigRequest{})
	wantReason(t, "config without svid", err, codes.Unauthenticated, rpcerr.ReasonUnauthenticated)

	// A removed node can no longer renew and is revoked in the configuration.
	if _, err := admin.RemoveNode(c.Ctx(ctx), &registryv1.RemoveNodeRequest{Id: nodeID}); err != nil {
		t.Fatal(err)
	}
	_, err = nodes.Renew(ctx, &registryv1.RenewRequest{SvidCsr: renewed.svidCSR, SigningCsr: renewed.signCSR})
	wantReason(t, "renew after removal", err, codes.FailedPrecondition, "NODE_REVOKED")
	got, err := admin.ListNodes(c.Ctx(ctx), &registryv1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.GetNodes()) != 1 || got.GetNodes()[0].GetState() != registryv1.NodeState_NODE_STATE_REVOKED {
		t.Fatalf("nodes after removal: %v", got.GetNodes())
	}
}

func hosted(cfg *registryv1.GlobalConfig, subsystem string) bool {
	for _, s := range cfg.GetSubsystems() {
		if s.GetId().GetSubsystemCode() == subsystem && len(s.GetNodes()) > 0 {
			return true
		}
	}
	return false
}

func TestExpiredJoinToken(t *testing.T) {
	c := registrytest.Start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := c.AdminClient(c.Servers[0])
	if _, err := admin.AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: memberID("70000310")}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AddNode(c.Ctx(ctx), &registryv1.AddNodeRequest{Id: nodeID}); err != nil {
		t.Fatal(err)
	}
	_, err := admin.CreateJoinToken(c.Ctx(ctx), &registryv1.CreateJoinTokenRequest{Node: nodeID, Ttl: durationpb.New(-time.Second)})
	wantReason(t, "negative ttl", err, codes.InvalidArgument, rpcerr.ReasonInvalidArgument)
	tok, err := admin.CreateJoinToken(c.Ctx(ctx), &registryv1.CreateJoinTokenRequest{Node: nodeID, Ttl: durationpb.New(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // let the token expire
	k := newNodeKeys(t)
	anon := registryv1.NewNodeServiceClient(nodeConn(t, c, c.Servers[0], nil, nil))
	_, err = anon.Join(ctx, &registryv1.JoinRequest{Token: tok.GetToken(), Node: nodeID, SvidCsr: k.svidCSR, SigningCsr: k.signCSR, Address: "127.0.0.1:7443"})
	wantReason(t, "expired token", err, codes.FailedPrecondition, "TOKEN_INVALID")
	// A token for another node does not work for this one.
	other := &identv1.NodeId{Member: memberID("70000310"), NodeCode: "ss2"}
	if _, err := admin.AddNode(c.Ctx(ctx), &registryv1.AddNodeRequest{Id: other}); err != nil {
		t.Fatal(err)
	}
	tok2, err := admin.CreateJoinToken(c.Ctx(ctx), &registryv1.CreateJoinTokenRequest{Node: other})
	if err != nil {
		t.Fatal(err)
	}
	_, err = anon.Join(ctx, &registryv1.JoinRequest{Token: tok2.GetToken(), Node: nodeID, SvidCsr: k.svidCSR, SigningCsr: k.signCSR, Address: "127.0.0.1:7443"})
	wantReason(t, "token of another node", err, codes.FailedPrecondition, "TOKEN_INVALID")
	_ = ident.Node{}
}

func TestTimeStampingAuthority(t *testing.T) {
	c := registrytest.Start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := c.AdminClient(c.Servers[0]).GetGlobalConfig(c.Ctx(ctx), &registryv1.GetGlobalConfigRequest{})
	if err != nil {
		t.Fatal(err)
	}
	urls := resp.GetConfig().GetTsaUrls()
	if len(urls) != 1 {
		t.Fatalf("tsa urls %v", urls)
	}
	digest := sha256.Sum256([]byte("checkpoint"))
	token, err := tsa.Request(ctx, http.DefaultClient, urls[0], digest[:])
	if err != nil {
		t.Fatal(err)
	}
	tsaCert, err := x509.ParseCertificate(resp.GetConfig().GetTsaCertificate())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Verify(tsaCert, c.Roots, pki.KindTSA, time.Now()); err != nil {
		t.Fatalf("published tsa certificate: %v", err)
	}
	at, err := tsa.Verify(token, digest[:], c.Roots)
	if err != nil {
		t.Fatalf("verify token: %v", err)
	}
	if d := time.Since(at); d < -time.Minute || d > time.Minute {
		t.Fatalf("token time %s", at)
	}
	other := sha256.Sum256([]byte("other"))
	if _, err := tsa.Verify(token, other[:], c.Roots); err == nil {
		t.Fatal("token verified for another digest")
	}
}

func TestConfigKeyRotation(t *testing.T) {
	c := registrytest.Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	node := joinTestNode(t, c, ctx)
	nodes := registryv1.NewNodeServiceClient(nodeConn(t, c, c.Servers[2], node.key, node.chain))
	before, err := nodes.GetConfig(ctx, &registryv1.GetConfigRequest{})
	if err != nil {
		t.Fatal(err)
	}
	rot, err := c.AdminClient(c.Servers[1]).RotateConfigKey(c.Ctx(ctx), &registryv1.RotateConfigKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if string(rot.GetCertificate()) == string(before.GetConfig().GetSignerChain()[0]) {
		t.Fatal("rotation returned the old certificate")
	}
	// Every server signs with the new key; the node still verifies.
	for _, m := range c.Servers {
		conn := registryv1.NewNodeServiceClient(nodeConn(t, c, m, node.key, node.chain))
		registrytest.WaitFor(t, 10*time.Second, m.ID+" signs with the new key", func() bool {
			got, err := conn.GetConfig(ctx, &registryv1.GetConfigRequest{})
			return err == nil && string(got.GetConfig().GetSignerChain()[0]) == string(rot.GetCertificate())
		})
		got, _ := conn.GetConfig(ctx, &registryv1.GetConfigRequest{})
		if _, err := gconf.Verify(got.GetConfig(), c.Roots, time.Now()); err != nil {
			t.Fatalf("%s: config signed with the rotated key: %v", m.ID, err)
		}
	}
}
