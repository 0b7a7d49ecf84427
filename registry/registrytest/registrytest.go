// Package registrytest starts real registry clusters on loopback for tests:
// real servers, Raft over mTLS, Badger on the test's temporary directory.
// The first server bootstraps the ecosystem EE (trust domain ee.sild.test);
// the others join with server tokens. Servers can be stopped, restarted on
// their data directory and addresses, and cut off from Raft.
package registrytest

import (
	"context"
	"crypto/x509"

	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry"
	"github.com/sildmesh/sild/registry/fsm"
)

// cluster is a registry cluster of real servers on loopback for tests.
type Cluster struct {
	t      testing.TB
	adjust func(*registry.Config)
	// Servers are all servers ever started, live or stopped.
	Servers []*Member
	// Admin is the bootstrap admin API key.
	Admin string
	// Roots are the ecosystem's root certificates.
	Roots []*x509.Certificate
}

type Member struct {
	ID     string
	Dir    string
	Srv    *registry.Server
	cancel context.CancelFunc
	done   chan error
	api    string // fixed across restarts
	raft   string
	http   string
}

func config(id, dir string) registry.Config {
	cfg := registry.DefaultConfig()
	cfg.ServerID = id
	cfg.Instance = "EE"
	cfg.TrustDomain = "ee.sild.test"
	cfg.DataDir = dir
	cfg.APIAddr = "127.0.0.1:0"
	cfg.RaftAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	if os.Getenv("SILD_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("id", id)
	}
	return cfg
}

// Start starts n servers: the first bootstraps, the others join as voters.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	return StartWith(t, n, nil)
}

// StartWith is Start with a function that adjusts every server's Config
// (e.g. a short ConfigTTL).
func StartWith(t testing.TB, n int, adjust func(*registry.Config)) *Cluster {
	t.Helper()
	c := &Cluster{t: t, adjust: adjust}
	base := t.TempDir()
	first := &Member{ID: "r1", Dir: filepath.Join(base, "r1")}
	cfg := config(first.ID, first.Dir)
	cfg.Bootstrap = true
	c.start(first, cfg)
	c.Servers = append(c.Servers, first)
	c.WaitReady(first)
	// A restored ecosystem has no new admin key: its keys are the backup's.
	if key, err := os.ReadFile(filepath.Join(first.Dir, registry.FileAdminKey)); err == nil {
		c.Admin = strings.TrimSpace(string(key))
	}
	bundle, err := os.ReadFile(filepath.Join(first.Dir, registry.FileBundle))
	if err != nil {
		t.Fatal(err)
	}
	if c.Roots, err = pki.DecodeCerts(bundle); err != nil {
		t.Fatal(err)
	}
	for i := 2; i <= n; i++ {
		c.Add(fmt.Sprintf("r%d", i), true, filepath.Join(base, fmt.Sprintf("r%d", i)))
	}
	return c
}

// Add joins a new server through the admin API of the first live server.
func (c *Cluster) Add(id string, voter bool, dir string) *Member {
	c.t.Helper()
	m := c.Join(id, dir, c.ServerToken(id, voter))
	c.WaitReady(m)
	return m
}

// ServerToken creates a one-time token for server id to join.
func (c *Cluster) ServerToken(id string, voter bool) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := c.AdminClient(c.Live()[0]).CreateServerToken(c.Ctx(ctx), &registryv1.CreateServerTokenRequest{ServerId: id, Voter: voter})
	if err != nil {
		c.t.Fatal(err)
	}
	return tok.GetToken()
}

// Join starts a new server in dir that joins with tok through the first
// live server; it does not wait for it to be ready.
func (c *Cluster) Join(id, dir, tok string) *Member {
	c.t.Helper()
	m := &Member{ID: id, Dir: dir}
	cfg := config(id, dir)
	cfg.Join = c.Live()[0].Srv.APIAddr()
	cfg.Token = tok
	cfg.TrustBundle = c.Roots
	c.start(m, cfg)
	c.Servers = append(c.Servers, m)
	return m
}

func (c *Cluster) start(m *Member, cfg registry.Config) {
	c.t.Helper()
	if m.api != "" {
		cfg.APIAddr, cfg.RaftAddr, cfg.HTTPAddr = m.api, m.raft, m.http
	}
	if c.adjust != nil {
		c.adjust(&cfg)
	}
	var srv *registry.Server
	var err error
	// A just-closed port can take a moment to be free again.
	for deadline := time.Now().Add(10 * time.Second); ; {
		srv, err = registry.New(cfg)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	m.Srv = srv
	m.api, m.raft, m.http = srv.APIAddr(), srv.RaftAddr(), srv.HTTPAddr()
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	m.done = make(chan error, 1)
	go func() { m.done <- srv.Run(ctx) }()
	c.t.Cleanup(func() { c.Stop(m) })
}

// Stop shuts a server down (idempotent).
func (c *Cluster) Stop(m *Member) {
	if m.cancel == nil {
		return
	}
	m.cancel()
	m.cancel = nil
	select {
	case err := <-m.done:
		if err != nil {
			c.t.Errorf("server %s: %v", m.ID, err)
		}
	case <-time.After(30 * time.Second):
		c.t.Errorf("server %s did not stop", m.ID)
	}
}

// Restart starts a stopped server again on its data directory and addresses.
func (c *Cluster) Restart(m *Member) {
	c.t.Helper()
	c.start(m, config(m.ID, m.Dir))
}

func (c *Cluster) Live() []*Member {
	var out []*Member
	for _, m := range c.Servers {
		if m.cancel != nil {
			out = append(out, m)
		}
	}
	return out
}

func (c *Cluster) WaitReady(m *Member) {
	c.t.Helper()
	WaitFor(c.t, 30*time.Second, m.ID+" ready", func() bool {
		return m.Srv.Ready()
	})
}

// Leader waits for a live leader and returns it.
func (c *Cluster) Leader() *Member {
	c.t.Helper()
	var l *Member
	WaitFor(c.t, 30*time.Second, "a leader", func() bool {
		for _, m := range c.Live() {
			if m.Srv.Raft() != nil && m.Srv.Raft().State() == raft.Leader {
				l = m
				return true
			}
		}
		return false
	})
	return l
}

func (c *Cluster) Followers() []*Member {
	l := c.Leader()
	var out []*Member
	for _, m := range c.Live() {
		if m != l {
			out = append(out, m)
		}
	}
	return out
}

// Ctx adds the admin API key.
func (c *Cluster) Ctx(ctx context.Context) context.Context {
	return WithKey(ctx, c.Admin)
}

func WithKey(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

var connsMu sync.Mutex

// Conn dials a server's API as an operator would (TLS, no client cert).
func (c *Cluster) Conn(m *Member) *grpc.ClientConn {
	c.t.Helper()
	td, err := pki.TrustDomainOf(c.Roots)
	if err != nil {
		c.t.Fatal(err)
	}
	tc := tlsconfig.TLSClientConfig(x509bundle.FromX509Authorities(td, c.Roots), pki.AuthorizeRegistry(td))
	conn, err := grpc.NewClient(m.api, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		c.t.Fatal(err)
	}
	connsMu.Lock()
	c.t.Cleanup(func() { conn.Close() })
	connsMu.Unlock()
	return conn
}

func (c *Cluster) AdminClient(m *Member) registryv1.AdminServiceClient {
	return registryv1.NewAdminServiceClient(c.Conn(m))
}

// State returns a server's replicated state in its wire form.
func (m *Member) State() *registryv1.State {
	var p *registryv1.State
	m.Srv.FSM().Read(func(st *fsm.State, _ uint64) { p = proto.Clone(st.Proto()).(*registryv1.State) })
	return p
}

func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BundleFile returns the path of a PEM file with the ecosystem's roots.
func (c *Cluster) BundleFile() string {
	return filepath.Join(c.Servers[0].Dir, registry.FileBundle)
}

// NodeToken registers node n (and its member, if new) and returns a join
// token for it.
func (c *Cluster) NodeToken(ctx context.Context, n ident.Node) string {
	c.t.Helper()
	adm := c.AdminClient(c.Live()[0])
	_, err := adm.AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: n.Member.Proto(), Name: n.Member.Code})
	if err != nil && status.Code(err) != codes.AlreadyExists {
		c.t.Fatal(err)
	}
	if _, err := adm.AddNode(c.Ctx(ctx), &registryv1.AddNodeRequest{Id: n.Proto()}); err != nil {
		c.t.Fatal(err)
	}
	tok, err := adm.CreateJoinToken(c.Ctx(ctx), &registryv1.CreateJoinTokenRequest{Node: n.Proto()})
	if err != nil {
		c.t.Fatal(err)
	}
	return tok.GetToken()
}
