package registry

import (
	"context"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry/fsm"
)

// clusterAPI implements ClusterService, spoken between registry servers.
type clusterAPI struct {
	registryv1.UnimplementedClusterServiceServer
	s *Server
}

func notLeader() error {
	return rpcerr.New(codes.Unavailable, rpcerr.ReasonNotLeader, "registry", "not the leader")
}

// callerRegistry checks that the caller is a registry server of ours.
func (s *Server) callerRegistry(ctx context.Context) error {
	id, err := s.peerSPIFFEID(ctx)
	if err != nil {
		return err
	}
	if !ident.IsRegistrySPIFFEID(id) {
		return rpcerr.New(codes.PermissionDenied, rpcerr.ReasonPermissionDenied, "registry", "caller is not a registry server")
	}
	return nil
}

func (c *clusterAPI) Propose(ctx context.Context, r *registryv1.ProposeRequest) (*registryv1.ProposeResponse, error) {
	if err := c.s.callerRegistry(ctx); err != nil {
		return nil, err
	}
	if c.s.raft.State() != raft.Leader {
		return nil, notLeader()
	}
	var cmd registryv1.Command
	if err := proto.Unmarshal(r.GetCommand(), &cmd); err != nil {
		return nil, badArg("command: does not parse")
	}
	if _, err := c.s.applyLocal(r.GetCommand()); err != nil {
		if err == errNoLeader {
			return nil, notLeader()
		}
		return nil, err
	}
	return &registryv1.ProposeResponse{Index: c.s.fsm.Index()}, nil
}

func (c *clusterAPI) ReadIndex(ctx context.Context, _ *registryv1.ReadIndexRequest) (*registryv1.ReadIndexResponse, error) {
	if err := c.s.callerRegistry(ctx); err != nil {
		return nil, err
	}
	if c.s.raft.State() != raft.Leader {
		return nil, notLeader()
	}
	idx, err := c.s.readIndex(ctx)
	if err != nil {
		return nil, notLeader()
	}
	return &registryv1.ReadIndexResponse{Index: idx}, nil
}

// JoinCluster admits a new registry server holding a server token. It runs
// on the leader; a follower forwards the call.
func (c *clusterAPI) JoinCluster(ctx context.Context, r *registryv1.JoinClusterRequest) (*registryv1.JoinClusterResponse, error) {
	if c.s.raft.State() != raft.Leader {
		conn, err := c.s.leaderConn()
		if err != nil {
			return nil, unavailable("no leader to admit the server; retry")
		}
		return registryv1.NewClusterServiceClient(conn).JoinCluster(ctx, r)
	}
	info := r.GetServer()
	if err := ident.CheckCode("server id", info.GetId()); err != nil {
		return nil, rpcerr.New(codes.InvalidArgument, rpcerr.ReasonInvalidIdentifier, "registry", err.Error())
	}
	for name, addr := range map[string]string{"raft_address": info.GetRaftAddress(), "api_address": info.GetApiAddress()} {
		if err := checkAddress(addr); err != nil {
			return nil, badArg(name + ": " + err.Error())
		}
	}
	pub, err := pki.ParseCSR(r.GetSvidCsr())
	if err != nil {
		return nil, badArg("svid_csr: " + err.Error())
	}
	var voter bool
	c.s.fsm.Read(func(st *fsm.State, _ uint64) {
		if t := st.Tokens[hashSecret(r.GetToken())]; t != nil {
			voter = t.GetVoter()
		}
	})
	if _, err := c.s.propose(ctx, &registryv1.Command{Op: &registryv1.Command_ServerJoined{ServerJoined: &registryv1.ServerJoined{
		TokenHash: hashSecret(r.GetToken()), Server: info,
	}}}); err != nil {
		return nil, err
	}
	var ca *pki.CA
	c.s.fsm.Read(func(st *fsm.State, _ uint64) { ca, err = stateCA(st) })
	if err != nil {
		return nil, unavailable("ca not ready")
	}
	id, err := ident.RegistrySPIFFEID(ca.TrustDomain, info.GetId())
	if err != nil {
		return nil, badArg(err.Error())
	}
	cert, err := ca.Issue(pki.KindSVID, pub, id, c.s.cfg.NodeSVIDTTL, time.Now())
	if err != nil {
		return nil, rpcerr.New(codes.Internal, rpcerr.ReasonInternal, "registry", "issue svid")
	}
	add := c.s.raft.AddNonvoter
	if voter {
		add = c.s.raft.AddVoter
	}
	if err := add(raft.ServerID(info.GetId()), raft.ServerAddress(info.GetRaftAddress()), 0, applyTimeout).Error(); err != nil {
		return nil, unavailable("add to raft: " + err.Error())
	}
	c.s.log.Info("registry server joined", "id", info.GetId(), "voter", voter, "raft", info.GetRaftAddress())
	var roots [][]byte
	c.s.fsm.Read(func(st *fsm.State, _ uint64) { roots = st.Roots() })
	return &registryv1.JoinClusterResponse{Certificates: &registryv1.Certificates{
		SvidChain: [][]byte{cert.Raw}, TrustBundle: roots,
	}}, nil
}
