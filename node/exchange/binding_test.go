package exchange

import (
	"errors"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/envelope"
	"github.com/sildmesh/sild/node/forward"
)

// The consumer's signature covers the user id and purpose the provider's
// ledger records: a request whose headers name a user or purpose its
// signature does not cover is refused, and the backend never runs.
func TestSignatureCoversUserAndPurpose(t *testing.T) {
	m := newMesh(t)
	signed := envelope.Request{Client: bank, Target: registry, MessageID: "bind-1",
		UserID: "EE38001085718", Purpose: "licence check", Service: testService, Method: "UnaryCall"}
	for _, tc := range []struct{ name, user, purpose string }{
		{"as signed", signed.UserID, signed.Purpose}, // the control: accepted
		{"other user", "EE49002124277", signed.Purpose},
		{"other purpose", signed.UserID, "curiosity"},
		{"no user", "", signed.Purpose},
	} {
		t.Run(tc.name, func(t *testing.T) {
			signed.MessageID = "bind-" + tc.name
			signed.StampTime(time.Now())
			kv := []string{envelope.HeaderMessageID, signed.MessageID, envelope.HeaderRequestTime, signed.TimeHeader()}
			if tc.user != "" {
				kv = append(kv, envelope.HeaderUserID, tc.user)
			}
			kv = append(kv, envelope.HeaderPurpose, tc.purpose)
			cs, err := m.dialAs(t, m.c).NewStream(as(ctxT(t), bank, registry, kv...), fullDuplex,
				signed.FullMethod(), grpc.ForceCodecV2(forward.Codec{}))
			if err != nil {
				t.Fatal(err)
			}
			frame := unaryFrame(t, "x")
			chain := envelope.NewChain(envelope.DirRequest, signed)
			chain.Add(frame)
			if err := cs.SendMsg(taggedFrame(tagData, frame)); err != nil {
				t.Fatal(err)
			}
			seal := sealWith(t, m.c, nil)(sealDigest(envelope.DirRequest, chain, codes.OK))
			if err := cs.SendMsg(taggedFrame(tagSeal, seal)); err != nil {
				t.Fatal(err)
			}
			_ = cs.CloseSend()
			for err == nil {
				f := &forward.Frame{}
				err = cs.RecvMsg(f)
				f.Free()
			}
			if tc.name == "as signed" {
				if !errors.Is(err, io.EOF) || m.be.calls.Load() != 1 {
					t.Fatalf("the request as signed: %v, backend called %d times", err, m.be.calls.Load())
				}
				return
			}
			wantRefusal(t, err, codes.Unauthenticated, rpcerr.ReasonSignatureInvalid, ComponentProvider)
			if n := m.be.calls.Load(); n != 1 {
				t.Fatalf("backend called %d times, want only the control's 1", n)
			}
		})
	}
}
