package registry

import (
	"context"
	"crypto"
	"net"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry/fsm"
)

// nodeAPI implements NodeService: nodes join with a one-time token, then
// renew and watch the configuration over mTLS with their SVID.
type nodeAPI struct {
	registryv1.UnimplementedNodeServiceServer
	s *Server
}

// checkAddress validates a node's exchange address (host:port).
func checkAddress(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return badArg("address: want host:port, got " + strconv.Quote(addr))
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return badArg("address: bad port " + strconv.Quote(port))
	}
	return nil
}

// csrKeys parses the two CSRs of a join or renewal.
func csrKeys(svidCSR, signingCSR []byte) (svidPub, signPub crypto.PublicKey, svidHash, signHash string, err error) {
	if svidPub, err = pki.ParseCSR(svidCSR); err != nil {
		return nil, nil, "", "", badArg("svid_csr: " + err.Error())
	}
	if signPub, err = pki.ParseCSR(signingCSR); err != nil {
		return nil, nil, "", "", badArg("signing_csr: " + err.Error())
	}
	if svidHash, err = pki.KeyHash(svidPub); err != nil {
		return nil, nil, "", "", badArg("svid_csr: " + err.Error())
	}
	if signHash, err = pki.KeyHash(signPub); err != nil {
		return nil, nil, "", "", badArg("signing_csr: " + err.Error())
	}
	if svidHash == signHash {
		return nil, nil, "", "", badArg("signing_csr: the signing key must differ from the SVID key")
	}
	return svidPub, signPub, svidHash, signHash, nil
}

// issueNode certifies a node's SVID and signing keys.
func (s *Server) issueNode(n ident.Node, svidPub, signPub crypto.PublicKey) (*registryv1.Certificates, error) {
	var ca *pki.CA
	var err error
	s.fsm.Read(func(st *fsm.State, _ uint64) { ca, err = stateCA(st) })
	if err != nil {
		return nil, unavailable("ca not ready")
	}
	id, err := ident.NodeSPIFFEID(ca.TrustDomain, n)
	if err != nil {
		return nil, badArg(err.Error())
	}
	now := time.Now()
	svid, err := ca.Issue(pki.KindSVID, svidPub, id, s.cfg.NodeSVIDTTL, now)
	if err != nil {
		return nil, rpcerr.New(codes.Internal, rpcerr.ReasonInternal, "registry", "issue svid")
	}
	sign, err := ca.Issue(pki.KindSigning, signPub, id, s.cfg.NodeSVIDTTL, now)
	if err != nil {
		return nil, rpcerr.New(codes.Internal, rpcerr.ReasonInternal, "registry", "issue signing certificate")
	}
	var roots [][]byte
	s.fsm.Read(func(st *fsm.State, _ uint64) { roots = st.Roots() })
	return &registryv1.Certificates{
		SvidChain: [][]byte{svid.Raw}, SigningChain: [][]byte{sign.Raw}, TrustBundle: roots,
	}, nil
}

func (n *nodeAPI) Join(ctx context.Context, r *registryv1.JoinRequest) (*registryv1.JoinResponse, error) {
	if r.GetToken() == "" {
		return nil, badArg("token: required")
	}
	node, err := ident.NodeFromProto(r.GetNode())
	if err != nil {
		return nil, rpcerr.New(codes.InvalidArgument, rpcerr.ReasonInvalidIdentifier, "registry", err.Error())
	}
	if err := checkAddress(r.GetAddress()); err != nil {
		return nil, err
	}
	svidPub, signPub, svidHash, signHash, err := csrKeys(r.GetSvidCsr(), r.GetSigningCsr())
	if err != nil {
		return nil, err
	}
	_, err = n.s.propose(ctx, &registryv1.Command{Op: &registryv1.Command_NodeJoined{NodeJoined: &registryv1.NodeJoined{
		TokenHash: hashSecret(r.GetToken()), Node: node.Proto(), Address: r.GetAddress(),
		SvidKeyHash: svidHash, SigningKeyHash: signHash,
	}}})
	if err != nil {
		return nil, err
	}
	certs, err := n.s.issueNode(node, svidPub, signPub)
	if err != nil {
		return nil, err
	}
	n.s.log.Info("node joined", "node", node.String(), "address", r.GetAddress())
	resp := &registryv1.JoinResponse{Certificates: certs}
	if p, _ := n.s.current(); p != nil {
		resp.Config = p.signed
	}
	return resp, nil
}

// callerNode returns the node whose SVID authenticated the call.
func (s *Server) callerNode(ctx context.Context) (ident.Node, error) {
	id, err := s.peerSPIFFEID(ctx)
	if err != nil {
		return ident.Node{}, err
	}
	var instance string
	s.fsm.Read(func(st *fsm.State, _ uint64) { instance = st.Instance })
	n, err := ident.NodeFromSPIFFEID(id, instance)
	if err != nil {
		return ident.Node{}, rpcerr.New(codes.PermissionDenied, rpcerr.ReasonPermissionDenied, "registry", "caller is not a node of this ecosystem")
	}
	return n, nil
}

func (n *nodeAPI) Renew(ctx context.Context, r *registryv1.RenewRequest) (*registryv1.RenewResponse, error) {
	node, err := n.s.callerNode(ctx)
	if err != nil {
		return nil, err
	}
	if r.GetAddress() != "" {
		if err := checkAddress(r.GetAddress()); err != nil {
			return nil, err
		}
	}
	svidPub, signPub, svidHash, signHash, err := csrKeys(r.GetSvidCsr(), r.GetSigningCsr())
	if err != nil {
		return nil, err
	}
	_, err = n.s.propose(ctx, &registryv1.Command{Op: &registryv1.Command_NodeRenewed{NodeRenewed: &registryv1.NodeRenewed{
		Node: node.Proto(), Address: r.GetAddress(), SvidKeyHash: svidHash, SigningKeyHash: signHash,
	}}})
	if err != nil {
		return nil, err
	}
	certs, err := n.s.issueNode(node, svidPub, signPub)
	if err != nil {
		return nil, err
	}
	return &registryv1.RenewResponse{Certificates: certs}, nil
}

// callerInDomain checks that the caller has an SVID of this ecosystem (a node
// or a registry server).
func (s *Server) callerInDomain(ctx context.Context) (spiffeid.ID, error) {
	id, err := s.peerSPIFFEID(ctx)
	if err != nil {
		return id, err
	}
	if !ident.IsNodeSPIFFEID(id) && !ident.IsRegistrySPIFFEID(id) {
		return id, rpcerr.New(codes.PermissionDenied, rpcerr.ReasonPermissionDenied, "registry", "caller is not a node")
	}
	return id, nil
}

func (n *nodeAPI) GetConfig(ctx context.Context, _ *registryv1.GetConfigRequest) (*registryv1.GetConfigResponse, error) {
	if _, err := n.s.callerInDomain(ctx); err != nil {
		return nil, err
	}
	p, _ := n.s.current()
	if p == nil {
		return nil, unavailable("no configuration published yet")
	}
	return &registryv1.GetConfigResponse{Config: p.signed}, nil
}

// WatchConfig sends the current configuration, then every new one, until
// the caller goes away.
func (n *nodeAPI) WatchConfig(r *registryv1.WatchConfigRequest, stream registryv1.NodeService_WatchConfigServer) error {
	ctx := stream.Context()
	if _, err := n.s.callerInDomain(ctx); err != nil {
		return err
	}
	var sent *published
	for {
		p, ch := n.s.current()
		if p != nil && p != sent {
			if err := stream.Send(&registryv1.WatchConfigResponse{Config: p.signed}); err != nil {
				return err
			}
			sent = p
		}
		select {
		case <-ctx.Done():
			return nil
		case <-n.s.stopping:
			return unavailable("registry server shutting down")
		case <-ch:
		}
	}
}
