package exchange

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/access"
	"github.com/sildmesh/sild/node/envelope"
	"github.com/sildmesh/sild/node/forward"
	"github.com/sildmesh/sild/pki"
)

// rawCallOn is rawCall on connection cc to target, with the message id
// header only if msgID is not empty.
func rawCallOn(t *testing.T, cc *grpc.ClientConn, client, target ident.Subsystem, msgID string, frames [][]byte, seal func(d []byte) []byte) error {
	t.Helper()
	req := envelope.Request{Client: client, Target: target, MessageID: msgID, Service: testService, Method: "UnaryCall"}
	req.StampTime(time.Now())
	return rawStream(t, cc, req, requestHeaders(req), frames, seal)
}

// requestHeaders are the exchange headers that carry r (message id, user
// id and purpose only if set).
func requestHeaders(r envelope.Request) []string {
	kv := []string{envelope.HeaderClient, r.Client.String(), envelope.HeaderTarget, r.Target.String(), envelope.HeaderRequestTime, r.TimeHeader()}
	for _, f := range [][2]string{{envelope.HeaderMessageID, r.MessageID}, {envelope.HeaderUserID, r.UserID}, {envelope.HeaderPurpose, r.Purpose}} {
		if f[1] != "" {
			kv = append(kv, f[0], f[1])
		}
	}
	return kv
}

// rawStream does the exchange protocol by hand on cc: a call of signed's
// method with the headers kv (which may tell another request than signed),
// the data frames bound into signed's request chain, the seal over it (nil:
// none), half-close; it returns the call's status (nil for OK).
func rawStream(t *testing.T, cc *grpc.ClientConn, signed envelope.Request, kv []string, frames [][]byte, seal func(d []byte) []byte) error {
	t.Helper()
	ctx := metadata.AppendToOutgoingContext(ctxT(t), kv...)
	cs, err := cc.NewStream(ctx, fullDuplex, signed.FullMethod(), grpc.ForceCodecV2(forward.Codec{}))
	if err != nil {
		return err
	}
	chain := envelope.NewChain(envelope.DirRequest, signed)
	for _, f := range frames {
		chain.Add(f)
		if err := cs.SendMsg(taggedFrame(tagData, f)); err != nil {
			break
		}
	}
	if seal != nil {
		_ = cs.SendMsg(taggedFrame(tagSeal, seal(sealDigest(envelope.DirRequest, chain, codes.OK))))
	}
	_ = cs.CloseSend()
	for {
		f := &forward.Frame{}
		err := cs.RecvMsg(f)
		f.Free()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// observed counts the calls each side handled (Config.Observe).
type observed struct {
	mu sync.Mutex
	n  map[string]int
}

func (o *observed) observe(side string, _ error, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n == nil {
		o.n = map[string]int{}
	}
	o.n[side]++
}

func (o *observed) count(side string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n[side]
}

// subsystemEntry returns the entry of sub in gc, nil if none.
func subsystemEntry(gc *registryv1.GlobalConfig, sub ident.Subsystem) *registryv1.Subsystem {
	for _, s := range gc.GetSubsystems() {
		if id, err := ident.SubsystemFromProto(s.GetId()); err == nil && id == sub {
			return s
		}
	}
	return nil
}

func grantService(t *testing.T, m *mesh, c access.Client, target ident.Subsystem) {
	t.Helper()
	if _, _, err := m.store.Grant(access.Right{Client: c, Service: ident.Service{Subsystem: target, Name: testService}}); err != nil {
		t.Fatal(err)
	}
}

// TestConsumerClientListedAndAssigned: the consumer node lets a member
// system call as a client subsystem only if the subsystem is both one of
// the node's configured clients and assigned to this node by the current
// configuration; either alone is refused with UNKNOWN_CLIENT before
// anything is sent, though the provider would answer the call.
func TestConsumerClientListedAndAssigned(t *testing.T) {
	unlisted := mustSub("EE/GOV/70000310/unlisted") // assigned to A, not in its Clients
	m := newMesh(t)
	gc := proto.Clone(m.gc).(*registryv1.GlobalConfig)
	gc.Subsystems = append(gc.Subsystems, &registryv1.Subsystem{Id: unlisted.Proto(), Nodes: []*identv1.NodeId{nodeA.Proto()}})
	m.setTopo(t, &m.topoA, gc)
	m.setTopo(t, &m.topoB, gc)
	grantService(t, m, access.SubsystemClient(unlisted), registry)

	// Both: the call goes through.
	if _, err := m.client.UnaryCall(as(ctxT(t), licensing, registry), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("licensing, listed and assigned: %v", err)
	}
	// Assigned to A by the configuration, granted on B, not one of A's clients.
	_, err := m.client.UnaryCall(as(ctxT(t), unlisted, registry, envelope.HeaderMessageID, "unlisted"), &testpb.SimpleRequest{})
	wantRefusal(t, err, codes.PermissionDenied, rpcerr.ReasonUnknownClient, ComponentConsumer)

	// One of A's clients, but only A's configuration has moved it to C:
	// B still takes A for its node and would serve the call.
	moved := proto.Clone(gc).(*registryv1.GlobalConfig)
	subsystemEntry(moved, licensing).Nodes = []*identv1.NodeId{nodeC.Proto()}
	m.setTopo(t, &m.topoA, moved)
	_, err = m.client.UnaryCall(as(ctxT(t), licensing, registry, envelope.HeaderMessageID, "moved"), &testpb.SimpleRequest{})
	wantRefusal(t, err, codes.PermissionDenied, rpcerr.ReasonUnknownClient, ComponentConsumer)

	if n := m.be.calls.Load(); n != 1 {
		t.Fatalf("backend called %d times, want 1 (the allowed call)", n)
	}
	for _, id := range []string{"unlisted", "moved"} {
		if m.recA.find(id) != nil || m.recB.find(id) != nil {
			t.Fatalf("refusal %s before sending was recorded", id)
		}
	}
}

// TestSignatureOfAnotherRegisteredNode: a seal made with another
// registered node's valid signing key and certificate does not pass for
// the peer's, even where the peer's record names no signing key or names
// that key as its previous one, in both directions.
func TestSignatureOfAnotherRegisteredNode(t *testing.T) {
	m := newMesh(t)
	frame := [][]byte{unaryFrame(t, "x")}

	// Consumer C calls B directly; B's configuration is edited per case.
	for _, tc := range []struct {
		name string
		rec  func(c *registryv1.Node)
		seal *testNode
		code codes.Code
	}{
		{name: "no key listed, own seal", rec: func(c *registryv1.Node) { c.SigningKeyHash = "" }, seal: m.c, code: codes.OK},
		{name: "no key listed, A's seal", rec: func(c *registryv1.Node) { c.SigningKeyHash = "" }, seal: m.a, code: codes.Unauthenticated},
		{name: "A's key as previous, own seal", rec: func(c *registryv1.Node) { c.PreviousSigningKeyHash = m.a.signKey }, seal: m.c, code: codes.OK},
		{name: "A's key as previous, A's seal", rec: func(c *registryv1.Node) { c.PreviousSigningKeyHash = m.a.signKey }, seal: m.a, code: codes.Unauthenticated},
	} {
		t.Run("provider/"+tc.name, func(t *testing.T) {
			gc := proto.Clone(m.gc).(*registryv1.GlobalConfig)
			tc.rec(gc.Nodes[2])
			m.setTopo(t, &m.topoB, gc)
			before := m.be.calls.Load()
			err := m.rawCall(t, m.c, bank, "peer-"+tc.name, frame, sealWith(t, tc.seal, nil))
			want := int64(1)
			if tc.code == codes.OK {
				if err != nil {
					t.Fatal(err)
				}
			} else {
				wantRefusal(t, err, tc.code, rpcerr.ReasonSignatureInvalid, ComponentProvider)
				want = 0
			}
			if got := m.be.calls.Load() - before; got != want {
				t.Fatalf("backend called %d times, want %d", got, want)
			}
			rec := m.recB.find("peer-" + tc.name)
			if rec == nil || (rec.GetConsumerSignature() != nil) != (tc.code == codes.OK) {
				t.Fatalf("provider record %v", rec)
			}
		})
	}
	m.setTopo(t, &m.topoB, m.gc)

	// A calls a fake provider node with B's identity, whose record in A's
	// configuration names no signing key.
	resp, err := proto.Marshal(&testpb.SimpleResponse{Payload: &testpb.Payload{Body: []byte("answer")}})
	if err != nil {
		t.Fatal(err)
	}
	var sealer *testNode
	m.withFakeProvider(t, func() fakeAnswer {
		return fakeAnswer{frames: [][]byte{append([]byte{tagData}, resp...)}, seal: sealWith(t, sealer, nil)}
	})
	gc := proto.Clone(m.topoA.Load().Config).(*registryv1.GlobalConfig)
	gc.Nodes[1].SigningKeyHash = ""
	m.setTopo(t, &m.topoA, gc)
	sealer = m.b
	got, err := m.client.UnaryCall(as(ctxT(t), licensing, registry), &testpb.SimpleRequest{})
	if err != nil || string(got.GetPayload().GetBody()) != "answer" {
		t.Fatalf("B's own seal: %v, %v", got, err)
	}
	sealer = m.c
	_, err = m.client.UnaryCall(as(ctxT(t), licensing, registry, envelope.HeaderMessageID, "sealed-by-c"), &testpb.SimpleRequest{})
	wantRefusal(t, err, codes.Unauthenticated, rpcerr.ReasonSignatureInvalid, ComponentConsumer)
	if r := m.recA.find("sealed-by-c"); r == nil || r.GetProviderSignature() != nil {
		t.Fatalf("consumer record %v", r)
	}
}

// TestProviderRequiresMessageID: a node that calls the provider without
// sild-message-id (a consumer node always sends one) is refused with
// INVALID_ARGUMENT naming the header; the backend is not reached.
func TestProviderRequiresMessageID(t *testing.T) {
	obs := &observed{}
	m := newMeshWith(t, false, func(c *Config) { c.Observe = obs.observe })
	cc := m.dialAs(t, m.c)
	frame := [][]byte{unaryFrame(t, "x")}
	// The same call with a message id goes through.
	if err := rawCallOn(t, cc, bank, registry, "with-id", frame, sealWith(t, m.c, nil)); err != nil {
		t.Fatal(err)
	}
	err := rawCallOn(t, cc, bank, registry, "", frame, sealWith(t, m.c, nil))
	wantRefusal(t, err, codes.InvalidArgument, rpcerr.ReasonInvalidArgument, ComponentProvider)
	if !strings.Contains(status.Convert(err).Message(), envelope.HeaderMessageID) {
		t.Fatalf("refusal %v does not name %s", err, envelope.HeaderMessageID)
	}
	if n := m.be.calls.Load(); n != 1 {
		t.Fatalf("backend called %d times, want 1", n)
	}
	if n := obs.count(ComponentProvider); n != 2 {
		t.Fatalf("provider handled %d calls, want 2", n)
	}
}

// TestGlobalGroupRight: a right granted to a global group (INSTANCE:CODE)
// covers the subsystems the configuration lists as its members, at the
// time of the call; others are refused.
func TestGlobalGroupRight(t *testing.T) {
	other := mustSub("EE/GOV/70000310/other") // on A, not a member
	m := newMeshWith(t, false, func(c *Config) { c.Clients = append(c.Clients, other) })
	gc := proto.Clone(m.gc).(*registryv1.GlobalConfig)
	gc.Subsystems = append(gc.Subsystems, &registryv1.Subsystem{Id: other.Proto(), Nodes: []*identv1.NodeId{nodeA.Proto()}})
	gc.Groups = []*registryv1.GlobalGroup{{Code: "health", Members: []*identv1.SubsystemId{archive.Proto()}}}
	m.setTopo(t, &m.topoA, gc)
	m.setTopo(t, &m.topoB, gc)
	g, err := access.ParseGroup("EE:health")
	if err != nil {
		t.Fatal(err)
	}
	grantService(t, m, access.GroupClient(g), registry)

	resp, err := m.client.UnaryCall(as(ctxT(t), archive, registry), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("member")}})
	if err != nil || string(resp.GetPayload().GetBody()) != "member" {
		t.Fatalf("member of the granted group: %v, %v", resp, err)
	}
	_, err = m.client.UnaryCall(as(ctxT(t), other, registry), &testpb.SimpleRequest{})
	wantRefusal(t, err, codes.PermissionDenied, rpcerr.ReasonAccessDenied, ComponentProvider)

	// B's configuration no longer lists archive in the group.
	gc = proto.Clone(gc).(*registryv1.GlobalConfig)
	gc.Groups[0].Members = []*identv1.SubsystemId{other.Proto()}
	m.setTopo(t, &m.topoB, gc)
	_, err = m.client.UnaryCall(as(ctxT(t), archive, registry), &testpb.SimpleRequest{})
	wantRefusal(t, err, codes.PermissionDenied, rpcerr.ReasonAccessDenied, ComponentProvider)
	if _, err := m.client.UnaryCall(as(ctxT(t), other, registry), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("new member of the group: %v", err)
	}
	if n := m.be.calls.Load(); n != 2 {
		t.Fatalf("backend called %d times, want 2", n)
	}
}

// TestProviderRefusesTargetNotAssignedToIt: a backend still configured on
// B for a subsystem the configuration has moved to another node is not
// used: a consumer with an older configuration is refused with
// UNKNOWN_TARGET, and the backend is not reached.
func TestProviderRefusesTargetNotAssignedToIt(t *testing.T) {
	moved := mustSub("EE/COM/70000311/moved")
	obs := &observed{}
	m := newMeshWith(t, false, func(c *Config) {
		c.Observe = obs.observe
		if c.Backends != nil {
			c.Backends[moved] = c.Backends[registry]
		}
	})
	gc := proto.Clone(m.gc).(*registryv1.GlobalConfig)
	gc.Subsystems = append(gc.Subsystems, &registryv1.Subsystem{Id: moved.Proto(), Nodes: []*identv1.NodeId{nodeB.Proto()}})
	m.setTopo(t, &m.topoA, gc)
	m.setTopo(t, &m.topoB, gc)
	grantService(t, m, access.SubsystemClient(licensing), moved)
	if _, err := m.client.UnaryCall(as(ctxT(t), licensing, moved), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("before the move: %v", err)
	}

	gc = proto.Clone(gc).(*registryv1.GlobalConfig)
	subsystemEntry(gc, moved).Nodes = []*identv1.NodeId{nodeC.Proto()}
	m.setTopo(t, &m.topoB, gc) // A still sends it to B
	_, err := m.client.UnaryCall(as(ctxT(t), licensing, moved, envelope.HeaderMessageID, "moved"), &testpb.SimpleRequest{})
	wantRefusal(t, err, codes.NotFound, rpcerr.ReasonUnknownTarget, ComponentProvider)
	if n := m.be.calls.Load(); n != 1 {
		t.Fatalf("backend called %d times, want 1 (before the move)", n)
	}
	if n := obs.count(ComponentProvider); n != 2 {
		t.Fatalf("provider handled %d calls, want 2", n)
	}
	checkRefusalEvidence(t, m, "moved", codes.NotFound)
}

// foreignNode is a node of the trust domain fiTD, with an SVID and a
// signing certificate of a CA of its own, whose roots B's bundles trust.
func foreignNode(t *testing.T, m *mesh, fiTD spiffeid.TrustDomain) (*testNode, *pki.CA) {
	t.Helper()
	fiCA, err := pki.NewCA(fiTD, "FI test root", time.Hour, time.Now().Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	m.bundles.Set(x509bundle.FromX509Authorities(td, []*x509.Certificate{m.ca.Cert}),
		x509bundle.FromX509Authorities(fiTD, []*x509.Certificate{fiCA.Cert}))
	return newTestNodeIn(t, fiCA, fiTD, mustNode("FI/COM/70000312/ss1"), time.Now().Add(-time.Minute)), fiCA
}

// TestFederationEndedOnOpenConnection: a node of a federated ecosystem
// that connected while the federation was active is refused with
// FEDERATION_INACTIVE on its open connection once B's configuration no
// longer federates with it (the TLS handshake does not run again).
func TestFederationEndedOnOpenConnection(t *testing.T) {
	m := newMesh(t)
	fiTD := spiffeid.RequireTrustDomainFromString("fi.sild.test")
	fi, fiCA := foreignNode(t, m, fiTD)
	fiSub := mustSub("FI/COM/70000312/records")
	gc := proto.Clone(m.gc).(*registryv1.GlobalConfig)
	gc.Federated = []*registryv1.FederatedInstance{{
		Instance: "FI", TrustDomain: fiTD.Name(), TrustBundle: [][]byte{fiCA.Cert.Raw}, Active: true,
		Nodes: []*registryv1.Node{{Id: fi.id.Proto(), Address: "127.0.0.1:1",
			State: registryv1.NodeState_NODE_STATE_ACTIVE, SpiffeId: fi.spiffe.String()}},
		Subsystems: []*registryv1.Subsystem{{Id: fiSub.Proto(), Nodes: []*identv1.NodeId{fi.id.Proto()}}},
	}}
	m.setTopo(t, &m.topoB, gc)
	cc := m.dialAs(t, fi)
	frame := [][]byte{unaryFrame(t, "x")}

	// Identified as FI's node: refused further on, for a client it does
	// not serve.
	err := rawCallOn(t, cc, bank, registry, "fed-1", frame, nil)
	wantRefusal(t, err, codes.Unauthenticated, rpcerr.ReasonUnknownClient, ComponentProvider)
	if r := m.recB.find("fed-1"); r == nil || r.GetPeerNode() != fi.id.String() {
		t.Fatalf("provider record %v", r)
	}

	// The federation is suspended; the connection stays open.
	gc = proto.Clone(gc).(*registryv1.GlobalConfig)
	gc.Federated[0].Active = false
	m.setTopo(t, &m.topoB, gc)
	err = rawCallOn(t, cc, fiSub, registry, "fed-2", frame, nil)
	wantRefusal(t, err, codes.PermissionDenied, rpcerr.ReasonFederationInactive, ComponentProvider)
	if m.recB.find("fed-2") != nil {
		t.Fatal("the call of an unidentified node was recorded")
	}
	if n := m.be.calls.Load(); n != 0 {
		t.Fatalf("backend called %d times", n)
	}
}

// tlsRead opens a TLS connection to B as node n, as the gRPC transport
// does, and reads what B sends first: its HTTP/2 settings to a node it
// accepts, a TLS alert to one it does not.
func tlsRead(t *testing.T, m *mesh, n *testNode) error {
	t.Helper()
	tc := tlsconfig.MTLSClientConfig(n.svid, m.bundles, tlsconfig.AuthorizeID(m.b.spiffe))
	tc.NextProtos = []string{"h2"}
	d := &net.Dialer{Timeout: 10 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", m.bAddr, tc)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	return err
}

// TestHandshakeRefusals: a node of another trust domain, even one whose
// roots B trusts, and a node with an expired SVID are refused in the TLS
// handshake: the caller is told its certificate was rejected (a gRPC call
// fails Unavailable), and B handles no call of theirs.
func TestHandshakeRefusals(t *testing.T) {
	obs := &observed{}
	m := newMeshWith(t, false, func(c *Config) { c.Observe = obs.observe })
	frame := [][]byte{unaryFrame(t, "x")}
	fi, _ := foreignNode(t, m, spiffeid.RequireTrustDomainFromString("fi.sild.test"))
	expired := newTestNode(t, m.ca, nodeC, time.Now().Add(-48*time.Hour))
	if err := tlsRead(t, m, m.c); err != nil {
		t.Fatalf("C's valid SVID: %v", err)
	}
	for _, tc := range []struct {
		name string
		n    *testNode
	}{{"foreign", fi}, {"expired", expired}} {
		if err := tlsRead(t, m, tc.n); err == nil || !strings.Contains(err.Error(), "tls: bad certificate") {
			t.Fatalf("%s: %v, want the bad certificate alert", tc.name, err)
		}
		err := m.rawCall(t, tc.n, bank, "hs-"+tc.name, frame, sealWith(t, m.c, nil))
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("%s: %v, want Unavailable", tc.name, err)
		}
	}
	// The same call with C's valid SVID goes through.
	if err := m.rawCall(t, m.c, bank, "hs-valid", frame, sealWith(t, m.c, nil)); err != nil {
		t.Fatal(err)
	}
	if n := obs.count(ComponentProvider); n != 1 {
		t.Fatalf("provider handled %d calls, want 1", n)
	}
	if n := m.be.calls.Load(); n != 1 {
		t.Fatalf("backend called %d times, want 1", n)
	}
	if m.recB.len() != 1 {
		t.Fatalf("provider recorded %d exchanges, want 1", m.recB.len())
	}
}
