package mesh

import (
	"context"

	"google.golang.org/grpc"

	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/cpustat"
	"github.com/sildmesh/sild/node"
	"github.com/sildmesh/sild/node/topology"
)

// Pair is the smallest exchange: a consumer node serving a client
// subsystem and a provider node serving a service on a backend, both of
// one member, the client granted the service.
type Pair struct {
	Consumer, Provider *Node
	Client, Target     ident.Subsystem
	Service            ident.Service
	// Backend is the backend's address.
	Backend string
}

// PairOptions describe the service of a Pair.
type PairOptions struct {
	// Member owns both nodes (e.g. EE/GOV/70000310).
	Member ident.Member
	// Service is the gRPC service name; DescriptorSet its descriptors
	// (descset.Of), published in the catalogue.
	Service       string
	DescriptorSet []byte
	// Register registers the backend's implementation.
	Register func(*grpc.Server)
}

// PartLabel is the profiler label (see cpustat.Do and cpustat.ByLabel)
// that StartPair puts on the goroutines of each part it starts, so that a
// CPU profile tells what each part cost.
const PartLabel = "sild_part"

// The parts StartPair labels.
const (
	PartConsumer = "consumer"
	PartProvider = "provider"
	PartBackend  = "backend"
)

// StartPair starts, on registry r, node "consumer" serving subsystem
// "client" and node "provider" serving subsystem "service" with a backend,
// publishes the service and grants it to the client. It returns once both
// nodes see the configuration; the grant may take a moment more to be in
// force (until a first call succeeds). The goroutines of the backend and of
// each node carry PartLabel.
func (m *Mesh) StartPair(ctx context.Context, r *Registry, o PairOptions) (*Pair, error) {
	p := &Pair{
		Client: ident.Subsystem{Member: o.Member, Code: "client"},
		Target: ident.Subsystem{Member: o.Member, Code: "service"},
	}
	p.Service = ident.Service{Subsystem: p.Target, Name: o.Service}
	nodeA, nodeB := ident.Node{Member: o.Member, Code: "consumer"}, ident.Node{Member: o.Member, Code: "provider"}
	tokA, err := r.NodeToken(ctx, nodeA)
	if err != nil {
		return nil, err
	}
	tokB, err := r.NodeToken(ctx, nodeB)
	if err != nil {
		return nil, err
	}
	if err := r.AddSubsystem(ctx, p.Client, nodeA); err != nil {
		return nil, err
	}
	if err := r.AddSubsystem(ctx, p.Target, nodeB); err != nil {
		return nil, err
	}
	if err := r.Publish(ctx, p.Service, o.DescriptorSet); err != nil {
		return nil, err
	}
	cpustat.Do(PartLabel, PartBackend, func() { p.Backend, err = m.StartBackend(o.Register) })
	if err != nil {
		return nil, err
	}
	cpustat.Do(PartLabel, PartConsumer, func() {
		p.Consumer, err = m.StartNode(ctx, r, nodeA, tokA, []node.SubsystemConfig{{ID: p.Client.String()}}, nil)
	})
	if err != nil {
		return nil, err
	}
	cpustat.Do(PartLabel, PartProvider, func() {
		p.Provider, err = m.StartNode(ctx, r, nodeB, tokB, []node.SubsystemConfig{{ID: p.Target.String(), Backend: p.Backend}}, nil)
	})
	if err != nil {
		return nil, err
	}
	for _, n := range []*Node{p.Consumer, p.Provider} {
		if err := n.WaitTopology(ctx, "both subsystems and the service", func(top *topology.Topology) bool {
			return len(top.Hosts(p.Client)) == 1 && len(top.Hosts(p.Target)) == 1 && top.Service(p.Service) != nil
		}); err != nil {
			return nil, err
		}
	}
	if err := p.Provider.Grant(ctx, p.Client, p.Service); err != nil {
		return nil, err
	}
	return p, nil
}
