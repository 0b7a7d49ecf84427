package exchange

import (
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/envelope"
	"github.com/sildmesh/sild/node/forward"
)

// callAt calls B as node C (for bank) with a request signed as taken at
// signed and whose header says sent (the two may differ).
func callAt(t *testing.T, m *mesh, id string, signed, sent time.Time) error {
	t.Helper()
	req := envelope.Request{Client: bank, Target: registry, MessageID: id, Service: testService, Method: "UnaryCall"}
	req.StampTime(signed)
	hdr := req
	hdr.StampTime(sent)
	return rawStream(t, m.dialAs(t, m.c), req, requestHeaders(hdr), [][]byte{unaryFrame(t, "x")}, sealWith(t, m.c, nil))
}

// A request older than the provider's replay window, or from too far
// ahead, is refused before the backend (its id might be one the window no
// longer remembers), signed and recorded; the time is covered by the
// consumer's signature.
func TestStaleRequestRefused(t *testing.T) {
	m := newMeshWith(t, false, func(c *Config) { c.ReplayWindow = 10 * time.Minute })
	now := time.Now()
	if err := callAt(t, m, "fresh", now, now); err != nil {
		t.Fatalf("a request of now: %v", err)
	}
	if err := callAt(t, m, "skewed", now.Add(30*time.Second), now.Add(30*time.Second)); err != nil {
		t.Fatalf("a request 30 s ahead (clock skew): %v", err)
	}
	for name, at := range map[string]time.Time{
		"older than the window": now.Add(-11 * time.Minute),
		"at the window's edge":  now.Add(-(10*time.Minute - envelope.MaxClockSkew) - time.Second),
		"from the future":       now.Add(5 * time.Minute),
	} {
		err := callAt(t, m, "stale-"+name, at, at)
		wantRefusal(t, err, codes.FailedPrecondition, rpcerr.ReasonStaleRequest, ComponentProvider)
		if r := m.recB.find("stale-" + name); r == nil || r.GetProviderSignature() == nil {
			t.Fatalf("%s: the refusal was not signed and recorded: %v", name, r)
		}
	}
	if n := m.be.calls.Load(); n != 2 {
		t.Fatalf("backend called %d times, want only the 2 fresh requests", n)
	}
	// A header time other than the one signed: the signature fails.
	err := callAt(t, m, "retimed", now.Add(-time.Minute), now)
	wantRefusal(t, err, codes.Unauthenticated, rpcerr.ReasonSignatureInvalid, ComponentProvider)
	if n := m.be.calls.Load(); n != 2 {
		t.Fatalf("backend called %d times for a request whose time was changed", n)
	}

	// No request time at all: refused before anything is signed.
	cs, err := m.dialAs(t, m.c).NewStream(as(ctxT(t), bank, registry, envelope.HeaderMessageID, "untimed"),
		fullDuplex, "/"+testService+"/UnaryCall", grpc.ForceCodecV2(forward.Codec{}))
	if err != nil {
		t.Fatal(err)
	}
	_ = cs.CloseSend()
	err = cs.RecvMsg(&forward.Frame{})
	wantRefusal(t, err, codes.InvalidArgument, rpcerr.ReasonInvalidArgument, ComponentProvider)
}
