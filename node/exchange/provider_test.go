package exchange

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/status"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/proto"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/sign"
)

// sealWith signs the digest with n's signer, after tamper edits it.
func sealWith(t *testing.T, n *testNode, tamper func(d []byte, s *sign.Signature)) func([]byte) []byte {
	return func(d []byte) []byte {
		d = append([]byte(nil), d...)
		if tamper != nil {
			tamper(d, nil)
		}
		sig, err := n.signer.Sign(context.Background(), d)
		if err != nil {
			t.Fatal(err)
		}
		if tamper != nil {
			tamper(nil, sig)
		}
		b, err := sig.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
}

func unaryFrame(t *testing.T, body string) []byte {
	b, err := proto.Marshal(&testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(body)}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestProviderDirect calls B as node C (registered for bank) with the
// exchange protocol done by hand. The well-formed call proves the hand-made
// protocol right, so each refusal is due to its one defect; the backend is
// never reached by a refused unary call.
func TestProviderDirect(t *testing.T) {
	m := newMesh(t)
	frame := [][]byte{unaryFrame(t, "direct")}
	for _, tc := range []struct {
		name   string
		node   *testNode
		client ident.Subsystem
		frames [][]byte
		seal   func([]byte) []byte
		code   codes.Code
		reason string
		calls  int64 // backend calls expected
	}{
		{name: "well formed", node: m.c, frames: frame, seal: sealWith(t, m.c, nil), code: codes.OK, calls: 1},
		{name: "client of another node", node: m.c, client: licensing, frames: frame, seal: sealWith(t, m.c, nil),
			code: codes.Unauthenticated, reason: rpcerr.ReasonUnknownClient},
		{name: "signature over another digest", node: m.c, frames: frame, seal: sealWith(t, m.c, func(d []byte, _ *sign.Signature) {
			if d != nil {
				d[0] ^= 1
			}
		}), code: codes.Unauthenticated, reason: rpcerr.ReasonSignatureInvalid},
		{name: "root signature flipped", node: m.c, frames: frame, seal: sealWith(t, m.c, func(_ []byte, s *sign.Signature) {
			if s != nil {
				rs := append([]byte(nil), s.RootSignature...)
				rs[len(rs)-1] ^= 1
				s.RootSignature = rs
			}
		}), code: codes.Unauthenticated, reason: rpcerr.ReasonSignatureInvalid},
		{name: "signed by another node", node: m.c, frames: frame, seal: sealWith(t, m.a, nil),
			code: codes.Unauthenticated, reason: rpcerr.ReasonSignatureInvalid},
		{name: "garbage seal", node: m.c, frames: frame, seal: func([]byte) []byte { return []byte("not a signature") },
			code: codes.Unauthenticated, reason: rpcerr.ReasonSignatureInvalid},
		{name: "no seal", node: m.c, frames: frame, code: codes.Unauthenticated, reason: rpcerr.ReasonSignatureInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := m.be.calls.Load()
			client := tc.client
			if client == (ident.Subsystem{}) {
				client = bank
			}
			err := m.rawCall(t, tc.node, client, "direct-"+tc.name, tc.frames, tc.seal)
			if tc.code == codes.OK {
				if err != nil {
					t.Fatal(err)
				}
			} else {
				wantRefusal(t, err, tc.code, tc.reason, ComponentProvider)
			}
			if got := m.be.calls.Load() - before; got != tc.calls {
				t.Fatalf("backend called %d times, want %d", got, tc.calls)
			}
			if m.recB.find("direct-"+tc.name) == nil {
				t.Fatal("provider recorded nothing")
			}
		})
	}
}

func TestProviderRefusesUnregisteredCallers(t *testing.T) {
	m := newMesh(t)
	frame := [][]byte{unaryFrame(t, "x")}

	// C is no longer active in B's configuration.
	gc := proto.Clone(m.gc).(*registryv1.GlobalConfig)
	gc.Nodes[2].State = registryv1.NodeState_NODE_STATE_PENDING
	m.setTopo(t, &m.topoB, gc)
	err := m.rawCall(t, m.c, bank, "removed-1", frame, sealWith(t, m.c, nil))
	wantRefusal(t, err, codes.Unauthenticated, rpcerr.ReasonUnauthenticated, ComponentProvider)

	// C's record names another SPIFFE ID (a re-registered node).
	gc = proto.Clone(m.gc).(*registryv1.GlobalConfig)
	gc.Nodes[2].SpiffeId = "spiffe://ee.sild.test/node/COM/70000312/other"
	m.setTopo(t, &m.topoB, gc)
	err = m.rawCall(t, m.c, bank, "removed-2", frame, sealWith(t, m.c, nil))
	wantRefusal(t, err, codes.Unauthenticated, rpcerr.ReasonUnauthenticated, ComponentProvider)
	m.setTopo(t, &m.topoB, m.gc)

	// A node of another trust domain, even one whose roots B trusts (as
	// after federation), is refused in the handshake.
	fi, _ := foreignNode(t, m, spiffeid.RequireTrustDomainFromString("fi.sild.test"))
	err = m.rawCall(t, fi, bank, "foreign-1", frame, sealWith(t, m.c, nil))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("foreign node: %v", err)
	}

	// C with an expired SVID (issued two days ago for an hour) is refused
	// in the handshake too.
	expired := newTestNode(t, m.ca, nodeC, time.Now().Add(-48*time.Hour))
	err = m.rawCall(t, expired, bank, "expired-1", frame, sealWith(t, m.c, nil))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("expired SVID: %v", err)
	}
	if n := m.be.calls.Load(); n != 0 {
		t.Fatalf("backend called %d times", n)
	}
	if m.recB.len() != 0 {
		t.Fatal("calls of unidentified nodes were recorded")
	}
}
