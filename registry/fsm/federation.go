package fsm

import (
	"encoding/hex"
	"net/url"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
)

// applyFederation applies the federation commands: links to other
// ecosystems and exports of subsystems to them.
func (f *FSM) applyFederation(cmd *registryv1.Command) error {
	s := f.s
	switch op := cmd.Op.(type) {
	case *registryv1.Command_AddLink:
		l, err := f.checkLink(op.AddLink)
		if err != nil {
			return err
		}
		if s.Links[l.GetInstance()] != nil {
			return exists("federation link to " + l.GetInstance())
		}
		for _, other := range s.Links {
			if other.GetTrustDomain() == l.GetTrustDomain() {
				return exists("federation link to trust domain " + l.GetTrustDomain())
			}
		}
		l.UpdatedAt = cmd.GetTime()
		s.Links[l.GetInstance()] = l

	case *registryv1.Command_RemoveLink:
		inst := op.RemoveLink.GetInstance()
		if s.Links[inst] == nil {
			return notFound("federation link to " + quote(inst))
		}
		delete(s.Links, inst)
		for k, e := range s.Exports {
			to := slices.DeleteFunc(slices.Clone(e.GetToInstances()), func(x string) bool { return x == inst })
			if len(to) == 0 {
				delete(s.Exports, k)
			} else {
				s.Exports[k] = &registryv1.Export{Subsystem: e.GetSubsystem(), ToInstances: to}
			}
		}

	case *registryv1.Command_SuspendLink:
		l := s.Links[op.SuspendLink.GetInstance()]
		if l == nil {
			return notFound("federation link to " + quote(op.SuspendLink.GetInstance()))
		}
		l = proto.Clone(l).(*registryv1.FederationLink)
		l.Suspended = op.SuspendLink.GetSuspended()
		if l.Suspended {
			l.State, l.Status = registryv1.LinkState_LINK_STATE_SUSPENDED, "suspended by an operator"
		} else {
			l.State, l.Status = registryv1.LinkState_LINK_STATE_PENDING, "resumed; checking the peer"
		}
		l.UpdatedAt = cmd.GetTime()
		s.Links[l.GetInstance()] = l

	case *registryv1.Command_UpdateLink:
		u := op.UpdateLink
		l := s.Links[u.GetInstance()]
		if l == nil {
			return notFound("federation link to " + quote(u.GetInstance()))
		}
		l = proto.Clone(l).(*registryv1.FederationLink)
		if !l.Suspended {
			l.State, l.Status = u.GetState(), u.GetStatus()
		}
		if len(u.GetPeerBundle()) > 0 {
			l.PeerBundle = u.GetPeerBundle()
		}
		if u.GetDirectory() != nil {
			l.Directory = u.GetDirectory()
		}
		l.UpdatedAt = cmd.GetTime()
		s.Links[l.GetInstance()] = l

	case *registryv1.Command_AddExport, *registryv1.Command_RemoveExport:
		var sp *registryv1.AddExportRequest
		add := true
		if a, ok := op.(*registryv1.Command_AddExport); ok {
			sp = a.AddExport
		} else {
			r := op.(*registryv1.Command_RemoveExport).RemoveExport
			sp, add = &registryv1.AddExportRequest{Subsystem: r.GetSubsystem(), ToInstance: r.GetToInstance()}, false
		}
		sub, err := f.subsystem(sp.GetSubsystem())
		if err != nil {
			return err
		}
		inst := sp.GetToInstance()
		e := s.Exports[sub.String()]
		has := e != nil && slices.Contains(e.GetToInstances(), inst)
		switch {
		case add && s.Subsystems[sub.String()] == nil:
			return notFound("subsystem " + sub.String())
		case add && s.Links[inst] == nil:
			return notFound("federation link to " + quote(inst))
		case add && has:
			return exists("export of " + sub.String() + " to " + inst)
		case !add && !has:
			return notFound("export of " + sub.String() + " to " + quote(inst))
		}
		var to []string
		if e != nil {
			to = slices.Clone(e.GetToInstances())
		}
		if add {
			to = append(to, inst)
			slices.Sort(to)
		} else {
			to = slices.DeleteFunc(to, func(x string) bool { return x == inst })
		}
		if len(to) == 0 {
			delete(s.Exports, sub.String())
		} else {
			s.Exports[sub.String()] = &registryv1.Export{Subsystem: sub.Proto(), ToInstances: to}
		}
	}
	return nil
}

// checkLink validates a new link request.
func (f *FSM) checkLink(r *registryv1.AddFederationLinkRequest) (*registryv1.FederationLink, error) {
	if err := ident.CheckCode("instance", r.GetInstance()); err != nil {
		return nil, badID(err)
	}
	if r.GetInstance() == f.s.Instance {
		return nil, invalid("instance: an ecosystem cannot federate with itself")
	}
	td, err := spiffeid.TrustDomainFromString(r.GetTrustDomain())
	if err != nil {
		return nil, invalid("trust_domain: " + err.Error())
	}
	if td.Name() == f.s.TrustDomain {
		return nil, invalid("trust_domain: is this ecosystem's own")
	}
	u, err := url.Parse(r.GetBundleEndpointUrl())
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, invalid("bundle_endpoint_url: want https://host:port/...")
	}
	id, err := spiffeid.FromString(r.GetEndpointSpiffeId())
	if err != nil {
		return nil, invalid("endpoint_spiffe_id: " + err.Error())
	}
	if id.TrustDomain() != td {
		return nil, invalid("endpoint_spiffe_id: " + id.String() + " is not in trust domain " + td.Name())
	}
	fp, ok := strings.CutPrefix(r.GetRootFingerprint(), "sha256:")
	if b, err := hex.DecodeString(fp); !ok || err != nil || len(b) != 32 {
		return nil, invalid("root_fingerprint: want sha256:<64 hex digits>")
	}
	return &registryv1.FederationLink{
		Instance: r.GetInstance(), TrustDomain: td.Name(), BundleEndpointUrl: r.GetBundleEndpointUrl(),
		EndpointSpiffeId: id.String(), RootFingerprint: strings.ToLower(r.GetRootFingerprint()),
		State: registryv1.LinkState_LINK_STATE_PENDING, Status: "added; fetching the peer's bundle",
	}, nil
}

// Federated returns the federated instances for the global configuration:
// active, unsuspended links with the peer's roots and export directory.
func (s *State) Federated() []*registryv1.FederatedInstance {
	var out []*registryv1.FederatedInstance
	for _, l := range sorted(s.Links) {
		if l.GetSuspended() || l.GetState() != registryv1.LinkState_LINK_STATE_ACTIVE {
			continue
		}
		d := l.GetDirectory()
		var exported []*identv1.SubsystemId
		for _, e := range sorted(s.Exports) {
			if slices.Contains(e.GetToInstances(), l.GetInstance()) {
				exported = append(exported, e.GetSubsystem())
			}
		}
		out = append(out, &registryv1.FederatedInstance{
			Instance: l.GetInstance(), TrustDomain: l.GetTrustDomain(), TrustBundle: l.GetPeerBundle(), Active: true,
			Subsystems: d.GetSubsystems(), Nodes: d.GetNodes(), Services: d.GetServices(),
			Exported: exported,
		})
	}
	return out
}

// Directory is what this ecosystem shows the federated instance peer: its
// subsystems, active nodes, and the services of subsystems exported to peer.
func (s *State) Directory(peer string) *registryv1.ExportDirectory {
	d := &registryv1.ExportDirectory{Instance: s.Instance, TrustDomain: s.TrustDomain, Subsystems: sorted(s.Subsystems)}
	for _, n := range sorted(s.Nodes) {
		if n.GetState() == registryv1.NodeState_NODE_STATE_ACTIVE {
			d.Nodes = append(d.Nodes, n)
		}
	}
	for _, e := range sorted(s.Services) {
		if exp := s.Exports[key(e.GetService().GetSubsystem())]; exp != nil && slices.Contains(exp.GetToInstances(), peer) && e.GetEnabled() {
			d.Services = append(d.Services, e)
		}
	}
	return proto.Clone(d).(*registryv1.ExportDirectory)
}
