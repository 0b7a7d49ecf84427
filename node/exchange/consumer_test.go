package exchange

import (
	"errors"
	"io"
	"sync/atomic"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/envelope"
	"github.com/sildmesh/sild/node/forward"
)

// fakeAnswer is how a fake provider answers: the messages it sends, and
// the seal for the response chain over want (nil: no seal), then code.
type fakeAnswer struct {
	frames [][]byte // each with its tag
	seal   func(d []byte) []byte
	code   codes.Code
	// sealFor is the chain and code the seal covers; nil: the data frames
	// sent and code.
	sealFor func(req envelope.Request) []byte
	after   [][]byte // frames sent after the seal
}

// withFakeProvider points A at a node that presents B's SVID and answers
// every call with answer, after reading the request to its end.
func (m *mesh) withFakeProvider(t *testing.T, answer func() fakeAnswer) {
	t.Helper()
	lis := listen(t)
	handler := func(_ any, ss grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(ss)
		md, _ := metadata.FromIncomingContext(ss.Context())
		req, err := envelope.ParseRequest(md, method)
		if err != nil {
			return err
		}
		for {
			f := &forward.Frame{}
			if err := ss.RecvMsg(f); err != nil {
				if !errors.Is(err, io.EOF) {
					return err
				}
				break
			}
			f.Free()
		}
		a := answer()
		chain := envelope.NewChain(envelope.DirResponse, req)
		for _, fr := range a.frames {
			if len(fr) > 0 && fr[0] == tagData {
				chain.Add(fr[1:])
			}
			if err := ss.SendMsg(&forward.Frame{Data: mem.BufferSlice{mem.SliceBuffer(fr)}}); err != nil {
				return err
			}
		}
		if a.seal != nil {
			d := sealDigest(envelope.DirResponse, chain, a.code)
			if a.sealFor != nil {
				d = a.sealFor(req)
			}
			b := a.seal(d)
			if err := ss.SendMsg(taggedFrame(tagSeal, b)); err != nil {
				return err
			}
		}
		for _, fr := range a.after {
			if err := ss.SendMsg(&forward.Frame{Data: mem.BufferSlice{mem.SliceBuffer(fr)}}); err != nil {
				return err
			}
		}
		return status.Error(a.code, "fake provider")
	}
	tc := tlsconfig.MTLSServerConfig(m.b.svid, m.bundles, tlsconfig.AuthorizeAny())
	s := grpc.NewServer(append(serverOptions(handler, 1<<20, 1<<20), grpc.Creds(credentials.NewTLS(tc)))...)
	serve(t, lis, s)
	gc := proto.Clone(m.gc).(*registryv1.GlobalConfig)
	for _, n := range gc.Nodes {
		if n.GetSpiffeId() == m.b.spiffe.String() {
			n.Address = lis.Addr().String()
		}
	}
	m.setTopo(t, &m.topoA, gc)
}

// TestConsumerChecksTheProvidersSeal is the attack table of the response
// direction: a provider node (here a fake one with B's identity) whose
// answer is not sealed as the protocol requires is refused with
// SIGNATURE_INVALID, and the consumer's record keeps no provider
// signature. The well-formed answer proves the fake right, so each refusal
// is due to its one defect.
func TestConsumerChecksTheProvidersSeal(t *testing.T) {
	m := newMesh(t)
	resp, err := proto.Marshal(&testpb.SimpleResponse{Payload: &testpb.Payload{Body: []byte("answer")}})
	if err != nil {
		t.Fatal(err)
	}
	data := append([]byte{tagData}, resp...)
	sealB := sealWith(t, m.b, nil)
	var current atomic.Pointer[fakeAnswer]
	m.withFakeProvider(t, func() fakeAnswer { return *current.Load() })

	for _, tc := range []struct {
		name   string
		answer fakeAnswer
		code   codes.Code
		reason string // "" when the provider's status passes through
	}{
		{name: "well formed", answer: fakeAnswer{frames: [][]byte{data}, seal: sealB}, code: codes.OK},
		{name: "sealed refusal", answer: fakeAnswer{seal: sealB, code: codes.PermissionDenied}, code: codes.PermissionDenied},
		{name: "no seal", answer: fakeAnswer{frames: [][]byte{data}},
			code: codes.Unauthenticated, reason: rpcerr.ReasonSignatureInvalid},
		{name: "seal over other messages", answer: fakeAnswer{frames: [][]byte{data}, seal: sealB, sealFor: func(req envelope.Request) []byte {
			c := envelope.NewChain(envelope.DirResponse, req)
			c.Add([]byte("something else"))
			return sealDigest(envelope.DirResponse, c, codes.OK)
		}}, code: codes.Unauthenticated, reason: rpcerr.ReasonSignatureInvalid},
		{name: "seal for another status", answer: fakeAnswer{frames: [][]byte{data}, seal: sealB, sealFor: func(req envelope.Request) []byte {
			c := envelope.NewChain(envelope.DirResponse, req)
			c.Add(resp)
			return sealDigest(envelope.DirResponse, c, codes.NotFound)
		}}, code: codes.Unauthenticated, reason: rpcerr.ReasonSignatureInvalid},
		{name: "sealed by another node", answer: fakeAnswer{frames: [][]byte{data}, seal: sealWith(t, m.c, nil)},
			code: codes.Unauthenticated, reason: rpcerr.ReasonSignatureInvalid},
		{name: "garbage seal", answer: fakeAnswer{frames: [][]byte{data}, seal: func([]byte) []byte { return []byte("not a signature") }},
			code: codes.Unauthenticated, reason: rpcerr.ReasonSignatureInvalid},
		{name: "message after the seal", answer: fakeAnswer{frames: [][]byte{data}, seal: sealB, after: [][]byte{data}},
			code: codes.Unauthenticated, reason: rpcerr.ReasonSignatureInvalid},
		{name: "untagged message", answer: fakeAnswer{frames: [][]byte{append([]byte{0x07}, resp...)}, seal: sealB},
			code: codes.Unauthenticated, reason: rpcerr.ReasonSignatureInvalid},
		{name: "empty message", answer: fakeAnswer{frames: [][]byte{{}}, seal: sealB},
			code: codes.Unauthenticated, reason: rpcerr.ReasonSignatureInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			current.Store(&tc.answer)
			id := "fake-" + tc.name
			got, err := m.client.UnaryCall(as(ctxT(t), licensing, registry, envelope.HeaderMessageID, id), &testpb.SimpleRequest{})
			switch {
			case tc.code == codes.OK:
				if err != nil || string(got.GetPayload().GetBody()) != "answer" {
					t.Fatalf("well-formed answer: %v, %v", got, err)
				}
			case tc.reason == "":
				if status.Code(err) != tc.code {
					t.Fatalf("got %v, want the provider's %v", err, tc.code)
				}
			default:
				wantRefusal(t, err, tc.code, tc.reason, ComponentConsumer)
			}
			rec := m.recA.find(id)
			if rec == nil {
				t.Fatal("consumer recorded nothing")
			}
			if signed := rec.GetProviderSignature() != nil; signed != (tc.reason == "") {
				t.Fatalf("record keeps a provider signature: %v, want %v", signed, tc.reason == "")
			}
		})
	}
}

// TestOrderLeastBusyFirst: the consumer tries the hosting node with the
// fewest calls in flight first, then the others by load; among equally
// busy nodes it rotates, so that idle nodes share the calls.
// A node whose connection is failing is tried last, however busy the
// others are.
func TestOrderHealthyFirst(t *testing.T) {
	m := newMesh(t)
	topo := m.topoA.Load()
	p, err := m.cons.acquire(topo, nodeC) // 127.0.0.1:1 refuses
	if err != nil {
		t.Fatal(err)
	}
	defer m.cons.release(p)
	p.cc.Connect()
	ctx := ctxT(t)
	for s := p.cc.GetState(); s != connectivity.TransientFailure; s = p.cc.GetState() {
		if !p.cc.WaitForStateChange(ctx, s) {
			t.Fatalf("connection to a refusing node stayed %v", s)
		}
	}
	m.cons.counter(nodeB).Store(5)
	for range 3 {
		if got := m.cons.order(topo, []ident.Node{nodeC, nodeB}); got[0] != nodeB {
			t.Fatalf("order %v: the failing node first", got)
		}
	}
}

func TestOrderLeastBusyFirst(t *testing.T) {
	c := &Consumer{inflight: map[ident.Node]*atomic.Int64{}}
	a, _ := ident.ParseNode("EE/GOV/1/a")
	b, _ := ident.ParseNode("EE/GOV/1/b")
	d, _ := ident.ParseNode("EE/GOV/1/d")
	hosts := []ident.Node{a, b, d}
	topo := newMesh(t).topoA.Load() // names none of them: equally healthy
	c.counter(a).Store(2)
	c.counter(d).Store(1)
	for range 3 { // whatever the rotation
		if got := c.order(topo, hosts); got[0] != b || got[1] != d || got[2] != a {
			t.Fatalf("order %v, want b, d, a by load", got)
		}
	}
	c.counter(a).Store(0)
	c.counter(d).Store(0)
	first := map[ident.Node]int{}
	for range 30 {
		first[c.order(topo, hosts)[0]]++
	}
	if first[a] != 10 || first[b] != 10 || first[d] != 10 {
		t.Fatalf("idle nodes chosen first %v times, want 10 each", first)
	}
}
