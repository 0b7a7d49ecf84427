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
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/node/access"
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
	for _, der := range cfg.GetTrustBundle() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("topology: trust bundle: %w", err)
		}
		t.Roots = append(t.Roots, c)
	}
	for _, n := range cfg.GetNodes() {
		id, err := ident.NodeFromProto(n.GetId())
		if err != nil {
			return nil, fmt.Errorf("topology: node: %w", err)
		}
		t.nodes[id] = n
	}
	for _, s := range cfg.GetSubsystems() {
		sub, err := ident.SubsystemFromProto(s.GetId())
		if err != nil {
			return nil, fmt.Errorf("topology: subsystem: %w", err)
		}
		for _, np := range s.GetNodes() {
			n, err := ident.NodeFromProto(np)
			if err != nil {
				return nil, fmt.Errorf("topology: subsystem %s: %w", sub, err)
			}
			if rec := t.nodes[n]; rec != nil && rec.GetState() == registryv1.NodeState_NODE_STATE_ACTIVE {
				t.hosts[sub] = append(t.hosts[sub], n)
			}
		}
	}
	for _, e := range cfg.GetServices() {
		svc, err := ident.ServiceFromProto(e.GetService())
		if err != nil {
			return nil, fmt.Errorf("topology: service: %w", err)
		}
		t.services[svc] = e
	}
	return t, nil
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
func (t *Topology) Node(n ident.Node) *registryv1.Node { return t.nodes[n] }

// Groups returns the global groups of sub as access.Store takes them.
func (t *Topology) Groups(sub ident.Subsystem) []string { return t.groups[sub] }

// Service returns the catalogue entry of svc, or nil.
func (t *Topology) Service(svc ident.Service) *registryv1.CatalogEntry { return t.services[svc] }

// Services returns every catalogue entry.
func (t *Topology) Services() []*registryv1.CatalogEntry { return t.Config.GetServices() }
