package exchange

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/access"
	"github.com/sildmesh/sild/node/envelope"
	"github.com/sildmesh/sild/node/sign"
)

// checkEvidence checks that both nodes recorded message id with the same
// digests and both signatures, and that the signatures verify.
func checkEvidence(t *testing.T, m *mesh, id string, code codes.Code, reqN, respN uint64) {
	t.Helper()
	ra, rb := m.recA.find(id), m.recB.find(id)
	if ra == nil || rb == nil {
		t.Fatalf("records of %s: consumer %v, provider %v", id, ra != nil, rb != nil)
	}
	for _, r := range []struct {
		name string
		rec  interface {
			GetStatusCode() int32
			GetRequestCount() uint64
			GetResponseCount() uint64
		}
	}{{"consumer", ra}, {"provider", rb}} {
		if codes.Code(r.rec.GetStatusCode()) != code || r.rec.GetRequestCount() != reqN || r.rec.GetResponseCount() != respN {
			t.Fatalf("%s record: status %d, counts %d/%d; want %v %d/%d", r.name, r.rec.GetStatusCode(),
				r.rec.GetRequestCount(), r.rec.GetResponseCount(), code, reqN, respN)
		}
	}
	if !bytes.Equal(ra.GetRequestDigest(), rb.GetRequestDigest()) || !bytes.Equal(ra.GetResponseDigest(), rb.GetResponseDigest()) {
		t.Fatal("consumer and provider recorded different digests")
	}
	if ra.GetPeerNode() != nodeB.String() || rb.GetPeerNode() != nodeA.String() {
		t.Fatalf("peers %s / %s", ra.GetPeerNode(), rb.GetPeerNode())
	}
	roots := m.topoA.Load().Roots
	cs, err := sign.FromProto(ra.GetConsumerSignature())
	if err != nil {
		t.Fatal(err)
	}
	if id, err := sign.Verify(cs, ra.GetRequestDigest(), nil, roots, time.Now()); err != nil || id != m.a.spiffe {
		t.Fatalf("consumer signature: %v %v", id, err)
	}
	ps, err := sign.FromProto(ra.GetProviderSignature())
	if err != nil {
		t.Fatal(err)
	}
	if id, err := sign.Verify(ps, ra.GetResponseDigest(), nil, roots, time.Now()); err != nil || id != m.b.spiffe {
		t.Fatalf("provider signature: %v %v", id, err)
	}
}

// checkRefusalEvidence checks that both nodes recorded a refusal of the
// provider, signed by it.
func checkRefusalEvidence(t *testing.T, m *mesh, id string, code codes.Code) {
	t.Helper()
	ra, rb := m.recA.find(id), m.recB.find(id)
	if ra == nil || rb == nil {
		t.Fatalf("records of %s: consumer %v, provider %v", id, ra != nil, rb != nil)
	}
	if codes.Code(ra.GetStatusCode()) != code || codes.Code(rb.GetStatusCode()) != code {
		t.Fatalf("status %d / %d", ra.GetStatusCode(), rb.GetStatusCode())
	}
	if !bytes.Equal(ra.GetResponseDigest(), rb.GetResponseDigest()) {
		t.Fatal("consumer and provider recorded different response digests")
	}
	ps, err := sign.FromProto(ra.GetProviderSignature())
	if err != nil {
		t.Fatal(err)
	}
	if id, err := sign.Verify(ps, ra.GetResponseDigest(), nil, m.topoA.Load().Roots, time.Now()); err != nil || id != m.b.spiffe {
		t.Fatalf("provider signature: %v %v", id, err)
	}
}

func TestUnaryThroughMesh(t *testing.T) {
	m := newMesh(t)
	ctx := as(ctxT(t), licensing, registry, "x-echo", "v1", envelope.HeaderMessageID, "m-unary-1", envelope.HeaderUserID, "EE38001010000")
	var hdr, trl metadata.MD
	resp, err := m.client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("hello")}},
		grpc.Header(&hdr), grpc.Trailer(&trl))
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.GetPayload().GetBody()) != "hello" {
		t.Fatalf("payload %q", resp.GetPayload().GetBody())
	}
	if got := hdr.Get("x-hdr"); len(got) != 1 || got[0] != "v1" {
		t.Fatalf("header %v", hdr)
	}
	if got := trl.Get("x-trl"); len(got) != 1 || got[0] != "v1" {
		t.Fatalf("trailer %v", trl)
	}
	if got := trl.Get("x-seen-client"); len(got) != 1 || got[0] != licensing.String() {
		t.Fatalf("backend saw client %v", got)
	}
	dl, _ := ctx.Deadline()
	got, err := time.Parse(time.RFC3339Nano, resp.GetUsername())
	if err != nil {
		t.Fatalf("backend saw no deadline: %v", err)
	}
	if d := dl.Sub(got); d < -time.Second || d > 5*time.Second {
		t.Fatalf("deadline %v at the backend, %v at the client", got, dl)
	}
	checkEvidence(t, m, "m-unary-1", codes.OK, 1, 1)
	if u := m.recB.find("m-unary-1").GetUserId(); u != "EE38001010000" {
		t.Fatalf("user id %q", u)
	}
}

func TestBackendStatusPassesThrough(t *testing.T) {
	m := newMesh(t)
	ctx := as(ctxT(t), licensing, registry, envelope.HeaderMessageID, "m-status")
	_, err := m.client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.FailedPrecondition), Message: "no such company"}})
	if status.Code(err) != codes.FailedPrecondition || status.Convert(err).Message() != "no such company" {
		t.Fatalf("got %v", err)
	}
	checkEvidence(t, m, "m-status", codes.FailedPrecondition, 1, 0)
}

func TestServerStream(t *testing.T) {
	m := newMesh(t)
	ctx := as(ctxT(t), licensing, registry, envelope.HeaderMessageID, "m-sstream")
	s, err := m.client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 10}, {Size: 20}, {Size: 3 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for {
		r, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(r.GetPayload().GetBody()))
	}
	if len(sizes) != 3 || sizes[0] != 10 || sizes[1] != 20 || sizes[2] != 3<<20 {
		t.Fatalf("sizes %v", sizes)
	}
	checkEvidence(t, m, "m-sstream", codes.OK, 1, 3)
}

func TestClientStream(t *testing.T) {
	m := newMesh(t)
	ctx := as(ctxT(t), licensing, registry, envelope.HeaderMessageID, "m-cstream")
	s, err := m.client.StreamingInputCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{1, 100, 8 << 20} {
		if err := s.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, n)}}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := s.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetAggregatedPayloadSize() != 1+100+8<<20 {
		t.Fatalf("aggregated %d", resp.GetAggregatedPayloadSize())
	}
	checkEvidence(t, m, "m-cstream", codes.OK, 3, 1)
}

func TestBidiStream(t *testing.T) {
	m := newMesh(t)
	ctx := as(ctxT(t), licensing, registry, "x-echo", "bidi", envelope.HeaderMessageID, "m-bidi")
	s, err := m.client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Ping-pong: each answer is awaited before the next message, so a
	// relay that held messages back would deadlock here.
	for i := range 5 {
		body := []byte{byte('a' + i)}
		if err := s.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
			t.Fatal(err)
		}
		r, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(r.GetPayload().GetBody(), body) {
			t.Fatalf("echo %q", r.GetPayload().GetBody())
		}
	}
	if h, err := s.Header(); err != nil || len(h.Get("x-hdr")) != 1 {
		t.Fatalf("header %v %v", h, err)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
	if got := s.Trailer().Get("x-trl"); len(got) != 1 {
		t.Fatalf("trailer %v", s.Trailer())
	}
	checkEvidence(t, m, "m-bidi", codes.OK, 5, 5)
}

func TestLargeUnary(t *testing.T) {
	m := newMesh(t)
	ctx := as(ctxT(t), licensing, registry)
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB: over the limit with the envelope
	if _, err := m.client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("16 MiB payload: %v", err)
	}
	body = body[:12<<20]
	resp, err := m.client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(resp.GetPayload().GetBody(), body) {
		t.Fatal("12 MiB payload changed")
	}
}

func TestCancelReachesBackend(t *testing.T) {
	m := newMesh(t)
	ctx, cancel := context.WithCancel(as(ctxT(t), licensing, registry))
	done := make(chan error, 1)
	go func() {
		_, err := m.client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("block")}})
		done <- err
	}()
	deadline := time.Now().Add(30 * time.Second)
	for m.be.calls.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("call never reached the backend")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case <-m.be.cancelled:
	case <-time.After(30 * time.Second):
		t.Fatal("cancellation did not reach the backend")
	}
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Fatalf("got %v", err)
	}
}

func TestDeadlineExceeded(t *testing.T) {
	m := newMesh(t)
	ctx, cancel := context.WithTimeout(as(ctxT(t), licensing, registry), 300*time.Millisecond)
	defer cancel()
	_, err := m.client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("block")}})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v", err)
	}
	select {
	case <-m.be.cancelled:
	case <-time.After(30 * time.Second):
		t.Fatal("the deadline did not end the backend call")
	}
}

// TestConsumerRefusals are refused by node A before anything is sent.
func TestConsumerRefusals(t *testing.T) {
	m := newMesh(t)
	for _, tc := range []struct {
		name           string
		client, target string
		method         func(context.Context) error
		code           codes.Code
		reason         string
	}{
		{name: "unknown client", client: ghost.String(), target: registry.String(), code: codes.PermissionDenied, reason: rpcerr.ReasonUnknownClient},
		{name: "client of another node", client: bank.String(), target: registry.String(), code: codes.PermissionDenied, reason: rpcerr.ReasonUnknownClient},
		{name: "target with no node", client: licensing.String(), target: empty.String(), code: codes.NotFound, reason: rpcerr.ReasonUnknownTarget},
		{name: "target not in configuration", client: licensing.String(), target: "EE/COM/70000399/nothing", code: codes.NotFound, reason: rpcerr.ReasonUnknownTarget},
		{name: "disabled service", client: licensing.String(), target: registry.String(), code: codes.NotFound, reason: rpcerr.ReasonUnknownTarget,
			method: m.callUnimplemented},
		{name: "invalid client header", client: "EE/GOV", target: registry.String(), code: codes.InvalidArgument, reason: rpcerr.ReasonInvalidIdentifier},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := metadata.AppendToOutgoingContext(ctxT(t), envelope.HeaderClient, tc.client, envelope.HeaderTarget, tc.target)
			var err error
			if tc.method != nil {
				err = tc.method(ctx)
			} else {
				_, err = m.client.UnaryCall(ctx, &testpb.SimpleRequest{})
			}
			wantRefusal(t, err, tc.code, tc.reason, ComponentConsumer)
		})
	}
	if n := m.be.calls.Load(); n != 0 {
		t.Fatalf("backend called %d times", n)
	}
	if m.recA.len() != 0 || m.recB.len() != 0 {
		t.Fatal("refusals before sending were recorded")
	}
}

// callUnimplemented calls UnimplementedService (disabled in the catalogue)
// through A.
func (m *mesh) callUnimplemented(ctx context.Context) error {
	var out testpb.Empty
	return m.aConn.Invoke(ctx, "/grpc.testing.UnimplementedService/UnimplementedCall", &testpb.Empty{}, &out)
}

func TestProviderRefusalsThroughA(t *testing.T) {
	m := newMesh(t)
	// A client of A without any right.
	_, err := m.client.UnaryCall(as(ctxT(t), archive, registry, envelope.HeaderMessageID, "m-denied"), &testpb.SimpleRequest{})
	wantRefusal(t, err, codes.PermissionDenied, rpcerr.ReasonAccessDenied, ComponentProvider)
	// The refusal is signed and recorded on both sides.
	checkRefusalEvidence(t, m, "m-denied", codes.PermissionDenied)

	// A right to one method of the service does not cover another.
	if _, _, err := m.store.Grant(access.Right{Client: access.SubsystemClient(archive),
		Service: ident.Service{Subsystem: registry, Name: testService}, Method: "StreamingOutputCall"}); err != nil {
		t.Fatal(err)
	}
	_, err = m.client.UnaryCall(as(ctxT(t), archive, registry), &testpb.SimpleRequest{})
	wantRefusal(t, err, codes.PermissionDenied, rpcerr.ReasonAccessDenied, ComponentProvider)
	if n := m.be.calls.Load(); n != 0 {
		t.Fatalf("backend called %d times for methods not granted", n)
	}
	s, err := m.client.StreamingOutputCall(as(ctxT(t), archive, registry), &testpb.StreamingOutputCallRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("granted method: %v", err)
	}
	if n := m.be.calls.Load(); n != 1 {
		t.Fatalf("granted method: backend called %d times", n)
	}
	m.be.calls.Store(0)

	// A replayed message id.
	ctx := as(ctxT(t), licensing, registry, envelope.HeaderMessageID, "m-replay")
	if _, err := m.client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	_, err = m.client.UnaryCall(ctx, &testpb.SimpleRequest{})
	wantRefusal(t, err, codes.AlreadyExists, rpcerr.ReasonReplayed, ComponentProvider)
	if n := m.be.calls.Load(); n != 1 {
		t.Fatalf("backend called %d times, want 1", n)
	}
}

func TestExpiredConfiguration(t *testing.T) {
	m := newMesh(t)
	expired := proto.Clone(m.gc).(*registryv1.GlobalConfig)
	expired.ExpiresAt = timestamppb.New(time.Now().Add(-time.Second))
	// Only B's copy has expired: A forwards, B refuses.
	m.setTopo(t, &m.topoB, expired)
	_, err := m.client.UnaryCall(as(ctxT(t), licensing, registry), &testpb.SimpleRequest{})
	wantRefusal(t, err, codes.Unavailable, rpcerr.ReasonConfigExpired, ComponentProvider)
	// Now A's too: A refuses.
	m.setTopo(t, &m.topoA, expired)
	_, err = m.client.UnaryCall(as(ctxT(t), licensing, registry), &testpb.SimpleRequest{})
	wantRefusal(t, err, codes.Unavailable, rpcerr.ReasonConfigExpired, ComponentConsumer)
	if n := m.be.calls.Load(); n != 0 {
		t.Fatalf("backend called %d times", n)
	}
}

func TestProviderSignatureMustBeRegisteredKey(t *testing.T) {
	m := newMesh(t)
	// A's configuration names another signing key for B.
	gc := proto.Clone(m.gc).(*registryv1.GlobalConfig)
	gc.Nodes[1].SigningKeyHash = m.c.signKey
	m.setTopo(t, &m.topoA, gc)
	_, err := m.client.UnaryCall(as(ctxT(t), licensing, registry, envelope.HeaderMessageID, "m-badkey"), &testpb.SimpleRequest{})
	wantRefusal(t, err, codes.Unauthenticated, rpcerr.ReasonSignatureInvalid, ComponentConsumer)
	if r := m.recA.find("m-badkey"); r == nil || r.GetProviderSignature() != nil {
		t.Fatalf("consumer record %v", r)
	}
}

func TestLedgerUnavailable(t *testing.T) {
	m := newMesh(t)
	m.recB.fail.Store(true)
	_, err := m.client.UnaryCall(as(ctxT(t), licensing, registry), &testpb.SimpleRequest{})
	wantRefusal(t, err, codes.Unavailable, rpcerr.ReasonLedgerUnavailable, ComponentProvider)
	m.recB.fail.Store(false)
	m.recA.fail.Store(true)
	_, err = m.client.UnaryCall(as(ctxT(t), licensing, registry), &testpb.SimpleRequest{})
	wantRefusal(t, err, codes.Unavailable, rpcerr.ReasonLedgerUnavailable, ComponentConsumer)
}

// rawCall calls B directly as node n with the exchange protocol done by
// hand: data frames, then seal (nil: none), then half-close.
func (m *mesh) rawCall(t *testing.T, n *testNode, client ident.Subsystem, msgID string, frames [][]byte, seal func(d []byte) []byte) error {
	t.Helper()
	return rawCallOn(t, m.dialAs(t, n), client, registry, msgID, frames, seal)
}

// withHosts gives A a configuration where registry is hosted by the given
// nodes; node D is registered at an address where nothing listens.
func (m *mesh) withHosts(t *testing.T, hosts ...ident.Node) ident.Node {
	t.Helper()
	dead := listen(t)
	deadAddr := dead.Addr().String()
	_ = dead.Close()
	return m.withHostsAt(t, deadAddr, hosts...)
}

// withHostsAt is withHosts with node D at addr.
func (m *mesh) withHostsAt(t *testing.T, deadAddr string, hosts ...ident.Node) ident.Node {
	t.Helper()
	nodeD := mustNode("EE/COM/70000311/ss2")
	gc := proto.Clone(m.gc).(*registryv1.GlobalConfig)
	idD, err := ident.NodeSPIFFEID(td, nodeD)
	if err != nil {
		t.Fatal(err)
	}
	gc.Nodes = append(gc.Nodes, &registryv1.Node{Id: nodeD.Proto(), Address: deadAddr,
		State: registryv1.NodeState_NODE_STATE_ACTIVE, SpiffeId: idD.String()})
	for _, s := range gc.Subsystems {
		if s.GetId().GetSubsystemCode() == registry.Code && s.GetId().GetMember().GetMemberCode() == registry.Member.Code {
			s.Nodes = nil
			for _, h := range hosts {
				if h == (ident.Node{}) {
					h = nodeD
				}
				s.Nodes = append(s.Nodes, h.Proto())
			}
		}
	}
	m.setTopo(t, &m.topoA, gc)
	return nodeD
}

func TestFailoverToReachableNode(t *testing.T) {
	m := newMesh(t)
	m.withHosts(t, ident.Node{}, nodeB) // D (dead) and B
	for i := range 4 {
		if _, err := m.client.UnaryCall(as(ctxT(t), licensing, registry), &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if n := m.be.calls.Load(); n != 4 {
		t.Fatalf("backend called %d times", n)
	}
}

// A hosting node that accepts connections but never completes a handshake
// holds a call up only for the connect wait; then the call goes to the
// other node, and later calls go there first while it is still connecting.
func TestFailoverFromHangingNode(t *testing.T) {
	m := newMesh(t)
	m.cons.connectWait = 200 * time.Millisecond
	hang := listen(t)
	var accepted atomic.Int32
	go func() {
		for {
			c, err := hang.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			t.Cleanup(func() { _ = c.Close() }) // held open, never answered
		}
	}()
	t.Cleanup(func() { _ = hang.Close() })
	m.withHostsAt(t, hang.Addr().String(), ident.Node{}, nodeB) // D (hanging) and B
	for i := range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := m.client.UnaryCall(as(ctx, licensing, registry), &testpb.SimpleRequest{})
		cancel()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if n := m.be.calls.Load(); n != 10 {
		t.Fatalf("backend called %d times, want 10", n)
	}
	if accepted.Load() == 0 {
		t.Fatal("the hanging node was never tried: the test proves nothing")
	}
}

func TestNoReachableNode(t *testing.T) {
	m := newMesh(t)
	m.withHosts(t, ident.Node{}) // only D (dead)
	_, err := m.client.UnaryCall(as(ctxT(t), licensing, registry), &testpb.SimpleRequest{})
	wantRefusal(t, err, codes.Unavailable, rpcerr.ReasonTargetUnavailable, ComponentConsumer)
}

func TestNoConfiguration(t *testing.T) {
	m := newMesh(t)
	m.topoA.Store(nil)
	_, err := m.client.UnaryCall(as(ctxT(t), licensing, registry), &testpb.SimpleRequest{})
	wantRefusal(t, err, codes.Unavailable, rpcerr.ReasonUnavailable, ComponentConsumer)
}

func TestConfigValidate(t *testing.T) {
	m := newMesh(t)
	good := DefaultConfig()
	good.Node, good.Topology = nodeA, m.topoA.Load
	good.SVID, good.Bundles, good.Signer, good.Verifier = m.a.svid, m.bundles, m.a.signer, sign.NewVerifier(0)
	good.Recorder, good.Access = m.recA, m.store
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		field string
		edit  func(*Config)
	}{
		{"Node", func(c *Config) { c.Node = ident.Node{} }},
		{"Topology", func(c *Config) { c.Topology = nil }},
		{"SVID", func(c *Config) { c.SVID = nil }},
		{"Signer", func(c *Config) { c.Signer = nil }},
		{"Recorder", func(c *Config) { c.Recorder = nil }},
		{"Access", func(c *Config) { c.Access = nil }},
		{"Clients[0]", func(c *Config) { c.Clients = []ident.Subsystem{{}} }},
		{"Backends[", func(c *Config) { c.Backends = map[ident.Subsystem]string{registry: ""} }},
		{"MaxMessageSize", func(c *Config) { c.MaxMessageSize = -1 }},
	} {
		c := good
		tc.edit(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: got %v", tc.field, err)
		}
	}
}

func TestMayCallAs(t *testing.T) {
	m := newMesh(t)
	ccfg := DefaultConfig()
	ccfg.Node, ccfg.Topology = nodeA, m.topoA.Load
	ccfg.SVID, ccfg.Bundles, ccfg.Signer, ccfg.Verifier = m.a.svid, m.bundles, m.a.signer, sign.NewVerifier(0)
	ccfg.Recorder, ccfg.Clients = m.recA, []ident.Subsystem{licensing, archive}
	ccfg.MayCallAs = func(ctx context.Context, c ident.Subsystem) bool {
		md, _ := metadata.FromIncomingContext(ctx)
		return len(md.Get("x-caller")) == 1 && md.Get("x-caller")[0] == c.Code
	}
	cons, err := NewConsumer(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cons.Close() })
	lis := listen(t)
	serve(t, lis, grpc.NewServer(cons.ServerOptions()...))
	c := testpb.NewTestServiceClient(dialPlain(t, lis.Addr().String()))
	if _, err := c.UnaryCall(as(ctxT(t), licensing, registry, "x-caller", "licensing"), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	_, err = c.UnaryCall(as(ctxT(t), licensing, registry, "x-caller", "archive"), &testpb.SimpleRequest{})
	wantRefusal(t, err, codes.PermissionDenied, rpcerr.ReasonUnknownClient, ComponentConsumer)
}

func TestMethodPathTricks(t *testing.T) {
	m := newMesh(t)
	for _, tc := range []struct {
		path   string
		code   codes.Code
		reason string
		comp   string
	}{
		{"/grpc.testing.TestService/../UnaryCall", codes.InvalidArgument, rpcerr.ReasonInvalidArgument, ComponentConsumer},
		{"/grpc.testing.TestService/Unary%43all", codes.InvalidArgument, rpcerr.ReasonInvalidArgument, ComponentConsumer},
		{"/grpc.testing.TestService/UnaryCall/", codes.InvalidArgument, rpcerr.ReasonInvalidArgument, ComponentConsumer},
		{"/grpc.testing.TestService/UnaryСall", codes.InvalidArgument, rpcerr.ReasonInvalidArgument, ComponentConsumer}, // Cyrillic С
		{"/grpc.testing.testservice/UnaryCall", codes.PermissionDenied, rpcerr.ReasonAccessDenied, ComponentProvider},
	} {
		t.Run(tc.path, func(t *testing.T) {
			var out testpb.SimpleResponse
			err := m.aConn.Invoke(as(ctxT(t), licensing, registry), tc.path, &testpb.SimpleRequest{}, &out)
			wantRefusal(t, err, tc.code, tc.reason, tc.comp)
		})
	}
	if n := m.be.calls.Load(); n != 0 {
		t.Fatalf("backend called %d times", n)
	}
}

// When the configuration moves a node to another address, new calls go to
// the new one, a stream open on the old connection carries on, and the old
// connection is closed once that stream ends and Conn's caller released it.
func TestPooledConnectionOfMovedNode(t *testing.T) {
	m := newMesh(t)
	call := func() {
		t.Helper()
		if _, err := m.client.UnaryCall(as(ctxT(t), licensing, registry), &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	call()
	pool := func() map[peerKey]*pooled {
		m.cons.mu.Lock()
		defer m.cons.mu.Unlock()
		return maps.Clone(m.cons.conns)
	}
	old := pool()[peerKey{m.bAddr, m.b.spiffe.String()}]
	if p := pool(); old == nil || len(p) != 1 {
		t.Fatalf("pool after the first call: %v", p)
	}
	s, err := m.client.FullDuplexCall(as(ctxT(t), licensing, registry))
	if err != nil {
		t.Fatal(err)
	}
	ping := func(b byte) error {
		if err := s.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte{b}}}); err != nil {
			return err
		}
		r, err := s.Recv()
		if err == nil && !bytes.Equal(r.GetPayload().GetBody(), []byte{b}) {
			err = fmt.Errorf("echo %q", r.GetPayload().GetBody())
		}
		return err
	}
	if err := ping('a'); err != nil {
		t.Fatal(err)
	}
	// The metaservice's way in: a connection held until released.
	held, release, err := m.cons.Conn(m.topoA.Load(), nodeB)
	if err != nil || held != old.cc {
		t.Fatalf("Conn: %v, same as the pool's: %v", err, held == old.cc)
	}

	// B moves: the same provider now also listens on a new address, which
	// the next configuration names.
	lis := listen(t)
	serve(t, lis, grpc.NewServer(m.prov.ServerOptions()...))
	gc := proto.Clone(m.gc).(*registryv1.GlobalConfig)
	gc.Version++
	for _, n := range gc.Nodes {
		if n.GetSpiffeId() == m.b.spiffe.String() {
			n.Address = lis.Addr().String()
		}
	}
	m.setTopo(t, &m.topoA, gc)
	before := m.be.calls.Load()
	call()
	if m.be.calls.Load() != before+1 {
		t.Fatal("call after the move did not reach the backend")
	}
	if p := pool(); p[peerKey{lis.Addr().String(), m.b.spiffe.String()}] == nil || len(p) != 1 {
		t.Fatalf("pool after the move: %v", p)
	}
	if st := old.cc.GetState(); st == connectivity.Shutdown {
		t.Fatal("old connection closed while a stream uses it")
	}
	if err := ping('b'); err != nil {
		t.Fatalf("open stream after the move: %v", err)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("end of stream: %v", err)
	}
	time.Sleep(50 * time.Millisecond) // the handler releases after its answer
	if st := old.cc.GetState(); st == connectivity.Shutdown {
		t.Fatal("old connection closed while Conn's caller holds it")
	}
	release()
	deadline := time.Now().Add(10 * time.Second)
	for old.cc.GetState() != connectivity.Shutdown {
		if time.Now().After(deadline) {
			t.Fatalf("old connection still %v after its last stream ended", old.cc.GetState())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
