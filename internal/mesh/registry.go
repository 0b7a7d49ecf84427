package mesh

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/apikey"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry"
)

// readyTimeout bounds how long a registry server or node may take to
// become ready.
const readyTimeout = 30 * time.Second

// callTimeout bounds one admin call.
const callTimeout = 30 * time.Second

// RegistryOptions describe a registry cluster to start.
type RegistryOptions struct {
	Instance    string
	TrustDomain string
	// Servers is the number of voters (default 1).
	Servers int
	// Federation serves a bundle endpoint and the FederationService on
	// every server (127.0.0.1), re-checking links every FederationRefresh
	// (default 500 ms, so that a demo's links come up at once).
	Federation        bool
	FederationRefresh time.Duration
	// Adjust, if set, changes each server's configuration last.
	Adjust func(*registry.Config)
}

// Registry is a running registry cluster.
type Registry struct {
	Instance    string
	TrustDomain spiffeid.TrustDomain
	// Servers are the cluster's servers; Servers[0] bootstrapped it.
	Servers []*registry.Server
	// AdminKey is the bootstrap admin API key.
	AdminKey string
	// BundleFile is the PEM file of the ecosystem's roots.
	BundleFile string
	Roots      []*x509.Certificate
}

// StartRegistry starts a cluster on 127.0.0.1 with data under
// m.Dir/<instance>: the first server bootstraps the ecosystem, the others
// join it as voters with server tokens. It returns once all are ready.
func (m *Mesh) StartRegistry(ctx context.Context, o RegistryOptions) (*Registry, error) {
	td, err := spiffeid.TrustDomainFromString(o.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", o.Instance, err)
	}
	if o.Servers <= 0 {
		o.Servers = 1
	}
	if o.FederationRefresh <= 0 {
		o.FederationRefresh = 500 * time.Millisecond
	}
	r := &Registry{Instance: o.Instance, TrustDomain: td}
	base := filepath.Join(m.Dir, o.Instance)
	for i := 1; i <= o.Servers; i++ {
		id := fmt.Sprintf("r%d", i)
		cfg := registry.DefaultConfig()
		cfg.ServerID = id
		cfg.DataDir = filepath.Join(base, id)
		cfg.APIAddr, cfg.RaftAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
		if o.Federation {
			cfg.FederationAddr, cfg.FederationRefresh = "127.0.0.1:0", o.FederationRefresh
		}
		cfg.Logger = m.Logger.With("instance", o.Instance, "server", id)
		if i == 1 {
			cfg.Bootstrap, cfg.Instance, cfg.TrustDomain = true, o.Instance, o.TrustDomain
		} else {
			tok, err := r.serverToken(ctx, id)
			if err != nil {
				return nil, err
			}
			cfg.Join, cfg.Token, cfg.TrustBundle = r.Servers[0].APIAddr(), tok, r.Roots
		}
		if o.Adjust != nil {
			o.Adjust(&cfg)
		}
		srv, err := m.startServer(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("registry %s server %s: %w", o.Instance, id, err)
		}
		r.Servers = append(r.Servers, srv)
		if i == 1 {
			if err := r.loadBootstrap(cfg.DataDir); err != nil {
				return nil, err
			}
		}
	}
	return r, nil
}

func (m *Mesh) startServer(ctx context.Context, cfg registry.Config) (*registry.Server, error) {
	srv, err := registry.New(cfg)
	if err != nil {
		return nil, err
	}
	done := m.run("registry server "+cfg.ServerID, srv.Run)
	var runErr error
	stopped := false
	ready := func() bool {
		select {
		case runErr = <-done:
			stopped = true
			return true
		default:
			return srv.Ready()
		}
	}
	if err := WaitFor(ctx, readyTimeout, cfg.ServerID+" ready", ready); err != nil {
		return nil, err
	}
	if stopped {
		return nil, fmt.Errorf("stopped before it was ready: %v", runErr)
	}
	return srv, nil
}

func (r *Registry) loadBootstrap(dir string) error {
	key, err := os.ReadFile(filepath.Join(dir, registry.FileAdminKey))
	if err != nil {
		return fmt.Errorf("admin key: %w", err)
	}
	r.AdminKey = strings.TrimSpace(string(key))
	r.BundleFile = filepath.Join(dir, registry.FileBundle)
	pem, err := os.ReadFile(r.BundleFile)
	if err != nil {
		return fmt.Errorf("trust bundle: %w", err)
	}
	if r.Roots, err = pki.DecodeCerts(pem); err != nil {
		return fmt.Errorf("trust bundle: %w", err)
	}
	return nil
}

// Dial connects to server i's API as an operator: TLS verified against the
// ecosystem's roots (a registry server's SVID), the admin API key on every
// call.
func (r *Registry) Dial(i int) (*grpc.ClientConn, error) {
	tc := tlsconfig.TLSClientConfig(x509bundle.FromX509Authorities(r.TrustDomain, r.Roots), pki.AuthorizeRegistry(r.TrustDomain))
	return grpc.NewClient(r.Servers[i].APIAddr(), grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithPerRPCCredentials(apikey.Credentials(r.AdminKey, true)))
}

// Admin calls fn with an AdminService client of server i and a context
// bounded by callTimeout.
func (r *Registry) Admin(ctx context.Context, i int, fn func(context.Context, registryv1.AdminServiceClient) error) error {
	conn, err := r.Dial(i)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return fn(ctx, registryv1.NewAdminServiceClient(conn))
}

func (r *Registry) serverToken(ctx context.Context, id string) (string, error) {
	var tok string
	err := r.Admin(ctx, 0, func(ctx context.Context, c registryv1.AdminServiceClient) error {
		resp, err := c.CreateServerToken(ctx, &registryv1.CreateServerTokenRequest{ServerId: id, Voter: true})
		tok = resp.GetToken()
		return err
	})
	if err != nil {
		return "", fmt.Errorf("server token for %s: %w", id, err)
	}
	return tok, nil
}

// AddMember adds a member; one that exists already is fine.
func (r *Registry) AddMember(ctx context.Context, id ident.Member, name string) error {
	return r.Admin(ctx, 0, func(ctx context.Context, c registryv1.AdminServiceClient) error {
		_, err := c.AddMember(ctx, &registryv1.AddMemberRequest{Id: id.Proto(), Name: name})
		if status.Code(err) == codes.AlreadyExists {
			err = nil
		}
		if err != nil {
			return fmt.Errorf("add member %s: %w", id, err)
		}
		return nil
	})
}

// AddSubsystem adds a subsystem and registers it on node.
func (r *Registry) AddSubsystem(ctx context.Context, sub ident.Subsystem, on ident.Node) error {
	return r.Admin(ctx, 0, func(ctx context.Context, c registryv1.AdminServiceClient) error {
		if _, err := c.AddSubsystem(ctx, &registryv1.AddSubsystemRequest{Id: sub.Proto()}); err != nil && status.Code(err) != codes.AlreadyExists {
			return fmt.Errorf("add subsystem %s: %w", sub, err)
		}
		if _, err := c.RegisterSubsystem(ctx, &registryv1.RegisterSubsystemRequest{Subsystem: sub.Proto(), Node: on.Proto()}); err != nil {
			return fmt.Errorf("register subsystem %s on %s: %w", sub, on, err)
		}
		return nil
	})
}

// NodeToken adds the node (and its member, if new) and returns a one-time
// join token for it.
func (r *Registry) NodeToken(ctx context.Context, n ident.Node) (string, error) {
	if err := r.AddMember(ctx, n.Member, n.Member.Code); err != nil {
		return "", err
	}
	var tok string
	err := r.Admin(ctx, 0, func(ctx context.Context, c registryv1.AdminServiceClient) error {
		if _, err := c.AddNode(ctx, &registryv1.AddNodeRequest{Id: n.Proto()}); err != nil {
			return fmt.Errorf("add node %s: %w", n, err)
		}
		resp, err := c.CreateJoinToken(ctx, &registryv1.CreateJoinTokenRequest{Node: n.Proto()})
		if err != nil {
			return fmt.Errorf("join token for %s: %w", n, err)
		}
		tok = resp.GetToken()
		return nil
	})
	return tok, err
}

// Publish adds a service to the catalogue, enabled, with its descriptors.
func (r *Registry) Publish(ctx context.Context, svc ident.Service, descriptorSet []byte) error {
	return r.Admin(ctx, 0, func(ctx context.Context, c registryv1.AdminServiceClient) error {
		_, err := c.PublishService(ctx, &registryv1.PublishServiceRequest{Service: svc.Proto(), Enabled: true, FileDescriptorSet: descriptorSet})
		if err != nil {
			return fmt.Errorf("publish %s: %w", svc, err)
		}
		return nil
	})
}

// Link adds this ecosystem's side of a federation link to peer: its bundle
// endpoint (server 0), the SPIFFE ID that endpoint presents and the
// fingerprint of its first root.
func (r *Registry) Link(ctx context.Context, peer *Registry) error {
	url := peer.Servers[0].BundleEndpointURL()
	if url == "" {
		return fmt.Errorf("link %s: %s serves no bundle endpoint", peer.Instance, peer.Instance)
	}
	endpoint, err := ident.RegistrySPIFFEID(peer.TrustDomain, peer.Servers[0].ID())
	if err != nil {
		return fmt.Errorf("link %s: %w", peer.Instance, err)
	}
	return r.Admin(ctx, 0, func(ctx context.Context, c registryv1.AdminServiceClient) error {
		_, err := c.AddFederationLink(ctx, &registryv1.AddFederationLinkRequest{
			Instance: peer.Instance, TrustDomain: peer.TrustDomain.Name(), BundleEndpointUrl: url,
			EndpointSpiffeId: endpoint.String(),
			RootFingerprint:  pki.Fingerprint(peer.Roots[0]),
		})
		if err != nil {
			return fmt.Errorf("link %s: %w", peer.Instance, err)
		}
		return nil
	})
}

// LinkState returns this side's view of the link to instance (nil if none).
func (r *Registry) LinkState(ctx context.Context, instance string) (*registryv1.FederationLink, error) {
	var link *registryv1.FederationLink
	err := r.Admin(ctx, 0, func(ctx context.Context, c registryv1.AdminServiceClient) error {
		resp, err := c.ListFederationLinks(ctx, &registryv1.ListFederationLinksRequest{})
		for _, l := range resp.GetLinks() {
			if l.GetInstance() == instance {
				link = l
			}
		}
		return err
	})
	return link, err
}

// Export offers a subsystem's services to the federated instance to.
func (r *Registry) Export(ctx context.Context, sub ident.Subsystem, to string) error {
	return r.Admin(ctx, 0, func(ctx context.Context, c registryv1.AdminServiceClient) error {
		if _, err := c.AddExport(ctx, &registryv1.AddExportRequest{Subsystem: sub.Proto(), ToInstance: to}); err != nil {
			return fmt.Errorf("export %s to %s: %w", sub, to, err)
		}
		return nil
	})
}
