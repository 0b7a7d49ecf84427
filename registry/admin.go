package registry

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry/fsm"
)

// adminAPI implements AdminService. Authentication and roles are checked by
// the server's interceptor before a method runs.
type adminAPI struct {
	registryv1.UnimplementedAdminServiceServer
	s *Server
}

func badArg(msg string) error {
	return rpcerr.New(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, "registry", msg)
}

// do proposes one command.
func (a *adminAPI) do(ctx context.Context, cmd *registryv1.Command) error {
	_, err := a.s.propose(ctx, cmd)
	return err
}

// read runs fn on a current (or, if stale, local) state.
func (a *adminAPI) read(ctx context.Context, ro *registryv1.ReadOptions, fn func(st *fsm.State)) error {
	if err := a.s.barrier(ctx, ro.GetStale()); err != nil {
		return err
	}
	a.s.fsm.Read(func(st *fsm.State, _ uint64) { fn(st) })
	return nil
}

func (a *adminAPI) AddMember(ctx context.Context, r *registryv1.AddMemberRequest) (*registryv1.AddMemberResponse, error) {
	return &registryv1.AddMemberResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_AddMember{AddMember: r}})
}

func (a *adminAPI) RemoveMember(ctx context.Context, r *registryv1.RemoveMemberRequest) (*registryv1.RemoveMemberResponse, error) {
	return &registryv1.RemoveMemberResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_RemoveMember{RemoveMember: r}})
}

func (a *adminAPI) ListMembers(ctx context.Context, r *registryv1.ListMembersRequest) (*registryv1.ListMembersResponse, error) {
	resp := &registryv1.ListMembersResponse{}
	err := a.read(ctx, r.GetRead(), func(st *fsm.State) { resp.Members = fsm.Copies(st.Members) })
	return resp, err
}

func (a *adminAPI) AddSubsystem(ctx context.Context, r *registryv1.AddSubsystemRequest) (*registryv1.AddSubsystemResponse, error) {
	return &registryv1.AddSubsystemResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_AddSubsystem{AddSubsystem: r}})
}

func (a *adminAPI) RemoveSubsystem(ctx context.Context, r *registryv1.RemoveSubsystemRequest) (*registryv1.RemoveSubsystemResponse, error) {
	return &registryv1.RemoveSubsystemResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_RemoveSubsystem{RemoveSubsystem: r}})
}

func (a *adminAPI) ListSubsystems(ctx context.Context, r *registryv1.ListSubsystemsRequest) (*registryv1.ListSubsystemsResponse, error) {
	resp := &registryv1.ListSubsystemsResponse{}
	err := a.read(ctx, r.GetRead(), func(st *fsm.State) { resp.Subsystems = fsm.Copies(st.Subsystems) })
	return resp, err
}

func (a *adminAPI) AddNode(ctx context.Context, r *registryv1.AddNodeRequest) (*registryv1.AddNodeResponse, error) {
	return &registryv1.AddNodeResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_AddNode{AddNode: r}})
}

// Token lifetimes.
const (
	defaultTokenTTL = time.Hour
	maxTokenTTL     = 7 * 24 * time.Hour
)

func tokenTTL(d interface{ AsDuration() time.Duration }, set bool) (time.Duration, error) {
	if !set {
		return defaultTokenTTL, nil
	}
	ttl := d.AsDuration()
	if ttl <= 0 || ttl > maxTokenTTL {
		return 0, badArg("ttl: must be between 1s and 168h")
	}
	return ttl, nil
}

func (a *adminAPI) CreateJoinToken(ctx context.Context, r *registryv1.CreateJoinTokenRequest) (*registryv1.CreateJoinTokenResponse, error) {
	ttl, err := tokenTTL(r.GetTtl(), r.Ttl != nil)
	if err != nil {
		return nil, err
	}
	token, hash, err := newToken()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	exp := timestamppb.New(now.Add(ttl))
	err = a.do(ctx, &registryv1.Command{Time: timestamppb.New(now), Op: &registryv1.Command_AddJoinToken{AddJoinToken: &registryv1.JoinToken{
		Hash: hash, Subject: &registryv1.JoinToken_Node{Node: r.GetNode()}, ExpiresAt: exp,
	}}})
	if err != nil {
		return nil, err
	}
	return &registryv1.CreateJoinTokenResponse{Token: token, ExpiresAt: exp}, nil
}

func (a *adminAPI) RemoveNode(ctx context.Context, r *registryv1.RemoveNodeRequest) (*registryv1.RemoveNodeResponse, error) {
	return &registryv1.RemoveNodeResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_RemoveNode{RemoveNode: r}})
}

func (a *adminAPI) ListNodes(ctx context.Context, r *registryv1.ListNodesRequest) (*registryv1.ListNodesResponse, error) {
	resp := &registryv1.ListNodesResponse{}
	err := a.read(ctx, r.GetRead(), func(st *fsm.State) { resp.Nodes = fsm.Copies(st.Nodes) })
	return resp, err
}

func (a *adminAPI) RegisterSubsystem(ctx context.Context, r *registryv1.RegisterSubsystemRequest) (*registryv1.RegisterSubsystemResponse, error) {
	if err := a.do(ctx, &registryv1.Command{Op: &registryv1.Command_RegisterSubsystem{RegisterSubsystem: r}}); err != nil {
		return nil, err
	}
	// The request just created is the newest one for this pair (others
	// may have been created for other pairs since).
	resp := &registryv1.RegisterSubsystemResponse{}
	err := a.read(ctx, nil, func(st *fsm.State) {
		for id := st.NextReq - 1; id > 0; id-- {
			if q := st.Requests[id]; q != nil && q.GetKind() == fsm.KindRegisterSubsystem && samePair(q, r) {
				resp.Request = proto.Clone(q).(*registryv1.ManagementRequest)
				return
			}
		}
	})
	return resp, err
}

// samePair reports whether request q registers the pair r names.
func samePair(q *registryv1.ManagementRequest, r *registryv1.RegisterSubsystemRequest) bool {
	var c registryv1.Command
	if proto.Unmarshal(q.GetChange(), &c) != nil {
		return false
	}
	rs := c.GetRegisterSubsystem()
	qs, err1 := ident.SubsystemFromProto(rs.GetSubsystem())
	qn, err2 := ident.NodeFromProto(rs.GetNode())
	ws, err3 := ident.SubsystemFromProto(r.GetSubsystem())
	wn, err4 := ident.NodeFromProto(r.GetNode())
	return errors.Join(err1, err2, err3, err4) == nil && qs == ws && qn == wn
}

func (a *adminAPI) UnregisterSubsystem(ctx context.Context, r *registryv1.UnregisterSubsystemRequest) (*registryv1.UnregisterSubsystemResponse, error) {
	return &registryv1.UnregisterSubsystemResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_UnregisterSubsystem{UnregisterSubsystem: r}})
}

func (a *adminAPI) AddGroup(ctx context.Context, r *registryv1.AddGroupRequest) (*registryv1.AddGroupResponse, error) {
	return &registryv1.AddGroupResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_AddGroup{AddGroup: r}})
}

func (a *adminAPI) RemoveGroup(ctx context.Context, r *registryv1.RemoveGroupRequest) (*registryv1.RemoveGroupResponse, error) {
	return &registryv1.RemoveGroupResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_RemoveGroup{RemoveGroup: r}})
}

func (a *adminAPI) AddGroupMember(ctx context.Context, r *registryv1.AddGroupMemberRequest) (*registryv1.AddGroupMemberResponse, error) {
	return &registryv1.AddGroupMemberResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_AddGroupMember{AddGroupMember: r}})
}

func (a *adminAPI) RemoveGroupMember(ctx context.Context, r *registryv1.RemoveGroupMemberRequest) (*registryv1.RemoveGroupMemberResponse, error) {
	return &registryv1.RemoveGroupMemberResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_RemoveGroupMember{RemoveGroupMember: r}})
}

func (a *adminAPI) ListGroups(ctx context.Context, r *registryv1.ListGroupsRequest) (*registryv1.ListGroupsResponse, error) {
	resp := &registryv1.ListGroupsResponse{}
	err := a.read(ctx, r.GetRead(), func(st *fsm.State) { resp.Groups = fsm.Copies(st.Groups) })
	return resp, err
}

func (a *adminAPI) PublishService(ctx context.Context, r *registryv1.PublishServiceRequest) (*registryv1.PublishServiceResponse, error) {
	// The FSM checks the whole catalogue; one set over the limit needs no
	// trip through the log.
	if n := len(r.GetFileDescriptorSet()); n > fsm.MaxCatalogueBytes {
		return nil, rpcerr.New(codes.ResourceExhausted, fsm.ReasonCatalogueFull, "registry",
			fmt.Sprintf("file descriptor set: %d bytes, over the catalogue's limit of %d", n, fsm.MaxCatalogueBytes))
	}
	return &registryv1.PublishServiceResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_PublishService{PublishService: r}})
}

func (a *adminAPI) SetServiceEnabled(ctx context.Context, r *registryv1.SetServiceEnabledRequest) (*registryv1.SetServiceEnabledResponse, error) {
	return &registryv1.SetServiceEnabledResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_SetServiceEnabled{SetServiceEnabled: r}})
}

func (a *adminAPI) RemoveService(ctx context.Context, r *registryv1.RemoveServiceRequest) (*registryv1.RemoveServiceResponse, error) {
	return &registryv1.RemoveServiceResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_RemoveService{RemoveService: r}})
}

func (a *adminAPI) ListServices(ctx context.Context, r *registryv1.ListServicesRequest) (*registryv1.ListServicesResponse, error) {
	resp := &registryv1.ListServicesResponse{}
	err := a.read(ctx, r.GetRead(), func(st *fsm.State) { resp.Services = fsm.Copies(st.Services) })
	return resp, err
}

func (a *adminAPI) ListRequests(ctx context.Context, r *registryv1.ListRequestsRequest) (*registryv1.ListRequestsResponse, error) {
	resp := &registryv1.ListRequestsResponse{}
	err := a.read(ctx, r.GetRead(), func(st *fsm.State) {
		for _, q := range fsm.Copies(st.Requests) {
			if r.GetState() == registryv1.RequestState_REQUEST_STATE_UNSPECIFIED || q.GetState() == r.GetState() {
				resp.Requests = append(resp.Requests, q)
			}
		}
	})
	return resp, err
}

func (a *adminAPI) ApproveRequest(ctx context.Context, r *registryv1.ApproveRequestRequest) (*registryv1.ApproveRequestResponse, error) {
	return &registryv1.ApproveRequestResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_ApproveRequest{ApproveRequest: r}})
}

func (a *adminAPI) RejectRequest(ctx context.Context, r *registryv1.RejectRequestRequest) (*registryv1.RejectRequestResponse, error) {
	return &registryv1.RejectRequestResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_RejectRequest{RejectRequest: r}})
}

func (a *adminAPI) SetAutoApprove(ctx context.Context, r *registryv1.SetAutoApproveRequest) (*registryv1.SetAutoApproveResponse, error) {
	return &registryv1.SetAutoApproveResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_SetAutoApprove{SetAutoApprove: r}})
}

func (a *adminAPI) CreateApiKey(ctx context.Context, r *registryv1.CreateApiKeyRequest) (*registryv1.CreateApiKeyResponse, error) {
	if r.GetName() == "" || len(r.GetName()) > 200 {
		return nil, badArg("name: required, at most 200 bytes")
	}
	if _, ok := registryv1.Role_name[int32(r.GetRole())]; !ok || r.GetRole() == registryv1.Role_ROLE_UNSPECIFIED {
		return nil, badArg("role: must be reader, operator or admin")
	}
	stored, secret, err := newAPIKey(r.GetName(), r.GetRole(), time.Now())
	if err != nil {
		return nil, err
	}
	if err := a.do(ctx, &registryv1.Command{Op: &registryv1.Command_AddApiKey{AddApiKey: stored}}); err != nil {
		return nil, err
	}
	return &registryv1.CreateApiKeyResponse{Key: stored.GetKey(), Secret: secret}, nil
}

func (a *adminAPI) RevokeApiKey(ctx context.Context, r *registryv1.RevokeApiKeyRequest) (*registryv1.RevokeApiKeyResponse, error) {
	return &registryv1.RevokeApiKeyResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_RevokeApiKey{RevokeApiKey: r}})
}

func (a *adminAPI) ListApiKeys(ctx context.Context, r *registryv1.ListApiKeysRequest) (*registryv1.ListApiKeysResponse, error) {
	resp := &registryv1.ListApiKeysResponse{}
	err := a.read(ctx, r.GetRead(), func(st *fsm.State) {
		for _, k := range fsm.Copies(st.APIKeys) {
			resp.Keys = append(resp.Keys, k.GetKey())
		}
	})
	return resp, err
}

func (a *adminAPI) RaftStatus(ctx context.Context, _ *registryv1.RaftStatusRequest) (*registryv1.RaftStatusResponse, error) {
	r := a.s.raft
	_, leaderID := r.LeaderWithID()
	resp := &registryv1.RaftStatusResponse{
		ServerId: a.s.cfg.ServerID, State: r.State().String(), LeaderId: string(leaderID),
		CommitIndex: r.CommitIndex(), AppliedIndex: a.s.fsm.Index(), LastLogIndex: r.LastIndex(),
	}
	resp.Term, _ = strconv.ParseUint(r.Stats()["term"], 10, 64)
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, unavailable("raft configuration: " + err.Error())
	}
	var infos map[string]*registryv1.ServerInfo
	a.s.fsm.Read(func(st *fsm.State, _ uint64) {
		infos = map[string]*registryv1.ServerInfo{}
		for k, v := range st.Servers {
			infos[k] = v
		}
	})
	for _, sv := range f.Configuration().Servers {
		resp.Servers = append(resp.Servers, &registryv1.RaftServer{
			Id: string(sv.ID), RaftAddress: string(sv.Address), ApiAddress: infos[string(sv.ID)].GetApiAddress(),
			Voter: sv.Suffrage == raft.Voter, Leader: sv.ID == leaderID,
		})
	}
	return resp, nil
}

func (a *adminAPI) CreateServerToken(ctx context.Context, r *registryv1.CreateServerTokenRequest) (*registryv1.CreateServerTokenResponse, error) {
	ttl, err := tokenTTL(r.GetTtl(), r.Ttl != nil)
	if err != nil {
		return nil, err
	}
	token, hash, err := newToken()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	exp := timestamppb.New(now.Add(ttl))
	err = a.do(ctx, &registryv1.Command{Time: timestamppb.New(now), Op: &registryv1.Command_AddJoinToken{AddJoinToken: &registryv1.JoinToken{
		Hash: hash, Subject: &registryv1.JoinToken_ServerId{ServerId: r.GetServerId()}, ExpiresAt: exp, Voter: r.GetVoter(),
	}}})
	if err != nil {
		return nil, err
	}
	return &registryv1.CreateServerTokenResponse{Token: token, ExpiresAt: exp}, nil
}

func (a *adminAPI) RemoveServer(ctx context.Context, r *registryv1.RemoveServerRequest) (*registryv1.RemoveServerResponse, error) {
	if a.s.raft.State() != raft.Leader {
		conn, err := a.s.leaderConn()
		if err != nil {
			return nil, unavailable("no leader to remove the server")
		}
		md, _ := metadata.FromIncomingContext(ctx)
		return registryv1.NewAdminServiceClient(conn).RemoveServer(metadata.NewOutgoingContext(ctx, md), r)
	}
	if r.GetServerId() == a.s.cfg.ServerID {
		return nil, badArg("server_id: the leader cannot remove itself; remove it from another server after a leadership change")
	}
	found := false
	f := a.s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, unavailable(err.Error())
	}
	for _, sv := range f.Configuration().Servers {
		found = found || string(sv.ID) == r.GetServerId()
	}
	if !found {
		return nil, rpcerr.New(codes.NotFound, rpcerr.ReasonNotFound, "registry", "registry server "+r.GetServerId()+" not found")
	}
	if err := a.s.raft.RemoveServer(raft.ServerID(r.GetServerId()), 0, applyTimeout).Error(); err != nil {
		return nil, unavailable("remove server: " + err.Error())
	}
	_, err := a.s.propose(ctx, &registryv1.Command{Op: &registryv1.Command_RemoveServer{RemoveServer: r}})
	if err != nil && rpcerr.Reason(err) != rpcerr.ReasonNotFound {
		return nil, err
	}
	return &registryv1.RemoveServerResponse{}, nil
}

// GetGlobalConfig returns this server's published configuration once it
// includes every change committed before the call.
func (a *adminAPI) GetGlobalConfig(ctx context.Context, _ *registryv1.GetGlobalConfigRequest) (*registryv1.GetGlobalConfigResponse, error) {
	if err := a.s.barrier(ctx, false); err != nil {
		return nil, err
	}
	var version uint64
	a.s.fsm.Read(func(st *fsm.State, _ uint64) { version = st.ConfigVersion })
	for {
		p, changed := a.s.current()
		if p != nil && p.config.GetVersion() >= version {
			return &registryv1.GetGlobalConfigResponse{Config: p.config, Signed: p.signed}, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, unavailable("no configuration published yet")
		}
	}
}

func (a *adminAPI) RotateConfigKey(ctx context.Context, _ *registryv1.RotateConfigKeyRequest) (*registryv1.RotateConfigKeyResponse, error) {
	var ca *pki.CA
	var err error
	a.s.fsm.Read(func(st *fsm.State, _ uint64) { ca, err = stateCA(st) })
	if err != nil {
		return nil, unavailable("ca: " + err.Error())
	}
	kp, err := issueKeyPair(ca, pki.KindSigning, "config", a.s.cfg.CAValidity, time.Now())
	if err != nil {
		return nil, err
	}
	if err := a.do(ctx, &registryv1.Command{Op: &registryv1.Command_RotateConfigKey{RotateConfigKey: kp}}); err != nil {
		return nil, err
	}
	return &registryv1.RotateConfigKeyResponse{Certificate: kp.GetCertificate()}, nil
}

func (a *adminAPI) AddFederationLink(ctx context.Context, r *registryv1.AddFederationLinkRequest) (*registryv1.AddFederationLinkResponse, error) {
	return &registryv1.AddFederationLinkResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_AddLink{AddLink: r}})
}

func (a *adminAPI) RemoveFederationLink(ctx context.Context, r *registryv1.RemoveFederationLinkRequest) (*registryv1.RemoveFederationLinkResponse, error) {
	return &registryv1.RemoveFederationLinkResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_RemoveLink{RemoveLink: r}})
}

func (a *adminAPI) SetFederationLinkSuspended(ctx context.Context, r *registryv1.SetFederationLinkSuspendedRequest) (*registryv1.SetFederationLinkSuspendedResponse, error) {
	return &registryv1.SetFederationLinkSuspendedResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_SuspendLink{SuspendLink: r}})
}

func (a *adminAPI) ListFederationLinks(ctx context.Context, r *registryv1.ListFederationLinksRequest) (*registryv1.ListFederationLinksResponse, error) {
	resp := &registryv1.ListFederationLinksResponse{}
	err := a.read(ctx, r.GetRead(), func(st *fsm.State) { resp.Links = fsm.Copies(st.Links) })
	return resp, err
}

func (a *adminAPI) AddExport(ctx context.Context, r *registryv1.AddExportRequest) (*registryv1.AddExportResponse, error) {
	return &registryv1.AddExportResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_AddExport{AddExport: r}})
}

func (a *adminAPI) RemoveExport(ctx context.Context, r *registryv1.RemoveExportRequest) (*registryv1.RemoveExportResponse, error) {
	return &registryv1.RemoveExportResponse{}, a.do(ctx, &registryv1.Command{Op: &registryv1.Command_RemoveExport{RemoveExport: r}})
}

func (a *adminAPI) ListExports(ctx context.Context, r *registryv1.ListExportsRequest) (*registryv1.ListExportsResponse, error) {
	resp := &registryv1.ListExportsResponse{}
	err := a.read(ctx, r.GetRead(), func(st *fsm.State) { resp.Exports = fsm.Copies(st.Exports) })
	return resp, err
}

func (a *adminAPI) Backup(ctx context.Context, _ *registryv1.BackupRequest) (*registryv1.BackupResponse, error) {
	if err := a.s.barrier(ctx, false); err != nil {
		return nil, err
	}
	var st *registryv1.State
	var index uint64
	a.s.fsm.Read(func(s *fsm.State, i uint64) { st, index = s.Proto(), i })
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(st)
	if err != nil {
		return nil, err
	}
	a.s.log.Info("backup taken", "index", index)
	return &registryv1.BackupResponse{State: data, Index: index}, nil
}

// RotateCA moves a root CA rotation one phase on.
func (a *adminAPI) RotateCA(ctx context.Context, r *registryv1.RotateCARequest) (*registryv1.RotateCAResponse, error) {
	now := time.Now()
	rot := &registryv1.CARotation{Phase: r.GetPhase()}
	var instance, trustDomain string
	var nextCA *registryv1.KeyPair
	a.s.fsm.Read(func(s *fsm.State, _ uint64) {
		instance, trustDomain, nextCA = s.Instance, s.TrustDomain, proto.Clone(s.NextCA).(*registryv1.KeyPair)
	})
	switch r.GetPhase() {
	case registryv1.CARotationPhase_CA_ROTATION_PHASE_PREPARE:
		td, err := spiffeid.TrustDomainFromString(trustDomain)
		if err != nil {
			return nil, unavailable("trust domain: " + err.Error())
		}
		ca, err := pki.NewCA(td, instance+" sild root", a.s.cfg.CAValidity, now)
		if err != nil {
			return nil, err
		}
		key, err := pkcs8(ca.Key)
		if err != nil {
			return nil, err
		}
		rot.NextCa = &registryv1.KeyPair{Certificate: ca.Cert.Raw, Key: key}
	case registryv1.CARotationPhase_CA_ROTATION_PHASE_ACTIVATE:
		if nextCA.GetCertificate() == nil {
			return nil, rpcerr.New(codes.FailedPrecondition, fsm.ReasonInUse, "registry", "no CA rotation prepared")
		}
		next, err := stateCA(&fsm.State{CA: nextCA, TrustDomain: trustDomain})
		if err != nil {
			return nil, unavailable("next ca: " + err.Error())
		}
		if rot.ConfigSigner, err = issueKeyPair(next, pki.KindSigning, "config", a.s.cfg.CAValidity, now); err != nil {
			return nil, err
		}
		if rot.Tsa, err = issueKeyPair(next, pki.KindTSA, "tsa", a.s.cfg.CAValidity, now); err != nil {
			return nil, err
		}
	case registryv1.CARotationPhase_CA_ROTATION_PHASE_FINISH:
	default:
		return nil, badArg("phase: want PREPARE, ACTIVATE or FINISH")
	}
	if err := a.do(ctx, &registryv1.Command{Op: &registryv1.Command_CaRotation{CaRotation: rot}}); err != nil {
		return nil, err
	}
	resp := &registryv1.RotateCAResponse{}
	a.s.fsm.Read(func(s *fsm.State, _ uint64) { resp.Roots = s.Roots() })
	a.s.log.Info("root CA rotation", "phase", r.GetPhase().String(), "roots", len(resp.Roots))
	return resp, nil
}
