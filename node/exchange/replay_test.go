package exchange

import (
	"testing"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/envelope"
)

// A client that used up its message ids within the replay window is
// refused, with its own reason; another client of the same provider is not.
func TestReplayBoundIsPerClient(t *testing.T) {
	m := newMeshWith(t, false, func(c *Config) { c.ReplayMax = 2 })
	frame := [][]byte{unaryFrame(t, "x")}
	for _, id := range []string{"flood-1", "flood-2"} {
		if err := m.rawCall(t, m.c, bank, id, frame, sealWith(t, m.c, nil)); err != nil {
			t.Fatal(id, err)
		}
	}
	err := m.rawCall(t, m.c, bank, "flood-3", frame, sealWith(t, m.c, nil))
	wantRefusal(t, err, codes.ResourceExhausted, envelope.ReasonReplayWindowFull, ComponentProvider)
	err = m.rawCall(t, m.c, bank, "flood-1", frame, sealWith(t, m.c, nil))
	wantRefusal(t, err, codes.AlreadyExists, rpcerr.ReasonReplayed, ComponentProvider)
	if _, err := m.client.UnaryCall(as(ctxT(t), licensing, registry, envelope.HeaderMessageID, "fresh-licensing"), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("another client after bank used its ids: %v", err)
	}
}
