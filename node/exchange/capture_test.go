package exchange

import (
	"bytes"
	"testing"

	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/node/envelope"
)

// header returns the values of key in hs.
func header(hs []*ledgerv1.Header, key string) []string {
	var out []string
	for _, h := range hs {
		if h.GetKey() == key {
			out = append(out, string(h.GetValue()))
		}
	}
	return out
}

// TestCapturedBodies: each side passes to its Recorder what its subsystem's
// body setting asks for. The consumer keeps licensing's exchanges in full
// (headers and every message, byte for byte as they crossed the node); the
// provider keeps registry's headers only; a subsystem without a setting
// passes nothing.
func TestCapturedBodies(t *testing.T) {
	modes := map[ident.Subsystem]Capture{licensing: CaptureMessages, registry: CaptureHeaders}
	m := newMeshWith(t, false, func(c *Config) {
		c.Capture = func(sub ident.Subsystem) Capture { return modes[sub] }
	})
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("kept in the ledger")}}
	resp, err := m.client.UnaryCall(as(ctxT(t), licensing, registry, envelope.HeaderMessageID, "body-1", "x-echo", "e1"), req)
	if err != nil {
		t.Fatal(err)
	}

	c := m.recA.body("body-1")
	if c == nil {
		t.Fatal("consumer passed no body")
	}
	if got := header(c.GetRequestHeaders(), "x-echo"); len(got) != 1 || got[0] != "e1" {
		t.Errorf("consumer request headers: %v", c.GetRequestHeaders())
	}
	if got := header(c.GetResponseHeaders(), "x-hdr"); len(got) != 1 || got[0] != "e1" {
		t.Errorf("consumer response headers: %v", c.GetResponseHeaders())
	}
	if got := header(c.GetResponseTrailers(), "x-trl"); len(got) != 1 || got[0] != "e1" {
		t.Errorf("consumer response trailers: %v", c.GetResponseTrailers())
	}
	var gotReq testpb.SimpleRequest
	var gotResp testpb.SimpleResponse
	if len(c.GetRequestMessages()) != 1 || proto.Unmarshal(c.GetRequestMessages()[0], &gotReq) != nil || !proto.Equal(&gotReq, req) {
		t.Errorf("consumer request messages: %q", c.GetRequestMessages())
	}
	if len(c.GetResponseMessages()) != 1 || proto.Unmarshal(c.GetResponseMessages()[0], &gotResp) != nil || !proto.Equal(&gotResp, resp) {
		t.Errorf("consumer response messages: %q", c.GetResponseMessages())
	}
	if c.GetTruncated() {
		t.Error("consumer body truncated")
	}

	p := m.recB.body("body-1")
	if p == nil {
		t.Fatal("provider passed no body")
	}
	if got := header(p.GetRequestHeaders(), "x-echo"); len(got) != 1 || got[0] != "e1" {
		t.Errorf("provider request headers: %v", p.GetRequestHeaders())
	}
	if got := header(p.GetResponseTrailers(), "x-trl"); len(got) != 1 || got[0] != "e1" {
		t.Errorf("provider response trailers: %v", p.GetResponseTrailers())
	}
	if len(p.GetRequestMessages())+len(p.GetResponseMessages()) != 0 {
		t.Errorf("provider kept messages with headers only: %v", p)
	}

	// archive has no setting: nothing passed on its side.
	if _, err := m.client.UnaryCall(as(ctxT(t), archive, registry, envelope.HeaderMessageID, "body-2"), req); err == nil {
		t.Fatal("archive has no access right, want a refusal")
	}
	if b := m.recA.body("body-2"); b != nil {
		t.Errorf("consumer passed a body for a subsystem without a setting: %v", b)
	}
}

// TestCaptureTruncates: past Config.MaxCapture bytes of messages, the body
// keeps the messages before the limit, in order, and says it is truncated.
func TestCaptureTruncates(t *testing.T) {
	m := newMeshWith(t, false, func(c *Config) {
		c.Capture = func(ident.Subsystem) Capture { return CaptureMessages }
		c.MaxCapture = 2500
	})
	s, err := m.client.StreamingOutputCall(as(ctxT(t), licensing, registry, envelope.HeaderMessageID, "body-3"),
		&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 1000}, {Size: 1000}, {Size: 1000}, {Size: 10}}})
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := s.Recv(); err != nil {
			break
		}
	}
	for side, rec := range map[string]*memRecorder{"consumer": m.recA, "provider": m.recB} {
		b := rec.body("body-3")
		if b == nil {
			t.Fatalf("%s passed no body", side)
		}
		// The request (a few bytes) and the first two answers fit; the
		// third does not, and the small fourth is left out with it.
		if len(b.GetRequestMessages()) != 1 || len(b.GetResponseMessages()) != 2 || !b.GetTruncated() {
			t.Errorf("%s: %d request and %d response messages, truncated %v", side, len(b.GetRequestMessages()), len(b.GetResponseMessages()), b.GetTruncated())
		}
		var r testpb.StreamingOutputCallResponse
		if err := proto.Unmarshal(b.GetResponseMessages()[1], &r); err != nil || !bytes.Equal(r.GetPayload().GetBody(), bytes.Repeat([]byte{'x'}, 1000)) {
			t.Errorf("%s: second answer %v", side, err)
		}
	}
}
