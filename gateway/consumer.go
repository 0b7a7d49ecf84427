package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/peerstatus"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/envelope"
	"github.com/sildmesh/sild/node/topology"
)

// ConsumerPath is the route of the legacy REST consumer: the provider
// subsystem, the gRPC service and the method.
const ConsumerPath = "/r1/{instance}/{class}/{member}/{subsystem}/{service}/{method}"

// HTTP headers of the legacy REST consumer (the sild-* gRPC metadata).
const (
	HeaderClient    = "Sild-Client"
	HeaderUserID    = "Sild-User-Id"
	HeaderPurpose   = "Sild-Purpose"
	HeaderMessageID = "Sild-Message-Id"
)

// Reasons of the legacy REST consumer's own refusals.
const (
	ReasonUnknownService     = "UNKNOWN_SERVICE"
	ReasonUnknownMethod      = "UNKNOWN_METHOD"
	ReasonUnsupportedMethod  = "UNSUPPORTED_METHOD"
	ReasonUnsupportedMedia   = "UNSUPPORTED_MEDIA_TYPE"
	ReasonDescriptorsInvalid = "DESCRIPTORS_INVALID"
)

// DefaultMaxRequest bounds a REST consumer's request body.
const DefaultMaxRequest = 4 << 20

// ConsumerConfig configures the legacy REST consumer.
type ConsumerConfig struct {
	// Conn reaches the node's own consumer listener, so that every REST call
	// is an ordinary exchange (checks, signatures, ledger). Required.
	Conn grpc.ClientConnInterface
	// Topology returns the node's current global configuration, nil before
	// the first; its catalogue holds the providers' descriptors. Required.
	Topology func() *topology.Topology
	// MaxBody bounds a request body; 0 means DefaultMaxRequest.
	MaxBody int64
	// MayCallAs, if set, reports whether the REST caller r (e.g. by its TLS
	// client certificate) may speak for client; a caller that may not is
	// refused with PERMISSION_DENIED / UNKNOWN_CLIENT before any call.
	MayCallAs func(r *http.Request, client ident.Subsystem) bool
	// Logger; nil discards.
	Logger *slog.Logger
}

// Validate names the first missing or wrong field.
func (c ConsumerConfig) Validate() error {
	switch {
	case c.Conn == nil:
		return errors.New("missing Conn")
	case c.Topology == nil:
		return errors.New("missing Topology")
	case c.MaxBody < 0:
		return errors.New("negative MaxBody")
	}
	return nil
}

// Consumer is the legacy REST consumer, an http.Handler for ConsumerPath:
// POST a JSON body, with header Sild-Client (and optionally Sild-User-Id,
// Sild-Purpose, Sild-Message-Id), to
// /r1/{instance}/{class}/{member}/{subsystem}/{grpc service}/{method}. The
// body becomes the method's request message by the provider's published
// descriptors (protojson, well-known types included; unknown fields are
// refused), the call goes to the node's consumer listener as a gRPC call,
// and the answer comes back as JSON. A server-streaming method answers
// newline-delimited JSON (application/x-ndjson), one {"result": message}
// per line; an error after the first message ends the stream with a line
// {"error": google.rpc.Status}. Client- and bidi-streaming methods are
// refused. The message id of the exchange is in the answer's
// Sild-Message-Id header.
type Consumer struct {
	cfg ConsumerConfig
	mux *runtime.ServeMux
	cat catalog
}

// NewConsumer returns the legacy REST consumer of cfg.
func NewConsumer(cfg ConsumerConfig) (*Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("gateway consumer config: %w", err)
	}
	if cfg.MaxBody == 0 {
		cfg.MaxBody = DefaultMaxRequest
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Consumer{cfg: cfg}
	c.mux = runtime.NewServeMux(
		runtime.WithErrorHandler(errorHandler),
		runtime.WithRoutingErrorHandler(routingErrorHandler),
	)
	if err := c.mux.HandlePath(http.MethodPost, ConsumerPath, c.handle); err != nil {
		return nil, fmt.Errorf("gateway consumer route: %w", err)
	}
	return c, nil
}

// ServeHTTP serves one REST call.
func (c *Consumer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength > c.cfg.MaxBody {
		writeError(c.mux, w, r, tooLarge(c.cfg.MaxBody))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, c.cfg.MaxBody)
	c.mux.ServeHTTP(w, r)
}

func refuse(code codes.Code, reason, msg string) error {
	return rpcerr.New(code, reason, Component, msg)
}

// request is a parsed REST consumer call.
type request struct {
	target ident.Subsystem
	si     *serviceInfo
	method string
	md     metadata.MD
	msgID  string
	body   []byte
}

// parse checks everything the gateway can check before calling.
func (c *Consumer) parse(r *http.Request, p map[string]string) (*request, error) {
	target, err := ident.ParseSubsystem(p["instance"] + "/" + p["class"] + "/" + p["member"] + "/" + p["subsystem"])
	if err != nil {
		return nil, refuse(codes.InvalidArgument, rpcerr.ReasonInvalidIdentifier, "invalid provider subsystem in path: "+err.Error())
	}
	q := &request{target: target, md: metadata.MD{}}
	clients := r.Header.Values(HeaderClient)
	switch {
	case len(clients) == 0 || clients[0] == "":
		return nil, refuse(codes.InvalidArgument, rpcerr.ReasonUnknownClient, "missing header "+HeaderClient+" (the calling subsystem, e.g. EE/GOV/70000310/licensing)")
	case len(clients) > 1:
		return nil, refuse(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, "header "+HeaderClient+" given more than once")
	}
	client, err := ident.ParseSubsystem(clients[0])
	if err != nil {
		return nil, refuse(codes.InvalidArgument, rpcerr.ReasonInvalidIdentifier, "invalid header "+HeaderClient+": "+err.Error())
	}
	if c.cfg.MayCallAs != nil && !c.cfg.MayCallAs(r, client) {
		return nil, refuse(codes.PermissionDenied, rpcerr.ReasonUnknownClient, "caller may not speak for the client subsystem")
	}
	q.md.Set(envelope.HeaderClient, client.String())
	q.md.Set(envelope.HeaderTarget, target.String())
	for h, key := range map[string]string{HeaderUserID: envelope.HeaderUserID, HeaderPurpose: envelope.HeaderPurpose, HeaderMessageID: envelope.HeaderMessageID} {
		switch v := r.Header.Values(h); len(v) {
		case 0:
		case 1:
			q.md.Set(key, v[0])
		default:
			return nil, refuse(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, "header "+h+" given more than once")
		}
	}
	if ids := q.md.Get(envelope.HeaderMessageID); len(ids) == 1 {
		q.msgID = ids[0]
	} else {
		q.msgID = envelope.NewMessageID()
		q.md.Set(envelope.HeaderMessageID, q.msgID)
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !jsonMedia(ct) {
		return nil, unsupportedMedia(ct)
	}

	top := c.cfg.Topology()
	if top == nil {
		return nil, refuse(codes.Unavailable, rpcerr.ReasonUnavailable, "no global configuration yet")
	}
	svc := ident.Service{Subsystem: target, Name: p["service"]}
	si, err := c.cat.lookup(top, svc)
	switch {
	case errors.Is(err, errUnknownService):
		return nil, refuse(codes.NotFound, ReasonUnknownService, "service "+svc.String()+" is not in the catalogue")
	case !si.enabled:
		return nil, refuse(codes.NotFound, rpcerr.ReasonUnknownTarget, "service "+svc.String()+" is disabled")
	case err != nil:
		c.cfg.Logger.Warn("published descriptors unusable", "service", svc.String(), "err", err)
		return nil, &runtime.HTTPStatusError{HTTPStatus: http.StatusBadGateway,
			Err: refuse(codes.FailedPrecondition, ReasonDescriptorsInvalid, "the descriptors published for "+svc.String()+" are unusable")}
	}
	q.si, q.method = si, p["method"]
	m := si.svc.Methods().ByName(protoreflectName(q.method))
	if m == nil {
		return nil, refuse(codes.NotFound, ReasonUnknownMethod, "service "+svc.Name+" has no method "+q.method)
	}
	if m.IsStreamingClient() {
		return nil, refuse(codes.Unimplemented, ReasonUnsupportedMethod, "method "+q.method+" is client-streaming: call it over gRPC")
	}
	if q.body, err = io.ReadAll(r.Body); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, tooLarge(c.cfg.MaxBody)
		}
		return nil, refuse(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, "reading request body failed")
	}
	return q, nil
}

func (c *Consumer) handle(w http.ResponseWriter, r *http.Request, p map[string]string) {
	q, err := c.parse(r, p)
	if err != nil {
		writeError(c.mux, w, r, err)
		return
	}
	m := q.si.svc.Methods().ByName(protoreflectName(q.method))
	in := dynamicpb.NewMessage(m.Input())
	if len(bytes.TrimSpace(q.body)) > 0 {
		if err := (protojson.UnmarshalOptions{Resolver: q.si.types}).Unmarshal(q.body, in); err != nil {
			writeError(c.mux, w, r, refuse(codes.InvalidArgument, rpcerr.ReasonInvalidArgument,
				cleanDecodeMessage(err.Error())+" (request type "+string(m.Input().FullName())+")"))
			return
		}
	}
	w.Header().Set(HeaderMessageID, q.msgID)
	ctx, answered := peerstatus.Watch(metadata.NewOutgoingContext(r.Context(), q.md))
	path := "/" + string(q.si.svc.FullName()) + "/" + q.method
	enc := protojson.MarshalOptions{Resolver: q.si.types, EmitUnpopulated: true}
	if !m.IsStreamingServer() {
		out := dynamicpb.NewMessage(m.Output())
		if err := c.cfg.Conn.Invoke(ctx, path, in, out); err != nil {
			writeError(c.mux, w, r, fromNode(err, answered))
			return
		}
		b, err := enc.Marshal(out)
		if err != nil {
			writeError(c.mux, w, r, refuse(codes.Internal, rpcerr.ReasonInternal, "answer cannot be written as JSON"))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
		return
	}
	stream, err := c.cfg.Conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, path)
	if err != nil {
		writeError(c.mux, w, r, err)
		return
	}
	// io.EOF from SendMsg: the stream ended; its status comes from RecvMsg.
	if err := stream.SendMsg(in); err != nil && !errors.Is(err, io.EOF) {
		writeError(c.mux, w, r, err)
		return
	}
	_ = stream.CloseSend() // never fails for a client stream
	flusher, _ := w.(http.Flusher)
	started := false
	for {
		out := dynamicpb.NewMessage(m.Output())
		err := stream.RecvMsg(out)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			err = fromNode(err, answered)
			if !started {
				writeError(c.mux, w, r, err)
				return
			}
			st := status.Convert(answerError(r.Context(), err)).Proto()
			st.Message = strings.ToValidUTF8(st.Message, "\uFFFD")
			b, _ := protojson.Marshal(st)
			w.Write(append(append([]byte(`{"error":`), b...), "}\n"...))
			return
		}
		b, err := enc.Marshal(out)
		if err != nil {
			b = []byte(`{"code":13,"message":"answer cannot be written as JSON"}`)
			w.Write(append(append([]byte(`{"error":`), b...), "}\n"...))
			return
		}
		if !started {
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusOK)
			started = true
		}
		w.Write(append(append([]byte(`{"result":`), b...), "}\n"...))
		if flusher != nil {
			flusher.Flush()
		}
	}
	if !started {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
	}
}

// ServeConsumer serves the legacy REST consumer of cfg on ln (for instance
// the HTTP side of SplitListener on the node's consumer listener) until ctx
// ends. Calls go in process to srv, the node's consumer gRPC server (cfg.Conn
// is set here): they arrive there without transport credentials, so a
// server that checks callers by their TLS certificate must let those
// through and leave the check to cfg.MayCallAs (see PeerTLS).
func ServeConsumer(ctx context.Context, ln net.Listener, srv *grpc.Server, cfg ConsumerConfig) error {
	lb, err := newLoopback(srv)
	if err != nil {
		return fmt.Errorf("rest consumer: %w", err)
	}
	defer lb.Close()
	cfg.Conn = lb.conn
	c, err := NewConsumer(cfg)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: c, ReadHeaderTimeout: 10 * time.Second, ConnContext: withConn}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
		<-errc
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
			return nil
		}
		return fmt.Errorf("rest consumer: %w", err)
	}
}

// connKey is the context key of the connection a REST request came on.
type connKey struct{}

func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// PeerTLS returns the TLS state of the connection r came on, nil if it is
// not TLS. Unlike r.TLS it also sees through the SplitListener's wrapping of
// a TLS connection (ServeConsumer).
func PeerTLS(r *http.Request) *tls.ConnectionState {
	if r.TLS != nil {
		return r.TLS
	}
	c, _ := r.Context().Value(connKey{}).(net.Conn)
	return ConnTLS(c)
}

// ConnTLS returns the TLS state of c, a *tls.Conn or one that
// SplitListener wrapped, after its handshake; nil otherwise.
func ConnTLS(c net.Conn) *tls.ConnectionState {
	for c != nil {
		switch v := c.(type) {
		case *tls.Conn:
			st := v.ConnectionState()
			return &st
		case *prefixConn:
			c = v.Conn
		default:
			return nil
		}
	}
	return nil
}
