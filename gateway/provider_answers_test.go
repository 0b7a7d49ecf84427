package gateway_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/forward"
)

// TestProviderRefusalsToOtherOrganisations: what the REST provider answers
// goes to a consumer of another organisation, so each of its refusals is a
// gRPC status with a sild reason and words of its own: no text of the gRPC
// library's, the protobuf library's or the backend's.
func TestProviderRefusalsToOtherOrganisations(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if strings.Contains(string(body), "long") {
			// One NDJSON line longer than the answer limit allows.
			io.WriteString(w, `{"text":"`+strings.Repeat("x", 5<<20)+`"}`+"\n")
			return
		}
		io.WriteString(w, `{"text":"ok"}`+"\n")
	}))
	t.Cleanup(hs.Close)
	conn := startProvider(t, hs.URL)
	call := func(method string, msg []byte) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cs, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, "/test.v1.Echo/"+method, grpc.ForceCodecV2(forward.Codec{}))
		if err != nil {
			t.Fatal(err)
		}
		if err := cs.SendMsg(&forward.Frame{Data: mem.BufferSlice{mem.SliceBuffer(msg)}}); err != nil {
			t.Fatal(err)
		}
		cs.CloseSend()
		for {
			if err := cs.RecvMsg(&forward.Frame{}); err != nil {
				return err
			}
		}
	}
	for _, tc := range []struct {
		name, method string
		msg          []byte
		code         codes.Code
		reason       string
	}{
		// Field 1 (text) as a length-delimited value running past the end.
		{"request not protobuf", "Echo", []byte{0x0a, 0x7f, 'h'}, codes.InvalidArgument, rpcerr.ReasonInvalidArgument},
		{"answer line over the limit", "Repeat", []byte{0x0a, 0x04, 'l', 'o', 'n', 'g', 0x10, 0x01}, codes.ResourceExhausted, "BODY_TOO_LARGE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := call(tc.method, tc.msg)
			st := status.Convert(err)
			info := rpcerr.Info(err)
			if st.Code() != tc.code || info == nil || info.GetReason() != tc.reason {
				t.Fatalf("%v, want %v with reason %s", err, tc.code, tc.reason)
			}
			for _, s := range []string{"grpc:", "proto:", "proto:\u00a0", "unmarshal", "bufio", "token too long"} {
				if strings.Contains(st.Message(), s) {
					t.Errorf("message %q has internal text %q", st.Message(), s)
				}
			}
		})
	}
}
