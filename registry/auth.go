package registry

import (
	"context"
	"crypto/x509"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/internal/apikey"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/registry/fsm"
)

// roleOf is the least role each AdminService method needs; methods not
// listed need admin.
var roleOf = map[string]registryv1.Role{
	"ListMembers": registryv1.Role_ROLE_READER, "ListSubsystems": registryv1.Role_ROLE_READER,
	"ListNodes": registryv1.Role_ROLE_READER, "ListGroups": registryv1.Role_ROLE_READER,
	"ListServices": registryv1.Role_ROLE_READER, "ListRequests": registryv1.Role_ROLE_READER,
	"RaftStatus": registryv1.Role_ROLE_READER, "GetGlobalConfig": registryv1.Role_ROLE_READER,

	"AddMember": registryv1.Role_ROLE_OPERATOR, "RemoveMember": registryv1.Role_ROLE_OPERATOR,
	"AddSubsystem": registryv1.Role_ROLE_OPERATOR, "RemoveSubsystem": registryv1.Role_ROLE_OPERATOR,
	"AddNode": registryv1.Role_ROLE_OPERATOR, "CreateJoinToken": registryv1.Role_ROLE_OPERATOR,
	"RemoveNode": registryv1.Role_ROLE_OPERATOR, "RegisterSubsystem": registryv1.Role_ROLE_OPERATOR,
	"UnregisterSubsystem": registryv1.Role_ROLE_OPERATOR, "AddGroup": registryv1.Role_ROLE_OPERATOR,
	"RemoveGroup": registryv1.Role_ROLE_OPERATOR, "AddGroupMember": registryv1.Role_ROLE_OPERATOR,
	"RemoveGroupMember": registryv1.Role_ROLE_OPERATOR, "PublishService": registryv1.Role_ROLE_OPERATOR,
	"SetServiceEnabled": registryv1.Role_ROLE_OPERATOR, "RemoveService": registryv1.Role_ROLE_OPERATOR,
	"ApproveRequest": registryv1.Role_ROLE_OPERATOR, "RejectRequest": registryv1.Role_ROLE_OPERATOR,
	"ListFederationLinks": registryv1.Role_ROLE_READER, "ListExports": registryv1.Role_ROLE_READER,
	"AddExport": registryv1.Role_ROLE_OPERATOR, "RemoveExport": registryv1.Role_ROLE_OPERATOR,
}

const adminPrefix = "/" + "sild.registry.v1.AdminService/"

func (s *Server) authUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := s.authorize(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (s *Server) authStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := s.authorize(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return h(srv, ss)
}

func unauthenticated(msg string) error {
	return rpcerr.New(codes.Unauthenticated, rpcerr.ReasonUnauthenticated, "registry", msg)
}

// authorize checks the API key of AdminService calls. NodeService and
// ClusterService authenticate in their handlers (tokens, SVIDs).
func (s *Server) authorize(ctx context.Context, fullMethod string) error {
	method, ok := strings.CutPrefix(fullMethod, adminPrefix)
	if !ok {
		return nil
	}
	need, ok := roleOf[method]
	if !ok {
		need = registryv1.Role_ROLE_ADMIN
	}
	role, err := s.apiKeyRole(ctx)
	if err != nil {
		return err
	}
	if role < need {
		return rpcerr.New(codes.PermissionDenied, rpcerr.ReasonPermissionDenied, "registry",
			"role "+roleName(role)+" may not call "+method+" (needs "+roleName(need)+")")
	}
	return nil
}

func roleName(r registryv1.Role) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "ROLE_"))
}

// apiKeyRole returns the role of the bearer API key in ctx. Keys have the
// form "sild_<id>_<secret>"; the state holds the hash of the secret by id.
func (s *Server) apiKeyRole(ctx context.Context) (registryv1.Role, error) {
	key, ok := apikey.Bearer(ctx)
	if !ok {
		return 0, unauthenticated("missing API key: send metadata authorization: Bearer <key>")
	}
	rest, ok := strings.CutPrefix(key, "sild_")
	id, secret, ok2 := strings.Cut(rest, "_")
	if !ok || !ok2 {
		return 0, unauthenticated("malformed API key")
	}
	lookup := func() *registryv1.StoredApiKey {
		var stored *registryv1.StoredApiKey
		s.fsm.Read(func(st *fsm.State, _ uint64) { stored = st.APIKeys[id] })
		if stored == nil || !apikey.Check(stored.GetSecretHash(), secret) {
			return nil
		}
		return stored
	}
	stored := lookup()
	if stored == nil {
		// A key created a moment ago may not have reached this server
		// yet: catch up with the leader before refusing. Without a leader
		// the key is not known to be wrong: say that instead.
		if err := s.barrier(ctx, false); err != nil {
			return 0, err
		}
		stored = lookup()
	}
	if stored == nil {
		return 0, unauthenticated("unknown or revoked API key")
	}
	return stored.GetKey().GetRole(), nil
}

// peerSPIFFEID returns the verified SPIFFE ID of the client certificate of
// the call, checked against the ecosystem's roots.
func (s *Server) peerSPIFFEID(ctx context.Context) (spiffeid.ID, error) {
	certs, err := peerCertificates(ctx)
	if err != nil {
		return spiffeid.ID{}, err
	}
	id, _, err := x509svid.Verify(certs, s.bundle)
	if err != nil {
		return spiffeid.ID{}, unauthenticated("client certificate not trusted")
	}
	return id, nil
}

// peerCertificates returns the client certificates of a call (unverified).
func peerCertificates(ctx context.Context) ([]*x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, unauthenticated("no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return nil, unauthenticated("this call needs a client certificate (SVID)")
	}
	return ti.State.PeerCertificates, nil
}
