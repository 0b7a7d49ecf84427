// Package meta serves the mesh's metaservices (sild.meta.v1.MetaService) and
// gRPC server reflection on a node's consumer listener, both driven by the
// global configuration: member systems can ask which subsystems exist, which
// methods a target publishes, which of them they may call, and get a
// service's descriptors; grpcurl can `list` and `describe` through the node:
//
//	grpcurl -plaintext -H 'sild-target: EE/GOV/70000310/business-registry' localhost:8443 list
//
// With a sild-target header, reflection shows that subsystem's published
// services (plus the MetaService); without one, every published service.
// Each service is described from the files published with it; a file whose
// path a different file of an earlier service took is served under
// sild/catalogue/<service>/<path>, so clients that cache files by path see
// both. Reflection also knows google.rpc.ErrorInfo, so that clients can
// read why the node refused.
//
// AllowedMethods is answered by the target's node, which holds the access
// rights: the consumer side forwards it over mTLS (Config.Dial) to the
// Provider side, which is registered on the node's exchange listener.
package meta

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/reflect/protoreflect"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	metav1 "github.com/sildmesh/sild/gen/sild/meta/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/descset"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/access"
	"github.com/sildmesh/sild/node/topology"
)

const component = "node.meta"

// Config configures both sides.
type Config struct {
	// Self is this node.
	Self ident.Node
	// Topology returns the configuration in use (nil if none yet).
	Topology func() *topology.Topology
	// Clients are the client subsystems of this node's member systems.
	Clients []ident.Subsystem
	// MayCallAs, if set, reports whether the caller (e.g. by its TLS client
	// certificate) may speak for client, as exchange.Config.MayCallAs:
	// AllowedMethods answers only for such a client.
	MayCallAs func(ctx context.Context, client ident.Subsystem) bool
	// Dial returns a connection to another node's exchange listener over
	// mTLS (consumer side, for AllowedMethods) and a func to call when done
	// with it; the connection is shared, not closed.
	Dial func(ctx context.Context, n ident.Node) (conn *grpc.ClientConn, release func(), err error)
	// Access and Backends answer AllowedMethods on the provider side;
	// CallerNode identifies the calling node from its SVID.
	Access     *access.Store
	Backends   map[ident.Subsystem]string
	CallerNode func(ctx context.Context, top *topology.Topology) (ident.Node, error)
	// Logger receives what a caller is not told, such as why no node of
	// a target answered, and catalogue problems; nil discards it.
	Logger *slog.Logger
}

func (cfg *Config) log() *slog.Logger {
	if cfg.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return cfg.Logger
}

func refuse(code codes.Code, reason, msg string) error {
	return rpcerr.New(code, reason, component, msg)
}

// current returns the configuration in force, or a refusal (none yet, or
// expired: a node does not describe the mesh from an expired configuration).
func current(get func() *topology.Topology) (*topology.Topology, error) {
	return topology.Current(get, time.Now(), component)
}

// Consumer is the MetaService on the consumer listener.
type Consumer struct {
	metav1.UnimplementedMetaServiceServer
	cfg Config
}

// NewConsumer returns the consumer-side MetaService.
func NewConsumer(cfg Config) *Consumer { return &Consumer{cfg: cfg} }

// Register registers the MetaService and reflection on s.
func (c *Consumer) Register(s grpc.ServiceRegistrar) {
	metav1.RegisterMetaServiceServer(s, c)
	registerReflection(s, c.cfg.Topology, c.cfg.log())
}

// allServices returns every catalogue entry: own and federated.
func allServices(top *topology.Topology) []*registryv1.CatalogEntry {
	out := append([]*registryv1.CatalogEntry(nil), top.Config.GetServices()...)
	for _, f := range top.Config.GetFederated() {
		if f.GetActive() {
			out = append(out, f.GetServices()...)
		}
	}
	return out
}

// allSubsystems returns every subsystem: own and federated.
func allSubsystems(top *topology.Topology) []*registryv1.Subsystem {
	out := append([]*registryv1.Subsystem(nil), top.Config.GetSubsystems()...)
	for _, f := range top.Config.GetFederated() {
		if f.GetActive() {
			out = append(out, f.GetSubsystems()...)
		}
	}
	return out
}

func (c *Consumer) ListClients(_ context.Context, r *metav1.ListClientsRequest) (*metav1.ListClientsResponse, error) {
	top, err := current(c.cfg.Topology)
	if err != nil {
		return nil, err
	}
	resp := &metav1.ListClientsResponse{}
	for _, s := range allSubsystems(top) {
		if r.GetInstance() == "" || s.GetId().GetMember().GetInstance() == r.GetInstance() {
			resp.Subsystems = append(resp.Subsystems, s.GetId())
		}
	}
	return resp, nil
}

// methodsOf lists the methods of the catalogued services of target.
func methodsOf(top *topology.Topology, target ident.Subsystem) []*identv1.MethodId {
	var out []*identv1.MethodId
	for _, e := range allServices(top) {
		svc, err := ident.ServiceFromProto(e.GetService())
		if err != nil || svc.Subsystem != target || !e.GetEnabled() {
			continue
		}
		sd := serviceDescriptor(e)
		if sd == nil {
			continue
		}
		for i := 0; i < sd.Methods().Len(); i++ {
			out = append(out, ident.Method{Service: svc, Name: string(sd.Methods().Get(i).Name())}.Proto())
		}
	}
	return out
}

// serviceDescriptor parses an entry's descriptors and finds its service.
func serviceDescriptor(e *registryv1.CatalogEntry) protoreflect.ServiceDescriptor {
	sd, err := descset.Service(e.GetFileDescriptorSet(), e.GetService().GetServiceName())
	if err != nil {
		return nil
	}
	return sd
}

func (c *Consumer) ListMethods(_ context.Context, r *metav1.ListMethodsRequest) (*metav1.ListMethodsResponse, error) {
	top, err := current(c.cfg.Topology)
	if err != nil {
		return nil, err
	}
	target, err := ident.SubsystemFromProto(r.GetTarget())
	if err != nil {
		return nil, refuse(codes.InvalidArgument, rpcerr.ReasonInvalidIdentifier, "target: "+err.Error())
	}
	if !known(top, target) {
		return nil, refuse(codes.NotFound, rpcerr.ReasonUnknownTarget, "subsystem "+target.String()+" is not in the configuration")
	}
	return &metav1.ListMethodsResponse{Methods: methodsOf(top, target)}, nil
}

// known reports whether sub is a subsystem of this ecosystem or of an
// active federated one.
func known(top *topology.Topology, sub ident.Subsystem) bool {
	for _, s := range allSubsystems(top) {
		if id, err := ident.SubsystemFromProto(s.GetId()); err == nil && id == sub {
			return true
		}
	}
	return false
}

func (c *Consumer) GetServiceDescriptor(_ context.Context, r *metav1.GetServiceDescriptorRequest) (*metav1.GetServiceDescriptorResponse, error) {
	top, err := current(c.cfg.Topology)
	if err != nil {
		return nil, err
	}
	svc, err := ident.ServiceFromProto(r.GetService())
	if err != nil {
		return nil, refuse(codes.InvalidArgument, rpcerr.ReasonInvalidIdentifier, "service: "+err.Error())
	}
	// A disabled service is hidden, as from ListMethods and reflection.
	e := top.Service(svc)
	if e == nil || !e.GetEnabled() {
		return nil, refuse(codes.NotFound, rpcerr.ReasonUnknownTarget, "service "+svc.String()+" is not in the catalogue or not enabled")
	}
	return &metav1.GetServiceDescriptorResponse{FileDescriptorSet: e.GetFileDescriptorSet()}, nil
}

// AllowedMethods asks a node hosting the target.
func (c *Consumer) AllowedMethods(ctx context.Context, r *metav1.AllowedMethodsRequest) (*metav1.AllowedMethodsResponse, error) {
	top, err := current(c.cfg.Topology)
	if err != nil {
		return nil, err
	}
	client, target, err := allowedRequest(r)
	if err != nil {
		return nil, err
	}
	served := false
	for _, s := range c.cfg.Clients {
		served = served || s == client
	}
	if !served || !top.Serves(c.cfg.Self, client) {
		return nil, refuse(codes.PermissionDenied, rpcerr.ReasonUnknownClient, "client "+client.String()+" is not served by this node")
	}
	if c.cfg.MayCallAs != nil && !c.cfg.MayCallAs(ctx, client) {
		return nil, refuse(codes.PermissionDenied, rpcerr.ReasonUnknownClient, "caller may not speak for the client subsystem")
	}
	hosts := top.Hosts(target)
	if len(hosts) == 0 {
		return nil, refuse(codes.NotFound, rpcerr.ReasonUnknownTarget, "no active node serves "+target.String())
	}
	for _, h := range hosts {
		conn, release, err := c.cfg.Dial(ctx, h)
		if err == nil {
			var resp *metav1.AllowedMethodsResponse
			resp, err = metav1.NewMetaServiceClient(conn).AllowedMethods(ctx, r)
			release()
			if err == nil || rpcerr.Reason(err) != "" {
				return resp, err // the provider's answer or refusal
			}
		}
		if ctxErr, ok := rpcerr.FromContext(ctx.Err()); ok {
			return nil, ctxErr
		}
		// Why the node could not be asked stays in this node's log.
		c.cfg.log().WarnContext(ctx, "metaservice: a node hosting the target did not answer AllowedMethods",
			slog.String("target", target.String()), slog.String("node", h.String()), slog.Any("err", err))
	}
	return nil, refuse(codes.Unavailable, rpcerr.ReasonTargetUnavailable, "no node hosting "+target.String()+" could be reached")
}

// allowedRequest parses the client and target of an AllowedMethods request.
func allowedRequest(r *metav1.AllowedMethodsRequest) (client, target ident.Subsystem, err error) {
	if client, err = ident.SubsystemFromProto(r.GetClient()); err != nil {
		return client, target, refuse(codes.InvalidArgument, rpcerr.ReasonInvalidIdentifier, "client: "+err.Error())
	}
	if target, err = ident.SubsystemFromProto(r.GetTarget()); err != nil {
		return client, target, refuse(codes.InvalidArgument, rpcerr.ReasonInvalidIdentifier, "target: "+err.Error())
	}
	return client, target, nil
}

// Provider answers AllowedMethods on the exchange listener.
type Provider struct {
	metav1.UnimplementedMetaServiceServer
	cfg Config
}

// NewProvider returns the provider side; register it on the exchange
// listener's server.
func NewProvider(cfg Config) *Provider { return &Provider{cfg: cfg} }

// Register registers the provider side on s.
func (p *Provider) Register(s grpc.ServiceRegistrar) { metav1.RegisterMetaServiceServer(s, p) }

func (p *Provider) AllowedMethods(ctx context.Context, r *metav1.AllowedMethodsRequest) (*metav1.AllowedMethodsResponse, error) {
	top, err := current(p.cfg.Topology)
	if err != nil {
		return nil, err
	}
	caller, err := p.cfg.CallerNode(ctx, top)
	if err != nil {
		return nil, err
	}
	client, target, err := allowedRequest(r)
	if err != nil {
		return nil, err
	}
	if !top.Serves(caller, client) {
		return nil, refuse(codes.Unauthenticated, rpcerr.ReasonUnknownClient, "node "+caller.String()+" is not registered for "+client.String())
	}
	if _, ok := p.cfg.Backends[target]; !ok {
		return nil, refuse(codes.NotFound, rpcerr.ReasonUnknownTarget, target.String()+" is not served by this node")
	}
	groups := top.Groups(client)
	resp := &metav1.AllowedMethodsResponse{}
	for _, m := range methodsOf(top, target) {
		svc := ident.Service{Subsystem: target, Name: m.GetService().GetServiceName()}
		all, methods := p.cfg.Access.AllowedMethods(client, groups, svc)
		if all || containsString(methods, m.GetMethodName()) {
			resp.Methods = append(resp.Methods, m)
		}
	}
	return resp, nil
}

func containsString(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
