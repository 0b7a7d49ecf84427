package node_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/sildmesh/sild/ledger"
	"github.com/sildmesh/sild/node"
)

// TestBodiesKeptInLedger: a subsystem's `body` setting decides what its
// node's ledger keeps of each exchange (encrypted at rest): consumer A keeps
// licensing's exchanges in full (the request and answer as they crossed),
// provider B the business registry's metadata only.
func TestBodiesKeptInLedger(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	keyFile := filepath.Join(t.TempDir(), "ledger.key")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := startTwoNodes(t, ctx, nil, func(c *node.Config) {
		c.LedgerKeyFile = keyFile
		c.Subsystems[0].Body = "metadata"
		if strings.HasSuffix(c.Subsystems[0].ID, "/licensing") {
			c.Subsystems[0].Body = "full"
		}
	})
	m.grant(t, ctx)
	resp, err := m.call(t, ctx, "body-1")
	if err != nil {
		t.Fatal(err)
	}

	body := func(r *running) *ledger.Stored {
		t.Helper()
		recs, err := r.n.Ledger().ByMessageID("body-1")
		if err != nil || len(recs) != 1 {
			t.Fatalf("records: %v %v", recs, err)
		}
		return recs[0]
	}
	a := body(m.a)
	full, err := m.a.n.Ledger().Body(a.Index)
	if err != nil {
		t.Fatalf("consumer body: %v", err)
	}
	var req testpb.SimpleRequest
	var answer testpb.SimpleResponse
	if len(full.GetRequestMessages()) != 1 || proto.Unmarshal(full.GetRequestMessages()[0], &req) != nil || string(req.GetPayload().GetBody()) != "70000310" {
		t.Errorf("consumer kept request messages %q", full.GetRequestMessages())
	}
	if len(full.GetResponseMessages()) != 1 || proto.Unmarshal(full.GetResponseMessages()[0], &answer) != nil || !proto.Equal(&answer, resp) {
		t.Errorf("consumer kept response messages %q", full.GetResponseMessages())
	}
	if len(full.GetRequestHeaders()) == 0 {
		t.Error("consumer kept no request headers")
	}

	b := body(m.b)
	meta, err := m.b.n.Ledger().Body(b.Index)
	if err != nil {
		t.Fatalf("provider body: %v", err)
	}
	if len(meta.GetRequestHeaders()) == 0 || len(meta.GetRequestMessages())+len(meta.GetResponseMessages()) != 0 {
		t.Errorf("provider (metadata) kept %v", meta)
	}
	found := false
	for _, h := range meta.GetRequestHeaders() {
		found = found || (h.GetKey() == "sild-purpose" && string(h.GetValue()) == "licence-check")
	}
	if !found {
		t.Errorf("provider request headers lack sild-purpose: %v", meta.GetRequestHeaders())
	}

	// Large streams: kept whole up to 16 MiB of messages per exchange, then
	// cut after the last message that fits, and marked truncated.
	client := testpb.NewTestServiceClient(dial(t, m.a.n.ConsumerAddr()))
	for _, tc := range []struct {
		id        string
		size      int // of the request, echoed in each answer
		answers   int
		kept      int // messages kept, the request included
		truncated bool
	}{{"body-big", 3 << 20, 3, 4, false}, {"body-huge", 3 << 20, 5, 5, true}} {
		md := metadata.Pairs("sild-client", m.licensing.String(), "sild-target", m.bizreg.String(), "sild-message-id", tc.id)
		s, err := client.StreamingOutputCall(metadata.NewOutgoingContext(ctx, md), &testpb.StreamingOutputCallRequest{
			Payload:            &testpb.Payload{Body: bytes.Repeat([]byte{'p'}, tc.size)},
			ResponseParameters: slices.Repeat([]*testpb.ResponseParameters{{}}, tc.answers),
		})
		if err != nil {
			t.Fatal(err)
		}
		for {
			if _, err := s.Recv(); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", tc.id, err)
			}
		}
		recs, err := m.a.n.Ledger().ByMessageID(tc.id)
		if err != nil || len(recs) != 1 {
			t.Fatalf("%s records: %v %v", tc.id, recs, err)
		}
		got, err := m.a.n.Ledger().Body(recs[0].Index)
		if err != nil {
			t.Fatalf("%s body: %v", tc.id, err)
		}
		n := len(got.GetRequestMessages()) + len(got.GetResponseMessages())
		if n != tc.kept || got.GetTruncated() != tc.truncated || len(got.GetRequestMessages()) != 1 || len(got.GetRequestMessages()[0]) < tc.size {
			t.Errorf("%s: kept %d messages (want %d), truncated %v", tc.id, n, tc.kept, got.GetTruncated())
		}
	}
}
