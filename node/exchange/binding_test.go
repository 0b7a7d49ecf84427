package exchange

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/envelope"
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
			hdr := signed
			hdr.UserID, hdr.Purpose = tc.user, tc.purpose
			err := rawStream(t, m.dialAs(t, m.c), signed, requestHeaders(hdr), [][]byte{unaryFrame(t, "x")}, sealWith(t, m.c, nil))
			if tc.name == "as signed" {
				if err != nil || m.be.calls.Load() != 1 {
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
