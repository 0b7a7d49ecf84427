package exchange

import (
	"bytes"
	"io"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/envelope"
)

// rawUnary calls UnaryCall through node A on a stream that would show any
// message the node released before the status, and returns the messages
// and the status.
func rawUnary(t *testing.T, m *mesh, id string, req *testpb.SimpleRequest) ([]*testpb.SimpleResponse, error) {
	t.Helper()
	ctx := as(ctxT(t), licensing, registry, envelope.HeaderMessageID, id)
	cs, err := m.aConn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/grpc.testing.TestService/UnaryCall")
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.SendMsg(req); err != nil {
		t.Fatal(err)
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var got []*testpb.SimpleResponse
	for {
		r := &testpb.SimpleResponse{}
		if err := cs.RecvMsg(r); err == io.EOF {
			return got, nil
		} else if err != nil {
			return got, err
		}
		got = append(got, r)
	}
}

// A unary answer whose seal does not verify never reaches the member
// system, not even before the refusal.
func TestForgedUnaryAnswerNotReleased(t *testing.T) {
	m := newMesh(t)
	resp, err := proto.Marshal(&testpb.SimpleResponse{Payload: &testpb.Payload{Body: []byte("FORGED")}})
	if err != nil {
		t.Fatal(err)
	}
	var answer atomic.Pointer[fakeAnswer]
	answer.Store(&fakeAnswer{frames: [][]byte{append([]byte{tagData}, resp...)},
		seal: func([]byte) []byte { return []byte("not a seal") }})
	m.withFakeProvider(t, func() fakeAnswer { return *answer.Load() })
	got, err := rawUnary(t, m, "forged-1", &testpb.SimpleRequest{})
	if len(got) != 0 {
		t.Fatalf("the member received %d messages of an answer that failed verification", len(got))
	}
	wantRefusal(t, err, codes.Unauthenticated, rpcerr.ReasonSignatureInvalid, ComponentConsumer)
}

// A unary answer is released only once both ledger records are durable:
// if either node cannot record, the member gets LEDGER_UNAVAILABLE and no
// message.
func TestUnaryAnswerOnlyAfterBothRecords(t *testing.T) {
	for _, side := range []string{ComponentProvider, ComponentConsumer} {
		t.Run(side, func(t *testing.T) {
			m := newMesh(t)
			rec := m.recA
			if side == ComponentProvider {
				rec = m.recB
			}
			rec.fail.Store(true)
			got, err := rawUnary(t, m, "durable-"+side, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("secret answer")}})
			if len(got) != 0 {
				t.Fatalf("the member received the answer although the %s could not record it", side)
			}
			wantRefusal(t, err, codes.Unavailable, rpcerr.ReasonLedgerUnavailable, side)
			rec.fail.Store(false)
			got, err = rawUnary(t, m, "durable-ok-"+side, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("answer")}})
			if err != nil || len(got) != 1 || string(got[0].GetPayload().GetBody()) != "answer" {
				t.Fatalf("once recording works: %d messages, %v", len(got), err)
			}
		})
	}
}

// Messages of exactly the configured limit pass both ways; one byte more
// is refused.
func TestMessageAtTheLimit(t *testing.T) {
	const limit = 4 << 20
	m := newMeshWith(t, false, func(c *Config) { c.MaxMessageSize = limit })
	body := make([]byte, limit)
	for proto.Size(&testpb.SimpleResponse{Payload: &testpb.Payload{Body: body}}) > limit {
		body = body[:len(body)-1]
	}
	body[0] = 'x'
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}}
	if n := proto.Size(req); n != limit {
		t.Fatalf("request of %d bytes, want %d", n, limit)
	}
	// No deadline: the test backend would add it to the answer.
	resp, err := m.client.UnaryCall(as(t.Context(), licensing, registry), req)
	if err != nil {
		t.Fatalf("request and answer of exactly %d bytes: %v", limit, err)
	}
	if !bytes.Equal(resp.GetPayload().GetBody(), body) {
		t.Fatal("answer changed")
	}
	req.Payload.Body = append(body, 'y')
	if _, err := m.client.UnaryCall(as(ctxT(t), licensing, registry), req); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("one byte over the limit: %v", err)
	}
}
