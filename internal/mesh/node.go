package mesh

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/apikey"
	"github.com/sildmesh/sild/ledger"
	"github.com/sildmesh/sild/node"
	"github.com/sildmesh/sild/node/topology"
)

// Node is a running node.
type Node struct {
	*node.Node
	// Registry is the ecosystem the node joined.
	Registry *Registry
	// AdminKey is an admin API key of the node's admin API.
	AdminKey string
	// Dir is the node's data directory.
	Dir string
}

// StartNode joins node id to r with the one-time token (from
// Registry.NodeToken; "" adds the node and mints one), runs it until Close,
// and returns once it is ready. subs are the subsystems it serves; register
// them on it in the registry (Registry.AddSubsystem) and wait for them with
// WaitTopology. adjust may change the configuration last.
func (m *Mesh) StartNode(ctx context.Context, r *Registry, id ident.Node, tok string, subs []node.SubsystemConfig, adjust func(*node.Config)) (*Node, error) {
	if tok == "" {
		var err error
		if tok, err = r.NodeToken(ctx, id); err != nil {
			return nil, err
		}
	}
	key, err := apikey.Generate()
	if err != nil {
		return nil, err
	}
	cfg := node.DefaultConfig()
	cfg.Node = id.String()
	cfg.Registry = r.Servers[0].APIAddr()
	cfg.TrustBundle = r.BundleFile
	cfg.JoinToken = tok
	cfg.DataDir = filepath.Join(m.Dir, r.Instance, "nodes", strings.ReplaceAll(id.String(), "/", "_"))
	cfg.ConsumerListen, cfg.ExchangeListen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Subsystems = subs
	cfg.AdminKeys = []node.AdminKey{{Hash: apikey.Hash(key), Role: "admin"}}
	cfg.Logger = m.Logger.With("node", id.String())
	if adjust != nil {
		adjust(&cfg)
	}
	n, err := node.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", id, err)
	}
	done := m.run("node "+id.String(), n.Run)
	var runErr error
	stopped := false
	ready := func() bool {
		select {
		case runErr = <-done:
			stopped = true
			return true
		default:
		}
		resp, err := http.Get("http://" + n.AdminAddr() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	if err := WaitFor(ctx, readyTimeout, "node "+id.String()+" ready", ready); err != nil {
		return nil, err
	}
	if stopped {
		return nil, fmt.Errorf("node %s stopped before it was ready: %v", id, runErr)
	}
	return &Node{Node: n, Registry: r, AdminKey: key, Dir: cfg.DataDir}, nil
}

// WaitTopology waits until the node's configuration satisfies cond.
func (n *Node) WaitTopology(ctx context.Context, what string, cond func(*topology.Topology) bool) error {
	return WaitFor(ctx, readyTimeout, n.ID().String()+": "+what, func() bool {
		top := n.Topology()
		return top != nil && cond(top)
	})
}

// Grant gives client the whole service svc, over the node's admin API as
// its operator would.
func (n *Node) Grant(ctx context.Context, client ident.Subsystem, svc ident.Service) error {
	conn, err := grpc.NewClient(n.AdminAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+n.AdminKey), callTimeout)
	defer cancel()
	_, err = nodev1.NewAdminServiceClient(conn).GrantAccess(ctx, &nodev1.GrantAccessRequest{Right: &nodev1.AccessRight{
		Client:  &nodev1.AccessClient{Kind: &nodev1.AccessClient_Subsystem{Subsystem: client.Proto()}},
		Service: svc.Proto(),
	}})
	if err != nil {
		return fmt.Errorf("grant %s to %s on %s: %w", svc, client, n.ID(), err)
	}
	return nil
}

// Receipt returns the first ledger record of message id (a later one would
// be the refusal of a replay).
func (n *Node) Receipt(id string) (*ledger.Stored, error) {
	l := n.Ledger()
	if l == nil {
		return nil, fmt.Errorf("%s: no ledger", n.ID())
	}
	recs, err := l.ByMessageID(id)
	if err != nil {
		return nil, fmt.Errorf("%s ledger: %w", n.ID(), err)
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("%s ledger: no record of message %s", n.ID(), id)
	}
	return recs[0], nil
}

// Dial connects to the node's consumer listener (plaintext, loopback) as a
// member system does.
func (n *Node) Dial(opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	return grpc.NewClient(n.ConsumerAddr(), append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
}
