// Package fsm is the registry's replicated state machine: the members,
// subsystems, nodes, groups, service catalogue, management requests, join
// tokens, API keys and keys of one ecosystem, changed only by Commands from
// the Raft log.
//
// Determinism: Apply depends on nothing but the state and the command (the
// command carries the leader's clock), so every server that applies the same
// log reaches the same state, and Snapshot encodes equal states to equal
// bytes. Apply validates every command completely before changing anything:
// a refused command leaves the state as it was and returns an *rpcerr.Error
// naming what is wrong.
//
// Concurrency: Apply, Snapshot and Restore are called by raft; readers use
// Read, which holds a read lock for the duration of the callback.
package fsm

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
)

// component names the FSM in errors.
const component = "registry"

// Kinds of management requests.
const (
	KindRegisterSubsystem = "register_subsystem"
)

// Result is what Apply returns for every log entry.
type Result struct {
	// Err is nil if the command was applied.
	Err error
	// Value is a command-specific result (the created request for
	// register_subsystem).
	Value proto.Message
}

// FSM is the registry state machine. The zero value is not usable; call New.
type FSM struct {
	mu      sync.RWMutex
	s       *State
	index   uint64
	changed chan struct{} // closed and replaced after every applied entry
}

// State is the in-memory form of registryv1.State, keyed for lookups.
// Readers get it through FSM.Read and must not modify it.
type State struct {
	Instance      string
	TrustDomain   string
	CA            *registryv1.KeyPair
	ConfigSigner  *registryv1.KeyPair
	TSA           *registryv1.KeyPair
	ConfigVersion uint64
	Settings      *registryv1.ConfigSettings

	Members    map[string]*registryv1.Member
	Subsystems map[string]*registryv1.Subsystem
	Nodes      map[string]*registryv1.Node
	Groups     map[string]*registryv1.GlobalGroup
	Services   map[string]*registryv1.CatalogEntry
	Tokens     map[string]*registryv1.JoinToken
	APIKeys    map[string]*registryv1.StoredApiKey
	Requests   map[uint64]*registryv1.ManagementRequest
	NextReq    uint64
	Auto       map[string]bool
	Servers    map[string]*registryv1.ServerInfo
	Links      map[string]*registryv1.FederationLink // by peer instance
	Exports    map[string]*registryv1.Export         // by subsystem
	// NextCA and RetiredRoots: a root CA rotation (see registryv1.State).
	NextCA       *registryv1.KeyPair
	RetiredRoots [][]byte
	// Applied holds the request ids of the last commands applied, oldest
	// first (at most MaxAppliedRequests); applied indexes them.
	Applied []string
	applied map[string]bool
}

// MaxAppliedRequests is how many request ids of applied commands the state
// remembers: far more than can be retried at once.
const MaxAppliedRequests = 4096

// remember records the request id of a command just applied.
func (s *State) remember(id string) {
	if id == "" || s.applied[id] {
		return
	}
	if len(s.Applied) >= MaxAppliedRequests {
		delete(s.applied, s.Applied[0])
		s.Applied = s.Applied[1:]
	}
	s.Applied = append(s.Applied, id)
	s.applied[id] = true
}

// Roots returns the ecosystem's trusted root certificates (DER): the
// current CA, a prepared next one, and retired ones still trusted.
func (s *State) Roots() [][]byte {
	var out [][]byte
	if s.CA != nil {
		out = append(out, s.CA.GetCertificate())
	}
	if s.NextCA != nil {
		out = append(out, s.NextCA.GetCertificate())
	}
	return append(out, s.RetiredRoots...)
}

func newState() *State {
	return &State{
		Members:    map[string]*registryv1.Member{},
		Subsystems: map[string]*registryv1.Subsystem{},
		Nodes:      map[string]*registryv1.Node{},
		Groups:     map[string]*registryv1.GlobalGroup{},
		Services:   map[string]*registryv1.CatalogEntry{},
		Tokens:     map[string]*registryv1.JoinToken{},
		APIKeys:    map[string]*registryv1.StoredApiKey{},
		Requests:   map[uint64]*registryv1.ManagementRequest{},
		NextReq:    1,
		Auto:       map[string]bool{},
		Servers:    map[string]*registryv1.ServerInfo{},
		Links:      map[string]*registryv1.FederationLink{},
		Exports:    map[string]*registryv1.Export{},
		applied:    map[string]bool{},
	}
}

// Initialized reports whether the ecosystem was created (Init applied).
func (s *State) Initialized() bool { return s.Instance != "" }

// New returns an empty state machine.
func New() *FSM {
	return &FSM{s: newState(), changed: make(chan struct{})}
}

// Read calls fn with the current state and the index of the last applied
// entry, under a read lock. fn must not keep or modify what it sees.
func (f *FSM) Read(fn func(s *State, index uint64)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(f.s, f.index)
}

// Index returns the index of the last applied command or configuration
// entry (raft's no-op and barrier entries never reach the FSM).
func (f *FSM) Index() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.index
}

// Changed returns a channel that is closed after the next entry is applied
// (or the state restored).
func (f *FSM) Changed() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.changed
}

func (f *FSM) bump(index uint64) {
	f.index = index
	close(f.changed)
	f.changed = make(chan struct{})
}

// Apply applies one raft log entry. It returns a *Result.
func (f *FSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer f.bump(l.Index)
	if l.Type != raft.LogCommand {
		return &Result{}
	}
	var cmd registryv1.Command
	if err := proto.Unmarshal(l.Data, &cmd); err != nil {
		return &Result{Err: invalid("command: " + err.Error())}
	}
	if id := cmd.GetRequestId(); id != "" && f.s.applied[id] {
		return &Result{} // a retry of a command applied: it succeeded
	}
	v, err := f.apply(&cmd, l.Index)
	if err == nil {
		f.s.remember(cmd.GetRequestId())
	}
	return &Result{Err: err, Value: v}
}

// StoreConfiguration is called by raft for every configuration entry (raft's
// ConfigurationStore): the FSM only counts it, so that Index covers every
// entry that is not a no-op.
func (f *FSM) StoreConfiguration(index uint64, _ raft.Configuration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bump(index)
}

var _ raft.ConfigurationStore = (*FSM)(nil)

// Encode serializes a command for the log.
func Encode(cmd *registryv1.Command) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(cmd)
}

// Errors of Apply.

func invalid(msg string) error {
	return rpcerr.New(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, component, msg)
}

func badID(err error) error {
	return rpcerr.New(codes.InvalidArgument, rpcerr.ReasonInvalidIdentifier, component, err.Error())
}

func exists(what string) error {
	return rpcerr.New(codes.AlreadyExists, rpcerr.ReasonAlreadyExists, component, what+" already exists")
}

func notFound(what string) error {
	return rpcerr.New(codes.NotFound, rpcerr.ReasonNotFound, component, what+" not found")
}

func precondition(reason, msg string) error {
	return rpcerr.New(codes.FailedPrecondition, reason, component, msg)
}

// Reasons of this package beyond rpcerr's shared ones.
const (
	ReasonNotInitialized = "NOT_INITIALIZED"
	ReasonInUse          = "IN_USE"
	ReasonTokenInvalid   = "TOKEN_INVALID"
	ReasonNodeRevoked    = "NODE_REVOKED"
	ReasonWrongInstance  = "WRONG_INSTANCE"
)

func (f *FSM) apply(cmd *registryv1.Command, index uint64) (proto.Message, error) {
	s := f.s
	now := cmd.GetTime().AsTime()
	if _, ok := cmd.Op.(*registryv1.Command_Init); !ok && !s.Initialized() {
		return nil, precondition(ReasonNotInitialized, "the registry is not initialized")
	}
	configChange := true
	switch op := cmd.Op.(type) {
	case *registryv1.Command_Init:
		if s.Initialized() {
			return nil, exists("the ecosystem")
		}
		o := op.Init
		if r := o.GetRestore(); r != nil {
			if r.GetInstance() == "" || r.GetTrustDomain() == "" || r.GetCa() == nil || r.GetConfigSigner() == nil {
				return nil, invalid("restore: the backup lacks instance, trust domain, ca or config signer")
			}
			restored := FromProto(proto.Clone(r).(*registryv1.State))
			// The backed-up cluster's servers are gone; the new ones
			// announce themselves. Its requests were its own.
			restored.Servers = map[string]*registryv1.ServerInfo{}
			restored.Applied, restored.applied = nil, map[string]bool{}
			f.s = restored
			f.touch(index)
			return nil, nil
		}
		if o.GetInstance() == "" || o.GetTrustDomain() == "" || o.GetCa() == nil || o.GetConfigSigner() == nil {
			return nil, invalid("init: instance, trust domain, ca and config signer are required")
		}
		s.Instance, s.TrustDomain = o.GetInstance(), o.GetTrustDomain()
		s.CA, s.ConfigSigner, s.TSA = o.GetCa(), o.GetConfigSigner(), o.GetTsa()
		s.Settings = o.GetSettings()
		if k := o.GetAdminKey(); k != nil {
			s.APIKeys[k.GetKey().GetId()] = k
		}
		s.Auto[KindRegisterSubsystem] = true

	case *registryv1.Command_AddMember:
		m, err := f.member(op.AddMember.GetId())
		if err != nil {
			return nil, err
		}
		if s.Members[m.String()] != nil {
			return nil, exists("member " + m.String())
		}
		s.Members[m.String()] = &registryv1.Member{Id: m.Proto(), Name: op.AddMember.GetName()}

	case *registryv1.Command_RemoveMember:
		m, err := f.member(op.RemoveMember.GetId())
		if err != nil {
			return nil, err
		}
		if s.Members[m.String()] == nil {
			return nil, notFound("member " + m.String())
		}
		prefix := m.String() + "/"
		for k := range s.Subsystems {
			if strings.HasPrefix(k, prefix) {
				return nil, precondition(ReasonInUse, "member "+m.String()+" still has subsystem "+k)
			}
		}
		for k, n := range s.Nodes {
			if strings.HasPrefix(k, prefix) && n.GetState() != registryv1.NodeState_NODE_STATE_REVOKED {
				return nil, precondition(ReasonInUse, "member "+m.String()+" still has node "+k)
			}
		}
		delete(s.Members, m.String())

	case *registryv1.Command_AddSubsystem:
		sub, err := f.subsystem(op.AddSubsystem.GetId())
		if err != nil {
			return nil, err
		}
		if s.Members[sub.Member.String()] == nil {
			return nil, notFound("member " + sub.Member.String())
		}
		if s.Subsystems[sub.String()] != nil {
			return nil, exists("subsystem " + sub.String())
		}
		s.Subsystems[sub.String()] = &registryv1.Subsystem{Id: sub.Proto()}

	case *registryv1.Command_RemoveSubsystem:
		sub, err := f.subsystem(op.RemoveSubsystem.GetId())
		if err != nil {
			return nil, err
		}
		if s.Subsystems[sub.String()] == nil {
			return nil, notFound("subsystem " + sub.String())
		}
		prefix := sub.String() + "/"
		for k := range s.Services {
			if strings.HasPrefix(k, prefix) {
				return nil, precondition(ReasonInUse, "subsystem "+sub.String()+" still publishes "+k)
			}
		}
		delete(s.Subsystems, sub.String())
		for _, g := range s.Groups {
			g.Members = slices.DeleteFunc(g.Members, func(m *identv1.SubsystemId) bool { return key(m) == sub.String() })
		}

	case *registryv1.Command_AddNode:
		n, err := f.node(op.AddNode.GetId())
		if err != nil {
			return nil, err
		}
		if s.Members[n.Member.String()] == nil {
			return nil, notFound("member " + n.Member.String())
		}
		if old := s.Nodes[n.String()]; old != nil && old.GetState() != registryv1.NodeState_NODE_STATE_REVOKED {
			return nil, exists("node " + n.String())
		}
		rec := &registryv1.Node{Id: n.Proto(), State: registryv1.NodeState_NODE_STATE_PENDING}
		if td, err := spiffeid.TrustDomainFromString(s.TrustDomain); err == nil {
			if id, err := ident.NodeSPIFFEID(td, n); err == nil {
				rec.SpiffeId = id.String()
			}
		}
		s.Nodes[n.String()] = rec

	case *registryv1.Command_RemoveNode:
		n, err := f.node(op.RemoveNode.GetId())
		if err != nil {
			return nil, err
		}
		rec := s.Nodes[n.String()]
		if rec == nil || rec.GetState() == registryv1.NodeState_NODE_STATE_REVOKED {
			return nil, notFound("node " + n.String())
		}
		rec.State = registryv1.NodeState_NODE_STATE_REVOKED
		rec.PreviousSigningKeyHash = ""
		for _, sub := range s.Subsystems {
			sub.Nodes = slices.DeleteFunc(sub.Nodes, func(x *identv1.NodeId) bool { return nodeKey(x) == n.String() })
		}
		for h, t := range s.Tokens {
			if nodeKey(t.GetNode()) == n.String() {
				delete(s.Tokens, h)
			}
		}

	case *registryv1.Command_AddJoinToken:
		t := op.AddJoinToken
		if t.GetHash() == "" || t.GetExpiresAt() == nil {
			return nil, invalid("join token: hash and expiry are required")
		}
		switch sub := t.Subject.(type) {
		case *registryv1.JoinToken_Node:
			n, err := f.node(sub.Node)
			if err != nil {
				return nil, err
			}
			rec := s.Nodes[n.String()]
			if rec == nil || rec.GetState() == registryv1.NodeState_NODE_STATE_REVOKED {
				return nil, notFound("node " + n.String())
			}
		case *registryv1.JoinToken_ServerId:
			if err := ident.CheckCode("server id", sub.ServerId); err != nil {
				return nil, badID(err)
			}
			if s.Servers[sub.ServerId] != nil {
				return nil, exists("registry server " + sub.ServerId)
			}
		default:
			return nil, invalid("join token: no subject")
		}
		if s.Tokens[t.GetHash()] != nil {
			return nil, exists("join token")
		}
		f.pruneTokens(now.Unix())
		s.Tokens[t.GetHash()] = t
		configChange = false

	case *registryv1.Command_NodeJoined:
		o := op.NodeJoined
		n, err := f.node(o.GetNode())
		if err != nil {
			return nil, err
		}
		t := s.Tokens[o.GetTokenHash()]
		if rec := s.Nodes[n.String()]; t != nil && t.GetUsed() && nodeKey(t.GetNode()) == n.String() &&
			rec.GetState() == registryv1.NodeState_NODE_STATE_ACTIVE && rec.GetAddress() == o.GetAddress() &&
			rec.GetSvidKeyHash() == o.GetSvidKeyHash() && rec.GetSigningKeyHash() == o.GetSigningKeyHash() {
			// The same join again (a retry after the first was applied but
			// its answer lost, e.g. in a leader change): nothing to change.
			// Only the holder of the keys it names can use the answer.
			configChange = false
			break
		}
		if t == nil || t.GetUsed() || nodeKey(t.GetNode()) != n.String() {
			return nil, precondition(ReasonTokenInvalid, "join token is unknown, used, or for another node")
		}
		if !now.Before(t.GetExpiresAt().AsTime()) {
			return nil, precondition(ReasonTokenInvalid, "join token has expired")
		}
		rec := s.Nodes[n.String()]
		if rec == nil || rec.GetState() == registryv1.NodeState_NODE_STATE_REVOKED {
			return nil, precondition(ReasonNodeRevoked, "node "+n.String()+" is not registered")
		}
		if o.GetSvidKeyHash() == "" || o.GetSigningKeyHash() == "" {
			return nil, invalid("node joined: key hashes are required")
		}
		t.Used = true
		rec.State = registryv1.NodeState_NODE_STATE_ACTIVE
		rec.Address = o.GetAddress()
		rec.SvidKeyHash, rec.SigningKeyHash = o.GetSvidKeyHash(), o.GetSigningKeyHash()
		// A join starts over (e.g. after the node lost its keys): nothing
		// signed before it is vouched for any longer.
		rec.PreviousSigningKeyHash = ""

	case *registryv1.Command_NodeRenewed:
		o := op.NodeRenewed
		n, err := f.node(o.GetNode())
		if err != nil {
			return nil, err
		}
		rec := s.Nodes[n.String()]
		if rec == nil || rec.GetState() != registryv1.NodeState_NODE_STATE_ACTIVE {
			return nil, precondition(ReasonNodeRevoked, "node "+n.String()+" is not active")
		}
		if o.GetSvidKeyHash() == "" || o.GetSigningKeyHash() == "" {
			return nil, invalid("node renewed: key hashes are required")
		}
		if o.GetAddress() != "" {
			rec.Address = o.GetAddress()
		}
		// The replaced signing key stays listed until the next renewal: the
		// node keeps signing with it until its peers know the new one.
		if rec.GetSigningKeyHash() != o.GetSigningKeyHash() {
			rec.PreviousSigningKeyHash = rec.GetSigningKeyHash()
		}
		rec.SvidKeyHash, rec.SigningKeyHash = o.GetSvidKeyHash(), o.GetSigningKeyHash()

	case *registryv1.Command_RegisterSubsystem:
		sub, n, err := f.registration(op.RegisterSubsystem.GetSubsystem(), op.RegisterSubsystem.GetNode())
		if err != nil {
			return nil, err
		}
		if f.registered(sub, n) {
			return nil, exists("registration of " + sub.String() + " on " + n.String())
		}
		if id := f.pendingRegistration(sub, n); id != 0 {
			return nil, exists(fmt.Sprintf("pending request %d for %s on %s", id, sub.String(), n.String()))
		}
		change, err := Encode(&registryv1.Command{Op: op})
		if err != nil {
			return nil, invalid(err.Error())
		}
		req := &registryv1.ManagementRequest{
			Id: s.NextReq, Kind: KindRegisterSubsystem, State: registryv1.RequestState_REQUEST_STATE_PENDING,
			CreatedAt: cmd.GetTime(), Summary: "node " + n.String() + " serves " + sub.String(), Change: change,
		}
		s.NextReq++
		s.Requests[req.Id] = req
		if !s.Auto[KindRegisterSubsystem] {
			configChange = false
			break
		}
		f.register(sub, n)
		req.State, req.DecidedAt = registryv1.RequestState_REQUEST_STATE_APPROVED, cmd.GetTime()
		f.touch(index)
		return req, nil

	case *registryv1.Command_UnregisterSubsystem:
		sub, n, err := f.registration(op.UnregisterSubsystem.GetSubsystem(), op.UnregisterSubsystem.GetNode())
		if err != nil {
			return nil, err
		}
		rec := s.Subsystems[sub.String()]
		before := len(rec.Nodes)
		rec.Nodes = slices.DeleteFunc(rec.Nodes, func(x *identv1.NodeId) bool { return nodeKey(x) == n.String() })
		if len(rec.Nodes) == before {
			return nil, notFound("registration of " + sub.String() + " on " + n.String())
		}

	case *registryv1.Command_ApproveRequest, *registryv1.Command_RejectRequest:
		var reqID uint64
		approve := false
		if a, ok := op.(*registryv1.Command_ApproveRequest); ok {
			reqID, approve = a.ApproveRequest.GetId(), true
		} else {
			reqID = op.(*registryv1.Command_RejectRequest).RejectRequest.GetId()
		}
		req := s.Requests[reqID]
		if req == nil {
			return nil, notFound(fmt.Sprintf("request %d", reqID))
		}
		if req.GetState() != registryv1.RequestState_REQUEST_STATE_PENDING {
			return nil, precondition(ReasonInUse, fmt.Sprintf("request %d is already %s", reqID, req.GetState()))
		}
		if !approve {
			req.State, req.DecidedAt = registryv1.RequestState_REQUEST_STATE_REJECTED, cmd.GetTime()
			configChange = false
			break
		}
		var change registryv1.Command
		if err := proto.Unmarshal(req.GetChange(), &change); err != nil {
			return nil, invalid("request change: " + err.Error())
		}
		rs := change.GetRegisterSubsystem()
		sub, n, err := f.registration(rs.GetSubsystem(), rs.GetNode())
		if err != nil {
			return nil, err
		}
		if f.registered(sub, n) {
			return nil, exists("registration of " + sub.String() + " on " + n.String())
		}
		f.register(sub, n)
		req.State, req.DecidedAt = registryv1.RequestState_REQUEST_STATE_APPROVED, cmd.GetTime()

	case *registryv1.Command_SetAutoApprove:
		if op.SetAutoApprove.GetKind() != KindRegisterSubsystem {
			return nil, invalid("unknown request kind " + quote(op.SetAutoApprove.GetKind()) + " (known: " + KindRegisterSubsystem + ")")
		}
		if op.SetAutoApprove.GetAutoApprove() {
			s.Auto[op.SetAutoApprove.GetKind()] = true
		} else {
			delete(s.Auto, op.SetAutoApprove.GetKind())
		}
		configChange = false

	case *registryv1.Command_AddGroup:
		if err := checkGroup(op.AddGroup.GetCode()); err != nil {
			return nil, err
		}
		if s.Groups[op.AddGroup.GetCode()] != nil {
			return nil, exists("group " + op.AddGroup.GetCode())
		}
		s.Groups[op.AddGroup.GetCode()] = &registryv1.GlobalGroup{Code: op.AddGroup.GetCode(), Description: op.AddGroup.GetDescription()}

	case *registryv1.Command_RemoveGroup:
		if s.Groups[op.RemoveGroup.GetCode()] == nil {
			return nil, notFound("group " + quote(op.RemoveGroup.GetCode()))
		}
		delete(s.Groups, op.RemoveGroup.GetCode())

	case *registryv1.Command_AddGroupMember, *registryv1.Command_RemoveGroupMember:
		var code string
		var m *identv1.SubsystemId
		add := false
		if a, ok := op.(*registryv1.Command_AddGroupMember); ok {
			code, m, add = a.AddGroupMember.GetCode(), a.AddGroupMember.GetMember(), true
		} else {
			r := op.(*registryv1.Command_RemoveGroupMember).RemoveGroupMember
			code, m = r.GetCode(), r.GetMember()
		}
		g := s.Groups[code]
		if g == nil {
			return nil, notFound("group " + quote(code))
		}
		sub, err := ident.SubsystemFromProto(m)
		if err != nil {
			return nil, badID(err)
		}
		has := slices.ContainsFunc(g.Members, func(x *identv1.SubsystemId) bool { return key(x) == sub.String() })
		switch {
		case add && has:
			return nil, exists(sub.String() + " in group " + code)
		case add && sub.Member.Instance == s.Instance && s.Subsystems[sub.String()] == nil:
			// Members of a global group may belong to other instances
			// (federation), which this registry does not know; one of its
			// own instance must exist.
			return nil, notFound("subsystem " + sub.String())
		case add:
			g.Members = append(g.Members, sub.Proto())
			sortSubsystems(g.Members)
		case !has:
			return nil, notFound(sub.String() + " in group " + code)
		default:
			g.Members = slices.DeleteFunc(g.Members, func(x *identv1.SubsystemId) bool { return key(x) == sub.String() })
		}

	case *registryv1.Command_PublishService:
		svc, err := f.service(op.PublishService.GetService())
		if err != nil {
			return nil, err
		}
		if s.Subsystems[svc.Subsystem.String()] == nil {
			return nil, notFound("subsystem " + svc.Subsystem.String())
		}
		if err := CheckDescriptors(op.PublishService.GetFileDescriptorSet(), svc.Name); err != nil {
			return nil, err
		}
		if err := f.catalogueRoom(svc.String(), len(op.PublishService.GetFileDescriptorSet())); err != nil {
			return nil, err
		}
		s.Services[svc.String()] = &registryv1.CatalogEntry{
			Service: svc.Proto(), FileDescriptorSet: op.PublishService.GetFileDescriptorSet(), Enabled: op.PublishService.GetEnabled(),
		}

	case *registryv1.Command_SetServiceEnabled:
		svc, err := f.service(op.SetServiceEnabled.GetService())
		if err != nil {
			return nil, err
		}
		e := s.Services[svc.String()]
		if e == nil {
			return nil, notFound("service " + svc.String())
		}
		e.Enabled = op.SetServiceEnabled.GetEnabled()

	case *registryv1.Command_RemoveService:
		svc, err := f.service(op.RemoveService.GetService())
		if err != nil {
			return nil, err
		}
		if s.Services[svc.String()] == nil {
			return nil, notFound("service " + svc.String())
		}
		delete(s.Services, svc.String())

	case *registryv1.Command_AddApiKey:
		k := op.AddApiKey
		if k.GetKey().GetId() == "" || k.GetSecretHash() == "" {
			return nil, invalid("api key: id and secret hash are required")
		}
		if k.GetKey().GetRole() == registryv1.Role_ROLE_UNSPECIFIED {
			return nil, invalid("api key: role is required (reader, operator or admin)")
		}
		if s.APIKeys[k.GetKey().GetId()] != nil {
			return nil, exists("api key " + k.GetKey().GetId())
		}
		s.APIKeys[k.GetKey().GetId()] = k
		configChange = false

	case *registryv1.Command_RevokeApiKey:
		if s.APIKeys[op.RevokeApiKey.GetId()] == nil {
			return nil, notFound("api key " + quote(op.RevokeApiKey.GetId()))
		}
		delete(s.APIKeys, op.RevokeApiKey.GetId())
		configChange = false

	case *registryv1.Command_RotateConfigKey:
		if len(op.RotateConfigKey.GetCertificate()) == 0 || len(op.RotateConfigKey.GetKey()) == 0 {
			return nil, invalid("config key: certificate and key are required")
		}
		s.ConfigSigner = op.RotateConfigKey

	case *registryv1.Command_ServerJoined:
		o := op.ServerJoined
		t := s.Tokens[o.GetTokenHash()]
		if t != nil && t.GetUsed() && t.GetServerId() == o.GetServer().GetId() && proto.Equal(s.Servers[t.GetServerId()], o.GetServer()) {
			// The same join again (a retry after the first was applied but
			// its answer lost): nothing to change.
			configChange = false
			break
		}
		if t == nil || t.GetUsed() || t.GetServerId() == "" || t.GetServerId() != o.GetServer().GetId() {
			return nil, precondition(ReasonTokenInvalid, "server token is unknown, used, or for another server")
		}
		if !now.Before(t.GetExpiresAt().AsTime()) {
			return nil, precondition(ReasonTokenInvalid, "server token has expired")
		}
		t.Used = true
		s.Servers[o.GetServer().GetId()] = o.GetServer()

	case *registryv1.Command_AnnounceServer:
		if err := ident.CheckCode("server id", op.AnnounceServer.GetId()); err != nil {
			return nil, badID(err)
		}
		s.Servers[op.AnnounceServer.GetId()] = op.AnnounceServer

	case *registryv1.Command_RemoveServer:
		if s.Servers[op.RemoveServer.GetServerId()] == nil {
			return nil, notFound("registry server " + quote(op.RemoveServer.GetServerId()))
		}
		delete(s.Servers, op.RemoveServer.GetServerId())

	case *registryv1.Command_CaRotation:
		r := op.CaRotation
		switch r.GetPhase() {
		case registryv1.CARotationPhase_CA_ROTATION_PHASE_PREPARE:
			if s.NextCA != nil {
				return nil, precondition(ReasonInUse, "a CA rotation is already prepared; activate it")
			}
			if len(r.GetNextCa().GetCertificate()) == 0 || len(r.GetNextCa().GetKey()) == 0 {
				return nil, invalid("ca rotation: next CA required")
			}
			s.NextCA = r.GetNextCa()
		case registryv1.CARotationPhase_CA_ROTATION_PHASE_ACTIVATE:
			if s.NextCA == nil {
				return nil, precondition(ReasonInUse, "no CA rotation prepared")
			}
			if r.GetConfigSigner() == nil || r.GetTsa() == nil {
				return nil, invalid("ca rotation: config signer and TSA key pairs issued by the next CA required")
			}
			s.RetiredRoots = append(s.RetiredRoots, s.CA.GetCertificate())
			s.CA, s.NextCA = s.NextCA, nil
			s.ConfigSigner, s.TSA = r.GetConfigSigner(), r.GetTsa()
		case registryv1.CARotationPhase_CA_ROTATION_PHASE_FINISH:
			if s.NextCA != nil || len(s.RetiredRoots) == 0 {
				return nil, precondition(ReasonInUse, "no activated CA rotation to finish")
			}
			s.RetiredRoots = nil
		default:
			return nil, invalid("ca rotation: unknown phase")
		}

	case *registryv1.Command_AddLink, *registryv1.Command_RemoveLink, *registryv1.Command_SuspendLink,
		*registryv1.Command_UpdateLink, *registryv1.Command_AddExport, *registryv1.Command_RemoveExport:
		if err := f.applyFederation(cmd); err != nil {
			return nil, err
		}

	default:
		return nil, invalid("unknown command")
	}
	if configChange {
		f.touch(index)
	}
	return nil, nil
}

// touch records that the configuration changed at index.
func (f *FSM) touch(index uint64) { f.s.ConfigVersion = index }

// pruneTokens drops tokens that are used or expired.
func (f *FSM) pruneTokens(now int64) {
	for h, t := range f.s.Tokens {
		if t.GetUsed() || t.GetExpiresAt().GetSeconds() < now {
			delete(f.s.Tokens, h)
		}
	}
}

func (f *FSM) register(sub ident.Subsystem, n ident.Node) {
	rec := f.s.Subsystems[sub.String()]
	rec.Nodes = append(rec.Nodes, n.Proto())
	sort.Slice(rec.Nodes, func(i, j int) bool { return nodeKey(rec.Nodes[i]) < nodeKey(rec.Nodes[j]) })
}

// MaxCatalogueBytes bounds the descriptor sets of the whole catalogue: every
// node receives all of them in each global configuration, in a message of
// at most gconf.MaxMessageBytes (which also carries federated catalogues),
// so a larger catalogue would cut every node off from its configuration.
const DefaultMaxCatalogueBytes = 32 << 20

// MaxCatalogueBytes is the limit in force: DefaultMaxCatalogueBytes, a
// variable only so that tests can reach the limit with less data.
var MaxCatalogueBytes = DefaultMaxCatalogueBytes

// ReasonCatalogueFull refuses a publication that would take the catalogue
// over MaxCatalogueBytes.
const ReasonCatalogueFull = "CATALOGUE_FULL"

// catalogueRoom checks that service svc may hold a descriptor set of size
// bytes (replacing its current one) within MaxCatalogueBytes.
func (f *FSM) catalogueRoom(svc string, size int) error {
	total := size
	for k, e := range f.s.Services {
		if k != svc {
			total += len(e.GetFileDescriptorSet())
		}
	}
	if total > MaxCatalogueBytes {
		return rpcerr.New(codes.ResourceExhausted, ReasonCatalogueFull, component, fmt.Sprintf(
			"the catalogue's descriptor sets would take %d bytes, over the limit of %d (every node receives them all): publish smaller descriptor sets (only the files the service needs) or remove unused services",
			total, MaxCatalogueBytes))
	}
	return nil
}

// registered reports whether node n hosts subsystem sub.
func (f *FSM) registered(sub ident.Subsystem, n ident.Node) bool {
	return slices.ContainsFunc(f.s.Subsystems[sub.String()].GetNodes(), func(x *identv1.NodeId) bool { return nodeKey(x) == n.String() })
}

// pendingRegistration returns the id of a pending request to register sub
// on n, or 0.
func (f *FSM) pendingRegistration(sub ident.Subsystem, n ident.Node) uint64 {
	for _, id := range sortedKeys(f.s.Requests) {
		q := f.s.Requests[id]
		if q.GetState() != registryv1.RequestState_REQUEST_STATE_PENDING || q.GetKind() != KindRegisterSubsystem {
			continue
		}
		var c registryv1.Command
		if proto.Unmarshal(q.GetChange(), &c) != nil {
			continue
		}
		rs := c.GetRegisterSubsystem()
		if key(rs.GetSubsystem()) == sub.String() && nodeKey(rs.GetNode()) == n.String() {
			return id
		}
	}
	return 0
}

func (f *FSM) registration(sp *identv1.SubsystemId, np *identv1.NodeId) (ident.Subsystem, ident.Node, error) {
	sub, err := f.subsystem(sp)
	if err != nil {
		return sub, ident.Node{}, err
	}
	n, err := f.node(np)
	if err != nil {
		return sub, n, err
	}
	if f.s.Subsystems[sub.String()] == nil {
		return sub, n, notFound("subsystem " + sub.String())
	}
	if rec := f.s.Nodes[n.String()]; rec == nil || rec.GetState() == registryv1.NodeState_NODE_STATE_REVOKED {
		return sub, n, notFound("node " + n.String())
	}
	return sub, n, nil
}

func (f *FSM) instanceCheck(m ident.Member) error {
	if m.Instance != f.s.Instance {
		return rpcerr.New(codes.InvalidArgument, ReasonWrongInstance, component,
			"instance "+quote(m.Instance)+" is not this registry's instance "+quote(f.s.Instance))
	}
	return nil
}

func (f *FSM) member(p *identv1.MemberId) (ident.Member, error) {
	m, err := ident.MemberFromProto(p)
	if err != nil {
		return m, badID(err)
	}
	return m, f.instanceCheck(m)
}

func (f *FSM) subsystem(p *identv1.SubsystemId) (ident.Subsystem, error) {
	s, err := ident.SubsystemFromProto(p)
	if err != nil {
		return s, badID(err)
	}
	return s, f.instanceCheck(s.Member)
}

func (f *FSM) node(p *identv1.NodeId) (ident.Node, error) {
	n, err := ident.NodeFromProto(p)
	if err != nil {
		return n, badID(err)
	}
	return n, f.instanceCheck(n.Member)
}

func (f *FSM) service(p *identv1.ServiceId) (ident.Service, error) {
	s, err := ident.ServiceFromProto(p)
	if err != nil {
		return s, badID(err)
	}
	return s, f.instanceCheck(s.Subsystem.Member)
}

// checkGroup validates a global group code (the identifier code rules).
func checkGroup(code string) error {
	if err := ident.CheckCode("group code", code); err != nil {
		return badID(err)
	}
	return nil
}

func quote(s string) string { return fmt.Sprintf("%q", s) }

// key returns the canonical string of a subsystem message ("" if invalid).
func key(p *identv1.SubsystemId) string {
	s, err := ident.SubsystemFromProto(p)
	if err != nil {
		return ""
	}
	return s.String()
}

func nodeKey(p *identv1.NodeId) string {
	n, err := ident.NodeFromProto(p)
	if err != nil {
		return ""
	}
	return n.String()
}

func sortSubsystems(l []*identv1.SubsystemId) {
	sort.Slice(l, func(i, j int) bool { return key(l[i]) < key(l[j]) })
}

// Snapshot captures the state; raft persists it outside the lock.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	w := f.s.wire()
	w.AppliedIndex = f.index
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	return snapshot(data), nil
}

// Restore replaces the state with a snapshot.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	var p registryv1.State
	if err := proto.Unmarshal(data, &p); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	s := FromProto(&p)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.s = s
	f.index = p.GetAppliedIndex()
	close(f.changed)
	f.changed = make(chan struct{})
	return nil
}

type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (snapshot) Release() {}

// Proto returns a deep copy of the state in its wire form, lists sorted by
// key; the caller may keep it after Read returns.
func (s *State) Proto() *registryv1.State {
	return proto.Clone(s.wire()).(*registryv1.State)
}

// wire is Proto without the copy: its messages are shared with s (Apply
// changes them in place), so it must not escape the lock.
func (s *State) wire() *registryv1.State {
	p := &registryv1.State{
		Instance: s.Instance, TrustDomain: s.TrustDomain, Ca: s.CA, ConfigSigner: s.ConfigSigner, Tsa: s.TSA,
		ConfigVersion: s.ConfigVersion, Settings: s.Settings, NextRequestId: s.NextReq,
		Members:         sorted(s.Members),
		Subsystems:      sorted(s.Subsystems),
		Nodes:           sorted(s.Nodes),
		Groups:          sorted(s.Groups),
		Services:        sorted(s.Services),
		JoinTokens:      sorted(s.Tokens),
		ApiKeys:         sorted(s.APIKeys),
		Servers:         sorted(s.Servers),
		Links:           sorted(s.Links),
		Exports:         sorted(s.Exports),
		NextCa:          s.NextCA,
		RetiredRoots:    s.RetiredRoots,
		AppliedRequests: s.Applied,
	}
	for _, id := range sortedKeys(s.Requests) {
		p.Requests = append(p.Requests, s.Requests[id])
	}
	p.AutoApprove = sortedKeys(s.Auto)
	return p
}

// FromProto builds the in-memory state from its wire form.
func FromProto(p *registryv1.State) *State {
	s := newState()
	s.Instance, s.TrustDomain = p.GetInstance(), p.GetTrustDomain()
	s.CA, s.ConfigSigner, s.TSA = p.GetCa(), p.GetConfigSigner(), p.GetTsa()
	s.ConfigVersion, s.Settings = p.GetConfigVersion(), p.GetSettings()
	for _, id := range p.GetAppliedRequests() {
		s.remember(id)
	}
	if p.GetNextRequestId() > 0 {
		s.NextReq = p.GetNextRequestId()
	}
	for _, m := range p.GetMembers() {
		s.Members[memberKey(m.GetId())] = m
	}
	for _, x := range p.GetSubsystems() {
		s.Subsystems[key(x.GetId())] = x
	}
	for _, n := range p.GetNodes() {
		s.Nodes[nodeKey(n.GetId())] = n
	}
	for _, g := range p.GetGroups() {
		s.Groups[g.GetCode()] = g
	}
	for _, e := range p.GetServices() {
		s.Services[serviceKey(e.GetService())] = e
	}
	for _, t := range p.GetJoinTokens() {
		s.Tokens[t.GetHash()] = t
	}
	for _, k := range p.GetApiKeys() {
		s.APIKeys[k.GetKey().GetId()] = k
	}
	for _, r := range p.GetRequests() {
		s.Requests[r.GetId()] = r
	}
	for _, k := range p.GetAutoApprove() {
		s.Auto[k] = true
	}
	for _, sv := range p.GetServers() {
		s.Servers[sv.GetId()] = sv
	}
	for _, l := range p.GetLinks() {
		s.Links[l.GetInstance()] = l
	}
	for _, e := range p.GetExports() {
		s.Exports[key(e.GetSubsystem())] = e
	}
	s.NextCA, s.RetiredRoots = p.GetNextCa(), p.GetRetiredRoots()
	return s
}

func memberKey(p *identv1.MemberId) string {
	m, err := ident.MemberFromProto(p)
	if err != nil {
		return ""
	}
	return m.String()
}

func serviceKey(p *identv1.ServiceId) string {
	s, err := ident.ServiceFromProto(p)
	if err != nil {
		return ""
	}
	return s.String()
}

func sortedKeys[K string | uint64, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func sorted[V any](m map[string]V) []V {
	out := make([]V, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, m[k])
	}
	return out
}

// Copies returns deep copies of the values of m in key order: a list for an
// answer that outlives the read lock, without copying the whole state.
func Copies[K string | uint64, V proto.Message](m map[K]V) []V {
	out := make([]V, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, proto.Clone(m[k]).(V))
	}
	return out
}
