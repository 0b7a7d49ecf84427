package node_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sildmesh/sild/node"
	"github.com/sildmesh/sild/registry/registrytest"
)

// TestMaxMessageSize: the nodes' max_message_size, below or above the
// 16 MiB default, bounds what a member system may send: a request above it
// is refused with RESOURCE_EXHAUSTED without reaching the provider's
// backend, one below it goes through both nodes and back.
func TestMaxMessageSize(t *testing.T) {
	t.Run("5MiB", func(t *testing.T) { testMaxMessageSize(t, 5<<20) })
	t.Run("20MiB", func(t *testing.T) { testMaxMessageSize(t, 20<<20) })
}

func testMaxMessageSize(t *testing.T, limit int) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	m := startTwoNodes(t, ctx, nil, func(c *node.Config) { c.MaxMessageSize = limit })
	m.grant(t, ctx)
	registrytest.WaitFor(t, 10*time.Second, "grant in effect", func() bool { _, err := m.call(t, ctx, ""); return err == nil })
	before := m.backendCalls.Load()

	conn, err := grpc.NewClient(m.a.n.ConsumerAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	client := testpb.NewTestServiceClient(conn)
	call := func(size int) (*testpb.SimpleResponse, error) {
		md := metadata.Pairs("sild-client", m.licensing.String(), "sild-target", m.bizreg.String())
		return client.UnaryCall(metadata.NewOutgoingContext(ctx, md),
			&testpb.SimpleRequest{Payload: &testpb.Payload{Body: bytes.Repeat([]byte{'x'}, size)}})
	}

	// Above the limit: refused by A, nothing reaches the backend.
	_, err = call(limit + 256<<10)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("request above max_message_size: %v, want ResourceExhausted", err)
	}
	if n := m.backendCalls.Load() - before; n != 0 {
		t.Fatalf("backend called %d times for a request above the limit", n)
	}
	// Below it (above gRPC's 4 MiB default, or the node's 16 MiB one):
	// through both nodes and back.
	size := limit - 256<<10
	resp, err := call(size)
	if err != nil {
		t.Fatalf("request below max_message_size: %v", err)
	}
	if len(resp.GetPayload().GetBody()) != size {
		t.Fatalf("answer of %d bytes, want %d", len(resp.GetPayload().GetBody()), size)
	}
	if n := m.backendCalls.Load() - before; n != 1 {
		t.Fatalf("backend called %d times, want 1", n)
	}
}
