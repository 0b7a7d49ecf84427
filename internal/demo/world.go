package demo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/sildmesh/sild/gateway"
	demov1 "github.com/sildmesh/sild/gen/sild/demo/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/demo/services"
	"github.com/sildmesh/sild/internal/descset"
	"github.com/sildmesh/sild/internal/mesh"
	"github.com/sildmesh/sild/node"
	"github.com/sildmesh/sild/node/topology"
)

// federationTimeout bounds how long the demo waits for the federation link
// to become active and the peer's directory to reach the nodes.
const federationTimeout = 20 * time.Second

// Party is one organisation of the demo: its member, the subsystem it calls
// or serves with, and its node.
type Party struct {
	Label     string // e.g. "licensing authority (EE)"
	Name      string // the member's name
	Member    ident.Member
	Subsystem ident.Subsystem
	NodeID    ident.Node
	// Service is the gRPC service it provides ("" for a consumer).
	Service string
	// Node is the running node (set by startNodes).
	Node *mesh.Node
	// Backend is the provider backend's address.
	Backend string
}

// ServiceID is the party's provided service as a catalogue identifier.
func (p *Party) ServiceID() ident.Service {
	return ident.Service{Subsystem: p.Subsystem, Name: p.Service}
}

func party(label, name, member, sub, svc string) *Party {
	m, err := ident.ParseMember(member)
	if err != nil {
		panic(err) // the demo's own constants
	}
	return &Party{Label: label, Name: name, Member: m, Subsystem: ident.Subsystem{Member: m, Code: sub},
		NodeID: ident.Node{Member: m, Code: "ss1"}, Service: svc}
}

// World is what the demo's Setup brings up.
type World struct {
	EE, FI                             *mesh.Registry
	Licensing, Business, Tax, Populace *Party
	// FederationErr says why the federation did not come up (nil if it did).
	FederationErr error
	// REST is the base URL of the licensing node's REST bridge.
	REST string

	tokens map[ident.Node]string // join tokens, from registerAll to startNodes
}

func (w *World) parties() []*Party { return []*Party{w.Licensing, w.Business, w.Tax, w.Populace} }

func (w *World) registryOf(p *Party) *mesh.Registry {
	if p.Member.Instance == w.FI.Instance {
		return w.FI
	}
	return w.EE
}

func startRegistries(ctx context.Context, d *Demo) error {
	var wg sync.WaitGroup
	var errEE, errFI error
	wg.Add(2)
	go func() {
		defer wg.Done()
		d.EE, errEE = d.Mesh.StartRegistry(ctx, mesh.RegistryOptions{Instance: "EE", TrustDomain: "ee.sild.test", Servers: 3, Federation: true})
	}()
	go func() {
		defer wg.Done()
		d.FI, errFI = d.Mesh.StartRegistry(ctx, mesh.RegistryOptions{Instance: "FI", TrustDomain: "fi.sild.test", Servers: 1, Federation: true})
	}()
	wg.Wait()
	if err := errors.Join(errEE, errFI); err != nil {
		return err
	}
	d.Licensing = party("licensing authority (EE)", "Licensing Authority", "EE/GOV/70000310", "licensing", "")
	d.Business = party("business registry (EE)", "Centre of Registers", "EE/GOV/70000311", "business-registry", "sild.demo.v1.BusinessRegistryService")
	d.Tax = party("tax board (EE)", "Tax and Customs Board", "EE/GOV/70000349", "tax-board", "sild.demo.v1.TaxBoardService")
	d.Populace = party("population register (FI)", "Digital and Population Data Services Agency", "FI/GOV/0245437-2", "population-register", "sild.demo.v1.PopulationRegisterService")
	d.OnReady(d.printRegistries)
	return nil
}

func registerAll(ctx context.Context, d *Demo) error {
	toks := map[ident.Node]string{}
	descriptors := map[string][]byte{
		d.Business.Service: descset.Of(demov1.File_sild_demo_v1_business_proto),
		d.Tax.Service:      descset.Of(demov1.File_sild_demo_v1_tax_proto),
		d.Populace.Service: descset.Of(demov1.File_sild_demo_v1_population_proto),
	}
	for _, p := range d.parties() {
		r := d.registryOf(p)
		if err := r.AddMember(ctx, p.Member, p.Name); err != nil {
			return err
		}
		tok, err := r.NodeToken(ctx, p.NodeID)
		if err != nil {
			return err
		}
		toks[p.NodeID] = tok
		if err := r.AddSubsystem(ctx, p.Subsystem, p.NodeID); err != nil {
			return err
		}
		if p.Service != "" {
			if err := r.Publish(ctx, p.ServiceID(), descriptors[p.Service]); err != nil {
				return err
			}
		}
	}
	d.tokens = toks
	return nil
}

func startNodes(ctx context.Context, d *Demo) error {
	toks := d.tokens
	d.tokens = nil
	backends := map[*Party]func(*grpc.Server){
		d.Business: func(s *grpc.Server) { demov1.RegisterBusinessRegistryServiceServer(s, services.BusinessRegistry{}) },
		d.Tax:      func(s *grpc.Server) { demov1.RegisterTaxBoardServiceServer(s, services.TaxBoard{}) },
		d.Populace: func(s *grpc.Server) { demov1.RegisterPopulationRegisterServiceServer(s, services.PopulationRegister{}) },
	}
	for p, reg := range backends {
		addr, err := d.Mesh.StartBackend(reg)
		if err != nil {
			return err
		}
		p.Backend = addr
	}
	var wg sync.WaitGroup
	errs := make([]error, len(d.parties()))
	for i, p := range d.parties() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub := node.SubsystemConfig{ID: p.Subsystem.String(), Backend: p.Backend}
			p.Node, errs[i] = d.Mesh.StartNode(ctx, d.registryOf(p), p.NodeID, toks[p.NodeID], []node.SubsystemConfig{sub}, nil)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// Every node of an ecosystem knows every subsystem of it and the
	// catalogue before the scenario starts.
	for _, p := range d.parties() {
		r := d.registryOf(p)
		err := p.Node.WaitTopology(ctx, "configuration with all subsystems and services", func(top *topology.Topology) bool {
			for _, q := range d.parties() {
				if d.registryOf(q) != r {
					continue
				}
				if len(top.Hosts(q.Subsystem)) == 0 || (q.Service != "" && top.Service(q.ServiceID()) == nil) {
					return false
				}
			}
			return true
		})
		if err != nil {
			return err
		}
	}
	d.OnReady(d.printNodes)
	return nil
}

func grantAll(ctx context.Context, d *Demo) error {
	for _, g := range []struct{ provider, client *Party }{
		{d.Business, d.Licensing}, {d.Tax, d.Licensing}, {d.Populace, d.Licensing}, {d.Business, d.Populace},
	} {
		if err := g.provider.Node.Grant(ctx, g.client.Subsystem, g.provider.ServiceID()); err != nil {
			return err
		}
		d.Printf("    %s grants %s %s\n", g.provider.NodeID, g.client.Subsystem, g.provider.Service)
	}
	return nil
}

// federate links EE and FI both ways and exports the population register
// to EE. A link that does not come up is not fatal here: the cross-border
// step reports it.
func federate(ctx context.Context, d *Demo) error {
	if err := d.EE.Link(ctx, d.FI); err != nil {
		return err
	}
	if err := d.FI.Link(ctx, d.EE); err != nil {
		return err
	}
	for _, side := range []struct{ r, peer *mesh.Registry }{{d.EE, d.FI}, {d.FI, d.EE}} {
		var last *registryv1.FederationLink
		err := mesh.WaitFor(ctx, federationTimeout, side.r.Instance+" link to "+side.peer.Instance+" active", func() bool {
			l, err := side.r.LinkState(ctx, side.peer.Instance)
			last = l
			return err == nil && l.GetState() == registryv1.LinkState_LINK_STATE_ACTIVE
		})
		if err != nil {
			d.FederationErr = fmt.Errorf("%w (state %s: %s)", err, last.GetState(), last.GetStatus())
			d.Printf("    WARNING: %v\n", d.FederationErr)
			return nil
		}
	}
	d.Printf("    link EE <-> FI active on both sides\n")
	if err := d.FI.Export(ctx, d.Populace.Subsystem, d.EE.Instance); err != nil {
		return err
	}
	d.Printf("    FI exports %s to EE\n", d.Populace.Subsystem)
	if err := d.EE.Export(ctx, d.Business.Subsystem, d.FI.Instance); err != nil {
		return err
	}
	d.Printf("    EE exports %s to FI\n", d.Business.Subsystem)
	err := d.Licensing.Node.WaitTopology(ctx, "FI's population register in EE's configuration", func(top *topology.Topology) bool {
		return len(top.Hosts(d.Populace.Subsystem)) > 0 && top.Service(d.Populace.ServiceID()) != nil
	})
	if err == nil {
		err = d.Populace.Node.WaitTopology(ctx, "EE's licensing authority and business registry in FI's configuration", func(top *topology.Topology) bool {
			return len(top.Hosts(d.Licensing.Subsystem)) > 0 && top.Service(d.Business.ServiceID()) != nil
		})
	}
	if err != nil {
		d.FederationErr = err
		d.Printf("    WARNING: %v\n", err)
		return nil
	}
	d.Printf("    EE's nodes see %s, FI's see %s\n", d.Populace.ServiceID(), d.Business.ServiceID())
	return nil
}

func startREST(ctx context.Context, d *Demo) error {
	conn, err := d.Licensing.Node.Dial()
	if err != nil {
		return err
	}
	rc, err := gateway.NewConsumer(gateway.ConsumerConfig{Conn: conn, Topology: d.Licensing.Node.Topology, Logger: d.Logger})
	if err != nil {
		conn.Close()
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		conn.Close()
		return err
	}
	srv := &http.Server{Handler: rc, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	d.OnClose(func() error {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := srv.Shutdown(sctx)
		if serr := <-done; !errors.Is(serr, http.ErrServerClosed) {
			err = errors.Join(err, serr)
		}
		return errors.Join(err, conn.Close())
	})
	d.REST = "http://" + ln.Addr().String()
	return nil
}
