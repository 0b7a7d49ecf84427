package registry

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
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry/fsm"
)

// cluster is a registry cluster of real servers on loopback for tests.
type cluster struct {
	t       testing.TB
	servers []*member
	admin   string // admin API key
	roots   []*x509.Certificate
}

type member struct {
	id     string
	dir    string
	srv    *Server
	cancel context.CancelFunc
	done   chan error
	api    string // fixed across restarts
	raft   string
	http   string
}

func testConfig(id, dir string) Config {
	cfg := DefaultConfig()
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

// newCluster starts n servers: the first bootstraps, the others join as voters.
func newCluster(t testing.TB, n int) *cluster {
	t.Helper()
	c := &cluster{t: t}
	base := t.TempDir()
	first := &member{id: "r1", dir: filepath.Join(base, "r1")}
	cfg := testConfig(first.id, first.dir)
	cfg.Bootstrap = true
	c.start(first, cfg)
	c.servers = append(c.servers, first)
	c.waitReady(first)
	key, err := os.ReadFile(filepath.Join(first.dir, FileAdminKey))
	if err != nil {
		t.Fatal(err)
	}
	c.admin = strings.TrimSpace(string(key))
	bundle, err := os.ReadFile(filepath.Join(first.dir, fileBundle))
	if err != nil {
		t.Fatal(err)
	}
	if c.roots, err = pki.DecodeCerts(bundle); err != nil {
		t.Fatal(err)
	}
	for i := 2; i <= n; i++ {
		c.add(fmt.Sprintf("r%d", i), true, filepath.Join(base, fmt.Sprintf("r%d", i)))
	}
	return c
}

// add joins a new server through the admin API of the first live server.
func (c *cluster) add(id string, voter bool, dir string) *member {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := c.adminClient(c.live()[0]).CreateServerToken(c.ctx(ctx), &registryv1.CreateServerTokenRequest{ServerId: id, Voter: voter})
	if err != nil {
		c.t.Fatal(err)
	}
	m := &member{id: id, dir: dir}
	cfg := testConfig(id, dir)
	cfg.Join = c.live()[0].srv.APIAddr()
	cfg.Token = tok.GetToken()
	cfg.TrustBundle = c.roots
	c.start(m, cfg)
	c.servers = append(c.servers, m)
	c.waitReady(m)
	return m
}

func (c *cluster) start(m *member, cfg Config) {
	c.t.Helper()
	if m.api != "" {
		cfg.APIAddr, cfg.RaftAddr, cfg.HTTPAddr = m.api, m.raft, m.http
	}
	var srv *Server
	var err error
	// A just-closed port can take a moment to be free again.
	for deadline := time.Now().Add(10 * time.Second); ; {
		srv, err = New(cfg)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	m.srv = srv
	m.api, m.raft, m.http = srv.APIAddr(), srv.RaftAddr(), srv.HTTPAddr()
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	m.done = make(chan error, 1)
	go func() { m.done <- srv.Run(ctx) }()
	c.t.Cleanup(func() { c.stop(m) })
}

// stop shuts a server down (idempotent).
func (c *cluster) stop(m *member) {
	if m.cancel == nil {
		return
	}
	m.cancel()
	m.cancel = nil
	select {
	case err := <-m.done:
		if err != nil {
			c.t.Errorf("server %s: %v", m.id, err)
		}
	case <-time.After(30 * time.Second):
		c.t.Errorf("server %s did not stop", m.id)
	}
}

// restart starts a stopped server again on its data directory and addresses.
func (c *cluster) restart(m *member) {
	c.t.Helper()
	c.start(m, testConfig(m.id, m.dir))
}

func (c *cluster) live() []*member {
	var out []*member
	for _, m := range c.servers {
		if m.cancel != nil {
			out = append(out, m)
		}
	}
	return out
}

func (c *cluster) waitReady(m *member) {
	c.t.Helper()
	waitFor(c.t, 30*time.Second, m.id+" ready", func() bool {
		if !m.srv.ready.Load() || m.srv.raft == nil || m.srv.raft.Leader() == "" {
			return false
		}
		p, _ := m.srv.current()
		return p != nil
	})
}

// leader waits for a live leader and returns it.
func (c *cluster) leader() *member {
	c.t.Helper()
	var l *member
	waitFor(c.t, 30*time.Second, "a leader", func() bool {
		for _, m := range c.live() {
			if m.srv.raft != nil && m.srv.raft.State() == raft.Leader {
				l = m
				return true
			}
		}
		return false
	})
	return l
}

func (c *cluster) followers() []*member {
	l := c.leader()
	var out []*member
	for _, m := range c.live() {
		if m != l {
			out = append(out, m)
		}
	}
	return out
}

// ctx adds the admin API key.
func (c *cluster) ctx(ctx context.Context) context.Context {
	return withKey(ctx, c.admin)
}

func withKey(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

var connsMu sync.Mutex

// conn dials a server's API as an operator would (TLS, no client cert).
func (c *cluster) conn(m *member) *grpc.ClientConn {
	c.t.Helper()
	td := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	tc := tlsconfig.TLSClientConfig(x509bundle.FromX509Authorities(td, c.roots), tlsconfig.AuthorizeMemberOf(td))
	conn, err := grpc.NewClient(m.api, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		c.t.Fatal(err)
	}
	connsMu.Lock()
	c.t.Cleanup(func() { conn.Close() })
	connsMu.Unlock()
	return conn
}

func (c *cluster) adminClient(m *member) registryv1.AdminServiceClient {
	return registryv1.NewAdminServiceClient(c.conn(m))
}

// state returns a server's replicated state in its wire form.
func (m *member) state() *registryv1.State {
	var p *registryv1.State
	m.srv.fsm.Read(func(st *fsm.State, _ uint64) { p = proto.Clone(st.Proto()).(*registryv1.State) })
	return p
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

