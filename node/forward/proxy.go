package forward

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// DefaultMaxMessageSize is the largest message forwarded unless configured.
const DefaultMaxMessageSize = 16 << 20

// Hooks observe every frame of one call. A non-nil error refuses the frame:
// the call ends with that error (a status error is passed through as is)
// and the frame is not forwarded.
type Hooks interface {
	// Request is called for each client->upstream frame before it is sent.
	Request(f *Frame) error
	// Response is called for each upstream->client frame before it is sent.
	// Request and Response may run concurrently with each other.
	Response(f *Frame) error
	// Done is called once with the final error of the call (nil on OK)
	// before the final status is sent; it may replace that error.
	Done(err error) error
}

// Route is where a Director sends one call.
type Route struct {
	// Ctx is the outgoing context (metadata to send upstream). It must be
	// derived from the incoming context so deadline and cancellation follow.
	Ctx   context.Context
	Conn  grpc.ClientConnInterface
	Hooks Hooks // optional
}

// Director picks the upstream for a call; its error is returned to the
// client as is, before anything is sent upstream.
type Director func(ctx context.Context, method string) (Route, error)

// Proxy forwards any method to the upstream chosen by a Director.
type Proxy struct {
	Director       Director
	MaxMessageSize int // 0 means DefaultMaxMessageSize
}

func (p *Proxy) maxSize() int {
	if p.MaxMessageSize > 0 {
		return p.MaxMessageSize
	}
	return DefaultMaxMessageSize
}

// ServerOptions returns the options that make a grpc.Server forward every
// method through p.
func (p *Proxy) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.UnknownServiceHandler(p.Handle),
		grpc.ForceServerCodecV2(Codec{}),
		grpc.MaxRecvMsgSize(p.maxSize()),
		grpc.MaxSendMsgSize(p.maxSize()),
	}
}

// CopyIncoming returns ctx with the incoming metadata copied to outgoing
// metadata, dropping transport pseudo-headers.
func CopyIncoming(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	out := metadata.MD{}
	for k, v := range md {
		if k == "" || k[0] == ':' || k == "content-type" || k == "user-agent" || k == "te" {
			continue
		}
		out[k] = append([]string(nil), v...)
	}
	return metadata.NewOutgoingContext(ctx, out)
}

type noHooks struct{}

func (noHooks) Request(*Frame) error  { return nil }
func (noHooks) Response(*Frame) error { return nil }
func (noHooks) Done(err error) error  { return err }

var fullDuplex = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// Handle is a grpc.StreamHandler proxying the call on ss upstream.
func (p *Proxy) Handle(_ any, ss grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "no method")
	}
	route, err := p.Director(ss.Context(), method)
	if err != nil {
		return err
	}
	h := route.Hooks
	if h == nil {
		h = noHooks{}
	}
	return h.Done(p.proxy(ss, method, route, h))
}

func (p *Proxy) proxy(ss grpc.ServerStream, method string, route Route, h Hooks) error {
	ctx, cancel := context.WithCancel(route.Ctx)
	defer cancel()
	cs, err := route.Conn.NewStream(ctx, fullDuplex, method,
		grpc.ForceCodecV2(Codec{}),
		grpc.MaxCallRecvMsgSize(p.maxSize()),
		grpc.MaxCallSendMsgSize(p.maxSize()))
	if err != nil {
		return err
	}
	upErr := make(chan error, 1)
	downErr := make(chan error, 1)
	go func() { upErr <- pumpUp(ss, cs, h) }()
	go func() { downErr <- pumpDown(cs, ss, h) }()
	for {
		select {
		case e := <-upErr:
			upErr = nil // the client side is done; wait for upstream
			var le *localError
			if errors.As(e, &le) {
				cancel()
				<-downErr
				return le.err
			}
		case e := <-downErr:
			var le *localError
			if errors.As(e, &le) {
				return le.err
			}
			ss.SetTrailer(cs.Trailer())
			return e
		}
	}
}

// localError is a refusal or failure on our side (hook, client stream), as
// opposed to a status coming from upstream.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }

var errStreamDone = errors.New("stream done")

// pumpUp copies client frames upstream and half-closes at client EOF.
func pumpUp(ss grpc.ServerStream, cs grpc.ClientStream, h Hooks) error {
	for {
		f := &Frame{}
		if err := ss.RecvMsg(f); err != nil {
			if err == io.EOF {
				if err := cs.CloseSend(); err != nil {
					return errStreamDone
				}
				return nil
			}
			return &localError{err}
		}
		if err := h.Request(f); err != nil {
			f.Free()
			return &localError{err}
		}
		if err := cs.SendMsg(f); err != nil {
			f.Free()
			// The real reason surfaces on the response side.
			return errStreamDone
		}
	}
}

// pumpDown copies the upstream headers and frames back to the client.
func pumpDown(cs grpc.ClientStream, ss grpc.ServerStream, h Hooks) error {
	md, err := cs.Header()
	if err != nil {
		return err
	}
	if md != nil {
		if err := ss.SendHeader(md); err != nil {
			return &localError{err}
		}
	}
	for {
		f := &Frame{}
		if err := cs.RecvMsg(f); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		if err := h.Response(f); err != nil {
			f.Free()
			return &localError{err}
		}
		if err := ss.SendMsg(f); err != nil {
			f.Free()
			return &localError{err}
		}
	}
}
