package demo

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/apikey"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry"
)

// readyTimeout bounds how long a registry server may take to become ready.
const readyTimeout = 30 * time.Second

// Registry is a running registry cluster of the demo.
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

// StartRegistry starts a cluster of n servers for instance on 127.0.0.1
// with data under d.Data/<instance>: the first bootstraps the ecosystem, the
// others join it as voters with server tokens. It returns once all are
// ready; d stops them on close.
func StartRegistry(ctx context.Context, d *Demo, instance, trustDomain string, n int) (*Registry, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, err
	}
	r := &Registry{Instance: instance, TrustDomain: td}
	base := filepath.Join(d.Data, instance)
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("r%d", i)
		cfg := registry.DefaultConfig()
		cfg.ServerID = id
		cfg.DataDir = filepath.Join(base, id)
		cfg.APIAddr, cfg.RaftAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
		cfg.Logger = d.Logger.With("instance", instance)
		if i == 1 {
			cfg.Bootstrap, cfg.Instance, cfg.TrustDomain = true, instance, trustDomain
		} else {
			tok, err := r.serverToken(ctx, id)
			if err != nil {
				return nil, err
			}
			cfg.Join, cfg.Token, cfg.TrustBundle = r.Servers[0].APIAddr(), tok, r.Roots
		}
		srv, err := startServer(ctx, d, cfg)
		if err != nil {
			return nil, fmt.Errorf("server %s: %w", id, err)
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

// startServer runs one registry server until the demo closes and waits
// until it is ready.
func startServer(ctx context.Context, d *Demo, cfg registry.Config) (*registry.Server, error) {
	srv, err := registry.New(cfg)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(runCtx) }()
	d.OnClose(func() error {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("registry server %s: %w", cfg.ServerID, err)
			}
			return nil
		case <-time.After(30 * time.Second):
			return fmt.Errorf("registry server %s did not stop", cfg.ServerID)
		}
	})
	ready := func() bool {
		select {
		case err := <-done:
			done <- err // keep it for close
			return true
		default:
			return srv.Ready()
		}
	}
	if err := waitFor(ctx, readyTimeout, cfg.ServerID+" ready", ready); err != nil {
		return nil, err
	}
	if !srv.Ready() {
		return nil, errors.New("stopped before it was ready (see the log with --verbose)")
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
// ecosystem's roots (a registry server's SVID), the admin API key on every call.
func (r *Registry) Dial(i int) (*grpc.ClientConn, error) {
	tc := tlsconfig.TLSClientConfig(x509bundle.FromX509Authorities(r.TrustDomain, r.Roots), tlsconfig.AdaptMatcher(func(id spiffeid.ID) error {
		if id.TrustDomain() != r.TrustDomain || !ident.IsRegistrySPIFFEID(id) {
			return fmt.Errorf("%s is not a registry server of %s", id, r.TrustDomain)
		}
		return nil
	}))
	return grpc.NewClient(r.Servers[i].APIAddr(), grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithPerRPCCredentials(apikey.Credentials(r.AdminKey, true)))
}

// Admin calls fn with an AdminService client of server i.
func (r *Registry) Admin(i int, fn func(registryv1.AdminServiceClient) error) error {
	conn, err := r.Dial(i)
	if err != nil {
		return err
	}
	defer conn.Close()
	return fn(registryv1.NewAdminServiceClient(conn))
}

func (r *Registry) serverToken(ctx context.Context, id string) (string, error) {
	var tok string
	err := r.Admin(0, func(c registryv1.AdminServiceClient) error {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		resp, err := c.CreateServerToken(ctx, &registryv1.CreateServerTokenRequest{ServerId: id, Voter: true})
		tok = resp.GetToken()
		return err
	})
	if err != nil {
		return "", fmt.Errorf("server token for %s: %w", id, err)
	}
	return tok, nil
}

func startRegistryEE(ctx context.Context, d *Demo) error {
	r, err := StartRegistry(ctx, d, "EE", "ee.sild.test", 3)
	if err != nil {
		return err
	}
	d.EE = r
	d.Printf("\nRegistry of EE (trust domain %s), 3 servers on 127.0.0.1:\n", r.TrustDomain.Name())
	for _, s := range r.Servers {
		d.Printf("  %s  api %s  raft %s  http %s\n", s.ID(), s.APIAddr(), s.RaftAddr(), s.HTTPAddr())
	}
	d.Printf("Admin API key: %s\n", r.AdminKey)
	d.Printf("Trust bundle:  %s\n", r.BundleFile)
	d.Printf("\nTry (in another terminal, from the repository):\n")
	d.Printf("  %s ctl --registry %s --trust %s --api-key %s raft status\n", d.Command, r.Servers[0].APIAddr(), r.BundleFile, r.AdminKey)
	d.Printf("or set the environment once:\n")
	d.Printf("  export SILD_REGISTRY=%s SILD_TRUST=%s SILD_API_KEY=%s\n", r.Servers[1].APIAddr(), r.BundleFile, r.AdminKey)
	d.Printf("  %s ctl member add EE/GOV/70000310 --name 'Ministry of Examples'\n", d.Command)
	d.Printf("  %s ctl subsystem add EE/GOV/70000310/licensing\n", d.Command)
	d.Printf("  %s ctl node add EE/GOV/70000310/ss1\n", d.Command)
	d.Printf("  %s ctl node token EE/GOV/70000310/ss1\n", d.Command)
	d.Printf("  %s ctl member list -o json\n", d.Command)
	d.Printf("  %s ctl config show\n", d.Command)
	return nil
}

// smokeRegistry writes a member and a subsystem through a follower, reads
// them back from another server and prints the Raft status.
func smokeRegistry(ctx context.Context, d *Demo) error {
	r := d.EE
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var st *registryv1.RaftStatusResponse
	if err := r.Admin(0, func(c registryv1.AdminServiceClient) (err error) {
		st, err = c.RaftStatus(ctx, &registryv1.RaftStatusRequest{})
		return err
	}); err != nil {
		return fmt.Errorf("raft status: %w", err)
	}
	follower, other := -1, -1
	for i, s := range r.Servers {
		switch {
		case follower < 0 && s.ID() != st.GetLeaderId():
			follower = i
		case other < 0:
			other = i
		}
	}
	if follower < 0 || other < 0 {
		return fmt.Errorf("no follower (leader %q)", st.GetLeaderId())
	}
	member := ident.Member{Instance: r.Instance, Class: "GOV", Code: "70000310"}
	sub := ident.Subsystem{Member: member, Code: "licensing"}
	err := r.Admin(follower, func(c registryv1.AdminServiceClient) error {
		if _, err := c.AddMember(ctx, &registryv1.AddMemberRequest{Id: member.Proto(), Name: "Ministry of Examples"}); err != nil {
			return fmt.Errorf("add member: %w", err)
		}
		if _, err := c.AddSubsystem(ctx, &registryv1.AddSubsystemRequest{Id: sub.Proto()}); err != nil {
			return fmt.Errorf("add subsystem: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	d.Printf("  wrote member %s and subsystem %s through follower %s\n", member, sub, r.Servers[follower].ID())
	err = r.Admin(other, func(c registryv1.AdminServiceClient) error {
		ms, err := c.ListMembers(ctx, &registryv1.ListMembersRequest{})
		if err != nil {
			return fmt.Errorf("list members: %w", err)
		}
		if !containsMember(ms.GetMembers(), member) {
			return fmt.Errorf("member %s not listed by %s", member, r.Servers[other].ID())
		}
		ss, err := c.ListSubsystems(ctx, &registryv1.ListSubsystemsRequest{})
		if err != nil {
			return fmt.Errorf("list subsystems: %w", err)
		}
		found := false
		for _, s := range ss.GetSubsystems() {
			found = found || proto.Equal(s.GetId(), sub.Proto())
		}
		if !found {
			return fmt.Errorf("subsystem %s not listed by %s", sub, r.Servers[other].ID())
		}
		st, err = c.RaftStatus(ctx, &registryv1.RaftStatusRequest{})
		return err
	})
	if err != nil {
		return err
	}
	d.Printf("  read both back from %s\n", r.Servers[other].ID())
	d.Printf("  raft: leader %s, term %d, commit index %d, servers:", st.GetLeaderId(), st.GetTerm(), st.GetCommitIndex())
	for _, s := range st.GetServers() {
		d.Printf(" %s(voter=%t)", s.GetId(), s.GetVoter())
	}
	d.Printf("\n")
	if len(st.GetServers()) != len(r.Servers) {
		return fmt.Errorf("raft configuration has %d servers, want %d", len(st.GetServers()), len(r.Servers))
	}
	return nil
}

func containsMember(ms []*registryv1.Member, m ident.Member) bool {
	for _, x := range ms {
		if proto.Equal(x.GetId(), m.Proto()) {
			return true
		}
	}
	return false
}
