package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/envelope"
	"github.com/sildmesh/sild/node/forward"
	"github.com/sildmesh/sild/node/topology"
)

// ComponentProvider is the ErrorInfo component of the REST provider's
// refusals.
const ComponentProvider = "gateway.provider"

// ReasonBackendError: the JSON backend answered with an HTTP error.
const ReasonBackendError = "BACKEND_ERROR"

// DefaultMaxAnswer bounds a JSON backend's answer body.
const DefaultMaxAnswer = 4 << 20

// ProviderConfig configures a legacy REST provider: a gRPC backend that
// turns each call into an HTTP request to a JSON backend.
type ProviderConfig struct {
	// Subsystem is the provider subsystem whose services are served; their
	// descriptors come from the catalogue. Required.
	Subsystem ident.Subsystem
	// BaseURL of the JSON backend: a call of method M is POST {BaseURL}/M
	// with the request as JSON. Required, http or https.
	BaseURL string
	// Topology returns the node's current configuration. Required.
	Topology func() *topology.Topology
	// Client makes the HTTP requests; nil means one with a 60 s timeout.
	Client *http.Client
	// MaxAnswer bounds an answer body; 0 means DefaultMaxAnswer.
	MaxAnswer int64
	// Logger; nil discards.
	Logger *slog.Logger
}

// Validate names the first missing or wrong field.
func (c ProviderConfig) Validate() error {
	if c.Subsystem == (ident.Subsystem{}) {
		return errors.New("missing Subsystem")
	}
	if err := CheckBaseURL(c.BaseURL); err != nil {
		return fmt.Errorf("BaseURL: %w", err)
	}
	if c.Topology == nil {
		return errors.New("missing Topology")
	}
	if c.MaxAnswer < 0 {
		return errors.New("negative MaxAnswer")
	}
	return nil
}

// Provider is the legacy REST provider. Serve it as the gRPC backend of its
// subsystem (ServerOptions): for a call of /svc/M it decodes the request
// with the catalogue's descriptors of svc, POSTs it as JSON to
// {BaseURL}/M with the headers Sild-Client, Sild-Message-Id, Sild-User-Id
// and Sild-Purpose, and returns the JSON answer as protobuf (fields the
// descriptors do not know are ignored). A method whose published
// descriptor carries a google.api.http rule is called as the rule says
// instead (verb, path with {field} variables, body; see request). A server-streaming method expects
// newline-delimited JSON, one message per line. An HTTP error becomes the
// gRPC code of its status (404 NOT_FOUND, 403 PERMISSION_DENIED, ...) with
// reason BACKEND_ERROR and no text of the backend's. A gRPC consumer cannot
// tell it from a gRPC backend.
type Provider struct {
	cfg  ProviderConfig
	base string
	cat  catalog
}

// NewProvider returns the REST provider of cfg.
func NewProvider(cfg ProviderConfig) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("gateway provider config: %w", err)
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 60 * time.Second}
	}
	if cfg.MaxAnswer == 0 {
		cfg.MaxAnswer = DefaultMaxAnswer
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Provider{cfg: cfg, base: strings.TrimRight(cfg.BaseURL, "/")}, nil
}

// ServerOptions make a grpc.Server handle every method through p.
func (p *Provider) ServerOptions() []grpc.ServerOption {
	// Request messages are received as bytes and decoded here, so that a
	// malformed one is refused in the provider's words, not grpc-go's.
	return []grpc.ServerOption{grpc.UnknownServiceHandler(p.handle), grpc.ForceServerCodecV2(forward.Codec{})}
}

func refuseP(code codes.Code, reason, msg string) error {
	return rpcerr.New(code, reason, ComponentProvider, msg)
}

// codeOfHTTP maps a backend's HTTP error status to a gRPC code.
func codeOfHTTP(s int) codes.Code {
	switch s {
	case http.StatusBadRequest, http.StatusUnprocessableEntity:
		return codes.InvalidArgument
	case http.StatusUnauthorized:
		return codes.Unauthenticated
	case http.StatusForbidden:
		return codes.PermissionDenied
	case http.StatusNotFound:
		return codes.NotFound
	case http.StatusConflict:
		return codes.AlreadyExists
	case http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case http.StatusNotImplemented:
		return codes.Unimplemented
	case http.StatusServiceUnavailable, http.StatusBadGateway:
		return codes.Unavailable
	case http.StatusGatewayTimeout:
		return codes.DeadlineExceeded
	}
	return codes.Unknown
}

func (p *Provider) handle(_ any, ss grpc.ServerStream) error {
	ctx := ss.Context()
	full, _ := grpc.MethodFromServerStream(ss)
	svcName, method, ok := strings.Cut(strings.TrimPrefix(full, "/"), "/")
	if !ok {
		return refuseP(codes.Unimplemented, ReasonUnknownMethod, "malformed method path")
	}
	top := p.cfg.Topology()
	if top == nil {
		return refuseP(codes.Unavailable, rpcerr.ReasonUnavailable, "no global configuration yet")
	}
	si, err := p.cat.lookup(top, ident.Service{Subsystem: p.cfg.Subsystem, Name: svcName})
	if errors.Is(err, errUnknownService) {
		return refuseP(codes.Unimplemented, ReasonUnknownService, "service "+svcName+" is not published")
	} else if err != nil {
		p.cfg.Logger.Warn("published descriptors unusable", "service", svcName, "err", err)
		return refuseP(codes.Internal, ReasonDescriptorsInvalid, "the published descriptors are unusable")
	}
	m := si.svc.Methods().ByName(protoreflectName(method))
	if m == nil {
		return refuseP(codes.Unimplemented, ReasonUnknownMethod, "service "+svcName+" has no method "+method)
	}
	if m.IsStreamingClient() {
		return refuseP(codes.Unimplemented, ReasonUnsupportedMethod, "client-streaming methods cannot have a JSON backend")
	}
	var frame forward.Frame
	if err := ss.RecvMsg(&frame); err != nil {
		return recvError(ctx, err)
	}
	in := dynamicpb.NewMessage(m.Input())
	err = proto.UnmarshalOptions{Resolver: si.types}.Unmarshal(frame.Bytes(), in)
	frame.Free()
	if err != nil {
		return refuseP(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, "request is not a valid "+string(m.Input().FullName())+" message")
	}
	// Like grpc's own unary handlers, call the backend only once the caller
	// half-closed: a node half-closes towards its backend only after the
	// consumer's signature verified, so no unsigned request reaches it.
	if err := ss.RecvMsg(&frame); err == nil {
		frame.Free()
		return refuseP(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, "more than one request message for a method that takes one")
	} else if err != io.EOF {
		return recvError(ctx, err)
	}
	enc := protojson.MarshalOptions{Resolver: si.types}
	body, err := enc.Marshal(in)
	if err != nil {
		return refuseP(codes.Internal, rpcerr.ReasonInternal, "request cannot be written as JSON")
	}
	req, err := p.request(ctx, m, in, body, enc)
	if err != nil {
		return err
	}
	md, _ := metadata.FromIncomingContext(ctx)
	for h, key := range map[string]string{HeaderClient: envelope.HeaderClient, HeaderMessageID: envelope.HeaderMessageID,
		HeaderUserID: envelope.HeaderUserID, HeaderPurpose: envelope.HeaderPurpose} {
		if v := md.Get(key); len(v) == 1 {
			req.Header.Set(h, v[0])
		}
	}
	resp, err := p.cfg.Client.Do(req)
	if err != nil {
		if e, ok := rpcerr.FromContext(ctx.Err()); ok {
			return e
		}
		p.cfg.Logger.Warn("JSON backend unreachable", "url", req.URL.String(), "err", err)
		return refuseP(codes.Unavailable, rpcerr.ReasonTargetUnavailable, "backend unreachable")
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return refuseP(codeOfHTTP(resp.StatusCode), ReasonBackendError, fmt.Sprintf("backend answered HTTP %d", resp.StatusCode))
	}
	dec := protojson.UnmarshalOptions{Resolver: si.types, DiscardUnknown: true}
	r := io.LimitReader(resp.Body, p.cfg.MaxAnswer+1)
	if !m.IsStreamingServer() {
		raw, err := io.ReadAll(r)
		if err != nil {
			return refuseP(codes.Unavailable, rpcerr.ReasonTargetUnavailable, "backend answer cut short")
		}
		if int64(len(raw)) > p.cfg.MaxAnswer {
			return refuseP(codes.ResourceExhausted, ReasonBodyTooLarge, "backend answer too large")
		}
		out := dynamicpb.NewMessage(m.Output())
		if len(bytes.TrimSpace(raw)) > 0 {
			if err := dec.Unmarshal(raw, out); err != nil {
				return refuseP(codes.Internal, ReasonBackendError, "backend answer does not match the method's response type")
			}
		}
		return ss.SendMsg(out)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), int(p.cfg.MaxAnswer))
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		out := dynamicpb.NewMessage(m.Output())
		if err := dec.Unmarshal(line, out); err != nil {
			return refuseP(codes.Internal, ReasonBackendError, "backend answer does not match the method's response type")
		}
		if err := ss.SendMsg(out); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if e, ok := rpcerr.FromContext(ctx.Err()); ok {
			return e
		}
		if errors.Is(err, bufio.ErrTooLong) {
			return refuseP(codes.ResourceExhausted, ReasonBodyTooLarge, "backend answer message too large")
		}
		return refuseP(codes.Unavailable, rpcerr.ReasonTargetUnavailable, "backend answer cut short")
	}
	return nil
}

// recvError is the refusal of a request message that could not be
// received: the caller's cancellation as such, a missing request as
// INVALID_ARGUMENT in words of its own.
func recvError(ctx context.Context, err error) error {
	if e, ok := rpcerr.FromContext(ctx.Err()); ok {
		return e
	}
	if errors.Is(err, io.EOF) {
		return refuseP(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, "no request message")
	}
	return err
}

// ServeProvider serves a REST provider on ln until ctx ends.
func ServeProvider(ctx context.Context, ln net.Listener, cfg ProviderConfig) error {
	p, err := NewProvider(cfg)
	if err != nil {
		return err
	}
	gs := grpc.NewServer(p.ServerOptions()...)
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(ln) }()
	select {
	case <-ctx.Done():
		stopped := make(chan struct{})
		go func() { gs.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			gs.Stop()
		}
		<-errc
		return nil
	case err := <-errc:
		return fmt.Errorf("rest provider: %w", err)
	}
}

// IsJSONBackend reports whether a configured backend is the base URL of a
// JSON/HTTP backend (http:// or https://) rather than a gRPC address.
func IsJSONBackend(backend string) bool {
	return strings.HasPrefix(backend, "http://") || strings.HasPrefix(backend, "https://")
}

// CheckBaseURL checks the base URL of a JSON/HTTP backend.
func CheckBaseURL(base string) error {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an http or https URL", base)
	}
	return nil
}

// StartProviders serves a REST provider on a loopback port for every
// backend of backends that is a JSON/HTTP base URL, and replaces it in
// backends with that port's address, so the exchange forwards to it like to
// any gRPC backend. The providers run until ctx ends or stop is called;
// stop waits for them.
func StartProviders(ctx context.Context, backends map[ident.Subsystem]string, top func() *topology.Topology, log *slog.Logger) (stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stop = func() {
		cancel()
		wg.Wait()
	}
	fail := func(err error) (func(), error) {
		stop()
		return nil, err
	}
	for sub, base := range backends {
		if !IsJSONBackend(base) {
			continue
		}
		cfg := ProviderConfig{Subsystem: sub, BaseURL: base, Topology: top, Logger: log}
		if err := cfg.Validate(); err != nil {
			return fail(fmt.Errorf("backend of %s: %w", sub, err))
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fail(fmt.Errorf("rest provider for %s: %w", sub, err))
		}
		backends[sub] = ln.Addr().String()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := ServeProvider(ctx, ln, cfg); err != nil && log != nil {
				log.Error("rest provider", "subsystem", sub.String(), "err", err)
			}
		}()
	}
	return stop, nil
}

// request makes the HTTP request of a call of m with request in (body is
// in as JSON). By default: POST {base}/{method} with body. A method with a
// google.api.http rule in the published descriptors follows the rule: its
// verb, its path under base with {field} variables filled from in, and as
// body the whole request ("*"), one message field of it, or nothing, in
// which case the set scalar fields not in the path become query parameters.
func (p *Provider) request(ctx context.Context, m protoreflect.MethodDescriptor, in *dynamicpb.Message, body []byte, enc protojson.MarshalOptions) (*http.Request, error) {
	rule := httpRule(m)
	if rule == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.base+"/"+url.PathEscape(string(m.Name())), bytes.NewReader(body))
		if err != nil {
			return nil, refuseP(codes.Internal, rpcerr.ReasonInternal, "request cannot be made")
		}
		req.Header.Set("Content-Type", "application/json")
		return req, nil
	}
	var verb, tmpl string
	switch pat := rule.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		verb, tmpl = http.MethodGet, pat.Get
	case *annotations.HttpRule_Post:
		verb, tmpl = http.MethodPost, pat.Post
	case *annotations.HttpRule_Put:
		verb, tmpl = http.MethodPut, pat.Put
	case *annotations.HttpRule_Patch:
		verb, tmpl = http.MethodPatch, pat.Patch
	case *annotations.HttpRule_Delete:
		verb, tmpl = http.MethodDelete, pat.Delete
	default:
		return nil, refuseP(codes.Unimplemented, ReasonUnsupportedMethod, "unsupported HTTP rule of "+string(m.Name()))
	}
	used := map[string]bool{}
	var path strings.Builder
	for rest := tmpl; rest != ""; {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			path.WriteString(rest)
			break
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return nil, refuseP(codes.Internal, ReasonDescriptorsInvalid, "malformed HTTP rule of "+string(m.Name()))
		}
		path.WriteString(rest[:i])
		name, _, _ := strings.Cut(rest[i+1:i+j], "=")
		v, ok := fieldText(in, name)
		if !ok {
			return nil, refuseP(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, "field "+name+" is needed in the HTTP path")
		}
		used[strings.Split(name, ".")[0]] = true
		path.WriteString(url.PathEscape(v))
		rest = rest[i+j+1:]
	}
	target := p.base + path.String()
	var rd io.Reader
	switch b := rule.GetBody(); b {
	case "*":
		rd = bytes.NewReader(body)
	case "":
		q := url.Values{}
		in.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			if used[string(fd.Name())] || fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind || fd.IsMap() {
				return true
			}
			if fd.IsList() {
				for k := range v.List().Len() {
					q.Add(fd.JSONName(), scalarText(fd, v.List().Get(k)))
				}
				return true
			}
			q.Set(fd.JSONName(), scalarText(fd, v))
			return true
		})
		if len(q) > 0 {
			target += "?" + q.Encode()
		}
	default:
		fd := in.Descriptor().Fields().ByName(protoreflect.Name(b))
		if fd == nil || fd.Kind() != protoreflect.MessageKind || fd.IsList() || fd.IsMap() {
			return nil, refuseP(codes.Internal, ReasonDescriptorsInvalid, "HTTP rule body of "+string(m.Name())+" is not a message field")
		}
		raw, err := enc.Marshal(in.Get(fd).Message().Interface())
		if err != nil {
			return nil, refuseP(codes.Internal, rpcerr.ReasonInternal, "request cannot be written as JSON")
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, verb, target, rd)
	if err != nil {
		return nil, refuseP(codes.Internal, rpcerr.ReasonInternal, "request cannot be made")
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}

// httpRule returns the google.api.http rule of m, or nil.
func httpRule(m protoreflect.MethodDescriptor) *annotations.HttpRule {
	opts, ok := m.Options().(*descriptorpb.MethodOptions)
	if !ok || opts == nil || !proto.HasExtension(opts, annotations.E_Http) {
		return nil
	}
	rule, _ := proto.GetExtension(opts, annotations.E_Http).(*annotations.HttpRule)
	return rule
}

// fieldText returns the text of the scalar field at dotted path in msg.
func fieldText(msg protoreflect.Message, path string) (string, bool) {
	parts := strings.Split(path, ".")
	for i, name := range parts {
		fd := msg.Descriptor().Fields().ByName(protoreflect.Name(name))
		if fd == nil || fd.IsList() || fd.IsMap() {
			return "", false
		}
		if i < len(parts)-1 {
			if fd.Kind() != protoreflect.MessageKind {
				return "", false
			}
			msg = msg.Get(fd).Message()
			continue
		}
		if fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind {
			return "", false
		}
		return scalarText(fd, msg.Get(fd)), true
	}
	return "", false
}

// scalarText writes a scalar value as in a URL.
func scalarText(fd protoreflect.FieldDescriptor, v protoreflect.Value) string {
	switch fd.Kind() {
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return string(ev.Name())
		}
		return fmt.Sprint(int32(v.Enum()))
	case protoreflect.BytesKind:
		return base64.URLEncoding.EncodeToString(v.Bytes())
	}
	return fmt.Sprint(v.Interface())
}
