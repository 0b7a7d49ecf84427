package forward_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sildmesh/sild/node/forward"
)

// backend is a real grpc TestService used as the upstream.
type backend struct {
	testpb.UnimplementedTestServiceServer
	calls     chan struct{} // receives one value per call, dropped when full
	cancelled chan struct{}
}

func echoMD(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("x-echo"); len(v) > 0 {
		_ = grpc.SetHeader(ctx, metadata.Pairs("x-hdr", v[0]))
		grpc.SetTrailer(ctx, metadata.Pairs("x-trl", v[0]))
	}
}

func (b *backend) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	b.called()
	echoMD(ctx)
	if s := req.GetResponseStatus(); s != nil {
		return nil, status.Error(codes.Code(s.GetCode()), s.GetMessage())
	}
	if string(req.GetPayload().GetBody()) == "block" {
		<-ctx.Done()
		close(b.cancelled)
		return nil, ctx.Err()
	}
	if dl, ok := ctx.Deadline(); ok {
		return &testpb.SimpleResponse{Username: dl.UTC().Format(time.RFC3339Nano), Payload: req.GetPayload()}, nil
	}
	return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
}

func (b *backend) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, s testpb.TestService_StreamingOutputCallServer) error {
	b.called()
	echoMD(s.Context())
	for _, p := range req.GetResponseParameters() {
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: bytes.Repeat([]byte{'x'}, int(p.GetSize()))}}); err != nil {
			return err
		}
	}
	if st := req.GetResponseStatus(); st != nil {
		return status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	return nil
}

func (b *backend) StreamingInputCall(s testpb.TestService_StreamingInputCallServer) error {
	b.called()
	n := 0
	for {
		req, err := s.Recv()
		if err == io.EOF {
			return s.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: int32(n)})
		}
		if err != nil {
			return err
		}
		n += len(req.GetPayload().GetBody())
	}
}

func (b *backend) FullDuplexCall(s testpb.TestService_FullDuplexCallServer) error {
	b.called()
	echoMD(s.Context())
	for {
		req, err := s.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

func serve(t testing.TB, opts []grpc.ServerOption, reg func(*grpc.Server)) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(opts...)
	if reg != nil {
		reg(s)
	}
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

func dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// countHooks counts frames and can refuse a request frame by content.
type countHooks struct {
	req, resp int
	refuse    []byte
	done      chan error
}

func (h *countHooks) Request(f *forward.Frame) error {
	h.req++
	if h.refuse != nil && bytes.Contains(f.Bytes(), h.refuse) {
		return status.Error(codes.PermissionDenied, "refused by hook")
	}
	return nil
}
func (h *countHooks) Response(*forward.Frame) error { h.resp++; return nil }
func (h *countHooks) Done(err error) error          { h.done <- err; return err }

type fixture struct {
	be        *backend
	proxyConn *grpc.ClientConn
	client    testpb.TestServiceClient
	direct    testpb.TestServiceClient // straight to the backend
	hooks     chan *countHooks
}

func setup(t testing.TB, refuse []byte) *fixture {
	be := &backend{calls: make(chan struct{}, 100), cancelled: make(chan struct{})}
	beAddr := serve(t, []grpc.ServerOption{grpc.MaxRecvMsgSize(64 << 20), grpc.MaxSendMsgSize(64 << 20)}, func(s *grpc.Server) { testpb.RegisterTestServiceServer(s, be) })
	up := dial(t, beAddr)
	hooks := make(chan *countHooks, 100)
	p := &forward.Proxy{
		MaxMessageSize: 20 << 20,
		Director: func(ctx context.Context, method string) (forward.Route, error) {
			if method == "/grpc.testing.TestService/EmptyCall" {
				return forward.Route{}, status.Error(codes.NotFound, "no route")
			}
			h := &countHooks{refuse: refuse, done: make(chan error, 1)}
			select {
			case hooks <- h:
			default: // benchmarks make more calls than the tests inspect
			}
			return forward.Route{Ctx: forward.CopyIncoming(ctx), Conn: up, Hooks: h}, nil
		},
	}
	pc := dial(t, serve(t, p.ServerOptions(), nil))
	return &fixture{be: be, proxyConn: pc, client: testpb.NewTestServiceClient(pc), direct: testpb.NewTestServiceClient(up), hooks: hooks}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestUnaryMetadataTrailersDeadline(t *testing.T) {
	f := setup(t, nil)
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-echo", "v1")
	var hdr, trl metadata.MD
	resp, err := f.client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("hello")}},
		grpc.Header(&hdr), grpc.Trailer(&trl))
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.GetPayload().GetBody()) != "hello" {
		t.Fatalf("payload %q", resp.GetPayload().GetBody())
	}
	if got := hdr.Get("x-hdr"); len(got) != 1 || got[0] != "v1" {
		t.Fatalf("header %v", hdr)
	}
	if got := trl.Get("x-trl"); len(got) != 1 || got[0] != "v1" {
		t.Fatalf("trailer %v", trl)
	}
	dl, _ := ctx.Deadline()
	got, err := time.Parse(time.RFC3339Nano, resp.GetUsername())
	if err != nil {
		t.Fatalf("backend saw no deadline: %v", err)
	}
	if got.After(dl.Add(time.Second)) {
		t.Fatalf("backend deadline %v later than client's %v", got, dl)
	}
	h := <-f.hooks
	if err := <-h.done; err != nil || h.req != 1 || h.resp != 1 {
		t.Fatalf("hooks req=%d resp=%d err=%v", h.req, h.resp, err)
	}
}

func TestUnaryErrorStatus(t *testing.T) {
	f := setup(t, nil)
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-echo", "e")
	var trl metadata.MD
	_, err := f.client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.FailedPrecondition), Message: "nope"}}, grpc.Trailer(&trl))
	if st := status.Convert(err); st.Code() != codes.FailedPrecondition || st.Message() != "nope" {
		t.Fatalf("got %v", err)
	}
	if got := trl.Get("x-trl"); len(got) != 1 || got[0] != "e" {
		t.Fatalf("trailer %v", trl)
	}
}

func TestDirectorRefusalNeverReachesBackend(t *testing.T) {
	f := setup(t, nil)
	_, err := f.client.EmptyCall(ctxT(t), &testpb.Empty{})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("got %v", err)
	}
	if len(f.be.calls) != 0 {
		t.Fatal("backend was called")
	}
}

func TestHookRefusal(t *testing.T) {
	f := setup(t, []byte("forbidden"))
	_, err := f.client.UnaryCall(ctxT(t), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("forbidden")}})
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || st.Message() != "refused by hook" {
		t.Fatalf("got %v", err)
	}
}

func TestDeadlineExceeded(t *testing.T) {
	f := setup(t, nil)
	ctx, cancel := context.WithTimeout(ctxT(t), 200*time.Millisecond)
	defer cancel()
	_, err := f.client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("block")}})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v", err)
	}
	select {
	case <-f.be.cancelled:
	case <-time.After(30 * time.Second):
		t.Fatal("backend context never ended")
	}
}

func TestCancellation(t *testing.T) {
	f := setup(t, nil)
	ctx, cancel := context.WithCancel(ctxT(t))
	errc := make(chan error, 1)
	go func() {
		_, err := f.client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("block")}})
		errc <- err
	}()
	select {
	case <-f.be.calls:
	case <-time.After(30 * time.Second):
		t.Fatal("backend never called")
	}
	cancel()
	if err := <-errc; status.Code(err) != codes.Canceled {
		t.Fatalf("got %v", err)
	}
	select {
	case <-f.be.cancelled:
	case <-time.After(30 * time.Second):
		t.Fatal("cancellation did not reach backend")
	}
}

func TestServerStreaming(t *testing.T) {
	f := setup(t, nil)
	req := &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{Size: 1}, {Size: 1000}, {Size: 5}},
		ResponseStatus:     &testpb.EchoStatus{Code: int32(codes.Aborted), Message: "end"},
	}
	s, err := f.client.StreamingOutputCall(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for {
		r, err := s.Recv()
		if err != nil {
			if st := status.Convert(err); st.Code() != codes.Aborted || st.Message() != "end" {
				t.Fatalf("final status %v", err)
			}
			break
		}
		sizes = append(sizes, len(r.GetPayload().GetBody()))
	}
	if len(sizes) != 3 || sizes[1] != 1000 {
		t.Fatalf("sizes %v", sizes)
	}
}

func TestClientStreaming(t *testing.T) {
	f := setup(t, nil)
	s, err := f.client.StreamingInputCall(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if err := s.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, 100)}}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := s.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	if r.GetAggregatedPayloadSize() != 1000 {
		t.Fatalf("size %d", r.GetAggregatedPayloadSize())
	}
	h := <-f.hooks
	if err := <-h.done; err != nil || h.req != 10 || h.resp != 1 {
		t.Fatalf("hooks req=%d resp=%d err=%v", h.req, h.resp, err)
	}
}

func TestBidiStreamingLarge(t *testing.T) {
	f := setup(t, nil)
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-echo", "bidi")
	s, err := f.client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 10, 4 << 20, 15 << 20} {
		body := bytes.Repeat([]byte{byte(n)}, n)
		if err := s.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
			t.Fatal(err)
		}
		r, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(r.GetPayload().GetBody(), body) {
			t.Fatalf("echo mismatch at %d", n)
		}
	}
	if hdr, err := s.Header(); err != nil || len(hdr.Get("x-hdr")) != 1 {
		t.Fatalf("header %v %v", hdr, err)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("want EOF, got %v", err)
	}
	if got := s.Trailer().Get("x-trl"); len(got) != 1 || got[0] != "bidi" {
		t.Fatalf("trailer %v", s.Trailer())
	}
}

func TestMessageTooLarge(t *testing.T) {
	f := setup(t, nil)
	_, err := f.client.UnaryCall(ctxT(t), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 21<<20)}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("got %v", err)
	}
	if len(f.be.calls) != 0 {
		t.Fatal("backend was called")
	}
}

func (b *backend) called() {
	select {
	case b.calls <- struct{}{}:
	default:
	}
}
