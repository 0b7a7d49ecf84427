// Package topology indexes a verified global configuration for the node's
// hot path: which nodes host a subsystem, whether a node hosts one, its
// address and SPIFFE ID, the global groups of a subsystem, the catalogue
// entry of a service, and the roots to trust. A Topology is immutable; the
// node swaps in a new one (atomic pointer) for every configuration it
// accepts, so lookups take no lock.
package topology

import (
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/access"
	"github.com/sildmesh/sild/pki"
)

// Topology is the index of one configuration. Build it with New.
type Topology struct {
	// Config is the configuration indexed; read it, never modify it.
	Config      *registryv1.GlobalConfig
	Instance    string
	TrustDomain spiffeid.TrustDomain
	// Roots are the ecosystem's CA certificates (the trust bundle).
	Roots   []*x509.Certificate
	Version uint64
	Expires time.Time

	nodes    map[ident.Node]*registryv1.Node
	hosts    map[ident.Subsystem][]ident.Node // active nodes only, sorted
	groups   map[ident.Subsystem][]string
	services map[ident.Service]*registryv1.CatalogEntry
	// Federation: trust domain -> instance and roots, own included.
	instances map[spiffeid.TrustDomain]string
	roots     map[string][]*x509.Certificate // by instance
	// exported: this ecosystem's subsystems each federated instance may call.
	exported map[string]map[ident.Subsystem]bool
	// single caches, by ident.Service, which of its methods the catalogue
	// describes as answering one message (SingleResponse).
	single sync.Map
}

// New indexes cfg, which must have been verified (gconf.Verify).
func New(cfg *registryv1.GlobalConfig) (*Topology, error) {
	td, err := spiffeid.TrustDomainFromString(cfg.GetTrustDomain())
	if err != nil {
		return nil, fmt.Errorf("topology: trust domain: %w", err)
	}
	t := &Topology{
		Config: cfg, Instance: cfg.GetInstance(), TrustDomain: td,
		Version: cfg.GetVersion(), Expires: cfg.GetExpiresAt().AsTime(),
		nodes:    map[ident.Node]*registryv1.Node{},
		hosts:    map[ident.Subsystem][]ident.Node{},
		services: map[ident.Service]*registryv1.CatalogEntry{},
		groups:   access.MemberGroups(cfg),
	}
	t.instances = map[spiffeid.TrustDomain]string{td: t.Instance}
	t.roots = map[string][]*x509.Certificate{}
	t.exported = map[string]map[ident.Subsystem]bool{}
	if t.Roots, err = parseRoots(cfg.GetTrustBundle()); err != nil {
		return nil, err
	}
	t.roots[t.Instance] = t.Roots
	if err := t.indexEntries(cfg.GetNodes(), cfg.GetSubsystems(), cfg.GetServices(), t.Instance); err != nil {
		return nil, err
	}
	// Federated instances: only entries of their own instance count, so a
	// peer cannot speak for a third ecosystem.
	for _, f := range cfg.GetFederated() {
		if !f.GetActive() || f.GetInstance() == t.Instance {
			continue
		}
		ftd, err := spiffeid.TrustDomainFromString(f.GetTrustDomain())
		if err != nil || ftd == td {
			return nil, fmt.Errorf("topology: federated %s: bad trust domain %q", f.GetInstance(), f.GetTrustDomain())
		}
		roots, err := parseRoots(f.GetTrustBundle())
		if err != nil {
			return nil, fmt.Errorf("topology: federated %s: %w", f.GetInstance(), err)
		}
		t.instances[ftd] = f.GetInstance()
		t.roots[f.GetInstance()] = roots
		for _, e := range f.GetExported() {
			sub, err := ident.SubsystemFromProto(e)
			if err != nil {
				return nil, fmt.Errorf("topology: federated %s: exported: %w", f.GetInstance(), err)
			}
			if sub.Member.Instance != t.Instance {
				continue
			}
			if t.exported[f.GetInstance()] == nil {
				t.exported[f.GetInstance()] = map[ident.Subsystem]bool{}
			}
			t.exported[f.GetInstance()][sub] = true
		}
		if err := t.indexEntries(f.GetNodes(), f.GetSubsystems(), f.GetServices(), f.GetInstance()); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func parseRoots(ders [][]byte) ([]*x509.Certificate, error) {
	roots, err := pki.ParseDERs(ders)
	if err != nil {
		return nil, fmt.Errorf("topology: trust bundle: %w", err)
	}
	return roots, nil
}

// indexEntries adds the nodes, subsystems and services of one instance;
// entries naming another instance are skipped.
func (t *Topology) indexEntries(nodes []*registryv1.Node, subs []*registryv1.Subsystem, services []*registryv1.CatalogEntry, instance string) error {
	for _, n := range nodes {
		id, err := ident.NodeFromProto(n.GetId())
		if err != nil {
			return fmt.Errorf("topology: node: %w", err)
		}
		if id.Member.Instance == instance {
			t.nodes[id] = n
		}
	}
	for _, s := range subs {
		sub, err := ident.SubsystemFromProto(s.GetId())
		if err != nil {
			return fmt.Errorf("topology: subsystem: %w", err)
		}
		if sub.Member.Instance != instance {
			continue
		}
		for _, np := range s.GetNodes() {
			n, err := ident.NodeFromProto(np)
			if err != nil {
				return fmt.Errorf("topology: subsystem %s: %w", sub, err)
			}
			if rec := t.nodes[n]; rec != nil && rec.GetState() == registryv1.NodeState_NODE_STATE_ACTIVE {
				t.hosts[sub] = append(t.hosts[sub], n)
			}
		}
	}
	for _, e := range services {
		svc, err := ident.ServiceFromProto(e.GetService())
		if err != nil {
			return fmt.Errorf("topology: service: %w", err)
		}
		if svc.Subsystem.Member.Instance == instance {
			t.services[svc] = e
		}
	}
	return nil
}

// InstanceOf returns the instance whose trust domain is td: this
// ecosystem's or an active federated one's; ok is false otherwise.
func (t *Topology) InstanceOf(td spiffeid.TrustDomain) (instance string, ok bool) {
	instance, ok = t.instances[td]
	return instance, ok
}

// RootsOf returns the root certificates of instance (own or federated).
func (t *Topology) RootsOf(instance string) []*x509.Certificate { return t.roots[instance] }

// Bundles returns the trust bundles of this ecosystem and every active
// federated one, for mTLS across trust domains.
func (t *Topology) Bundles() []*x509bundle.Bundle {
	var out []*x509bundle.Bundle
	for td, inst := range t.instances {
		out = append(out, x509bundle.FromX509Authorities(td, t.roots[inst]))
	}
	return out
}

// Expired reports whether the configuration is no longer valid at now.
func (t *Topology) Expired(now time.Time) bool { return !now.Before(t.Expires) }

// Hosts returns the active nodes that serve sub (nil if none).
func (t *Topology) Hosts(sub ident.Subsystem) []ident.Node { return t.hosts[sub] }

// Serves reports whether node n is active and registered for sub.
func (t *Topology) Serves(n ident.Node, sub ident.Subsystem) bool {
	for _, h := range t.hosts[sub] {
		if h == n {
			return true
		}
	}
	return false
}

// Node returns the record of n, or nil.
// Exported reports whether this ecosystem exports its subsystem sub to the
// active federated instance (the only subsystems that instance's nodes may
// call here).
func (t *Topology) Exported(instance string, sub ident.Subsystem) bool {
	return t.exported[instance][sub]
}

func (t *Topology) Node(n ident.Node) *registryv1.Node { return t.nodes[n] }

// Groups returns the global groups of sub as access.Store takes them.
func (t *Topology) Groups(sub ident.Subsystem) []string { return t.groups[sub] }

// Service returns the catalogue entry of svc, or nil.
func (t *Topology) Service(svc ident.Service) *registryv1.CatalogEntry { return t.services[svc] }

// Services returns every catalogue entry of this ecosystem (federated
// services are found with Service).
func (t *Topology) Services() []*registryv1.CatalogEntry { return t.Config.GetServices() }

// Current returns the configuration in force from get, or the refusal a
// node gives without one: UNAVAILABLE before the first configuration,
// CONFIG_EXPIRED once it has expired (component names the refuser).
func Current(get func() *Topology, now time.Time, component string) (*Topology, error) {
	t := get()
	if t == nil {
		return nil, rpcerr.New(codes.Unavailable, rpcerr.ReasonUnavailable, component, "no global configuration yet")
	}
	if t.Expired(now) {
		return nil, rpcerr.New(codes.Unavailable, rpcerr.ReasonConfigExpired, component, "global configuration expired")
	}
	return t, nil
}

// SingleResponse reports whether the catalogue's descriptors of svc
// declare method as answering with one message (unary or client
// streaming). It is false when the catalogue does not describe the method.
func (t *Topology) SingleResponse(svc ident.Service, method string) bool {
	v, ok := t.single.Load(svc)
	if !ok {
		v, _ = t.single.LoadOrStore(svc, singleResponseMethods(t.services[svc], svc.Name))
	}
	return v.(map[string]bool)[method]
}

// singleResponseMethods returns the methods of service (a full name) in
// e's FileDescriptorSet that answer with one message.
func singleResponseMethods(e *registryv1.CatalogEntry, service string) map[string]bool {
	single := map[string]bool{}
	var fds descriptorpb.FileDescriptorSet
	if e == nil || proto.Unmarshal(e.GetFileDescriptorSet(), &fds) != nil {
		return single
	}
	for _, f := range fds.GetFile() {
		for _, s := range f.GetService() {
			name := s.GetName()
			if p := f.GetPackage(); p != "" {
				name = p + "." + name
			}
			if name != service {
				continue
			}
			for _, m := range s.GetMethod() {
				if !m.GetServerStreaming() {
					single[m.GetName()] = true
				}
			}
		}
	}
	return single
}
