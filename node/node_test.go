package node_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/node"
	"github.com/sildmesh/sild/registry"
	"github.com/sildmesh/sild/registry/registrytest"
)

// running is a node started in the background.
type running struct {
	n      *node.Node
	cancel context.CancelFunc
	done   chan error
}

func startNode(t *testing.T, cfg node.Config) *running {
	t.Helper()
	n, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{n: n, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- n.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *running) stop(t *testing.T) {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("node: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("node did not stop")
	}
}

func nodeConfig(c *registrytest.Cluster, id, dir, token string) node.Config {
	cfg := node.DefaultConfig()
	cfg.Node = id
	cfg.Registry = c.Live()[0].Srv.APIAddr()
	cfg.TrustBundle = c.BundleFile()
	cfg.JoinToken = token
	cfg.DataDir = dir
	cfg.ConsumerListen, cfg.ExchangeListen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	if os.Getenv("SILD_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg
}

func readyz(n *node.Node) (int, string) {
	resp, err := http.Get("http://" + n.AdminAddr() + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestJoinWatchRenewAndOfflineRestart(t *testing.T) {
	c := registrytest.StartWith(t, 3, func(cfg *registry.Config) {
		cfg.ConfigTTL, cfg.ConfigRefresh = 4*time.Second, time.Second
	})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	self, _ := ident.ParseNode("EE/GOV/70000310/ss1")
	token := c.NodeToken(ctx, self)
	dir := t.TempDir()
	cfg := nodeConfig(c, self.String(), dir, token)
	cfg.RenewBefore = 24*time.Hour - 2*time.Second // renew every ~2 s
	r := startNode(t, cfg)

	registrytest.WaitFor(t, 30*time.Second, "node ready", func() bool { code, _ := readyz(r.n); return code == 200 })
	top := r.n.Topology()
	if rec := top.Node(self); rec == nil || rec.GetState() != registryv1.NodeState_NODE_STATE_ACTIVE || rec.GetAddress() != r.n.ExchangeAddr() {
		t.Fatalf("node in its own configuration: %v", rec)
	}
	// A change in the registry reaches the node.
	sub := &identv1.SubsystemId{Member: self.Member.Proto(), SubsystemCode: "business-registry"}
	adm := c.AdminClient(c.Leader())
	if _, err := adm.AddSubsystem(c.Ctx(ctx), &registryv1.AddSubsystemRequest{Id: sub}); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.RegisterSubsystem(c.Ctx(ctx), &registryv1.RegisterSubsystemRequest{Subsystem: sub, Node: self.Proto()}); err != nil {
		t.Fatal(err)
	}
	bizreg, _ := ident.ParseSubsystem("EE/GOV/70000310/business-registry")
	registrytest.WaitFor(t, 5*time.Second, "registration reaches the node", func() bool {
		return r.n.Topology().Serves(self, bizreg)
	})
	// Renewal: the SVID on disk changes while the node runs.
	first, _ := os.ReadFile(filepath.Join(dir, "svid.crt"))
	registrytest.WaitFor(t, 30*time.Second, "svid renewed", func() bool {
		now, _ := os.ReadFile(filepath.Join(dir, "svid.crt"))
		return len(now) > 0 && string(now) != string(first)
	})
	// The watch survives the loss of the server it watches.
	c.Stop(c.Leader())
	if _, err := c.AdminClient(c.Live()[0]).AddGroup(c.Ctx(ctx), &registryv1.AddGroupRequest{Code: "licensers"}); err != nil {
		t.Fatal(err)
	}
	registrytest.WaitFor(t, 20*time.Second, "change after failover reaches the node", func() bool {
		for _, g := range r.n.Topology().Config.GetGroups() {
			if g.GetCode() == "licensers" {
				return true
			}
		}
		return false
	})

	// Offline restart: no registry at all, the cached configuration serves.
	r.stop(t)
	for _, m := range c.Live() {
		c.Stop(m)
	}
	cfg.JoinToken = "" // spent; the node must not need it again
	r2 := startNode(t, cfg)
	registrytest.WaitFor(t, 10*time.Second, "restarted node ready from cache", func() bool { code, _ := readyz(r2.n); return code == 200 })
	if !r2.n.Topology().Serves(self, bizreg) {
		t.Fatal("cached configuration lost the registration")
	}
	// Without the registry the configuration expires and the node says so.
	registrytest.WaitFor(t, 15*time.Second, "expired configuration", func() bool {
		code, body := readyz(r2.n)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "expired")
	})
}

func TestConfigValidation(t *testing.T) {
	base := node.DefaultConfig()
	base.Node, base.DataDir, base.Registry = "EE/GOV/1/ss1", t.TempDir(), "127.0.0.1:1"
	cases := map[string]func(*node.Config){
		"node":                                 func(c *node.Config) { c.Node = "EE/GOV" },
		"data_dir":                             func(c *node.Config) { c.DataDir = "" },
		"registry":                             func(c *node.Config) { c.Registry = "" },
		"consumer_listen":                      func(c *node.Config) { c.ConsumerListen = "nope" },
		"subsystems[0].id":                     func(c *node.Config) { c.Subsystems = []node.SubsystemConfig{{ID: "EE/GOV/1/a/b"}} },
		"subsystems[0].backend":                func(c *node.Config) { c.Subsystems = []node.SubsystemConfig{{ID: "EE/GOV/1/a", Backend: "x"}} },
		"admin_keys[0].hash":                   func(c *node.Config) { c.AdminKeys = []node.AdminKey{{Hash: "abc", Role: "admin"}} },
		"max_message_size":                     func(c *node.Config) { c.MaxMessageSize = 1 },
		"batch_delay":                          func(c *node.Config) { c.BatchDelay = -time.Millisecond },
		"consumer_tls: cert_file and key_file": func(c *node.Config) { c.ConsumerTLS = &node.ConsumerTLS{CertFile: "x.crt"} },
		"subsystems[0].client_certs: need consumer_tls.require_client_cert": func(c *node.Config) {
			c.Subsystems = []node.SubsystemConfig{{ID: "EE/GOV/1/a", ClientCerts: []string{"app.crt"}}}
		},
		"subsystems[1].id: EE/GOV/1/a listed twice": func(c *node.Config) {
			c.Subsystems = []node.SubsystemConfig{{ID: "EE/GOV/1/a"}, {ID: "EE/GOV/1/a"}}
		},
	}
	for want, mutate := range cases {
		cfg := base
		mutate(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v", want, err)
		}
	}
	if err := base.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	// YAML: unknown keys are refused.
	p := filepath.Join(t.TempDir(), "node.yaml")
	os.WriteFile(p, []byte("node: EE/GOV/1/ss1\nbogus: 1\n"), 0o600)
	if _, err := node.LoadConfig(p); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("unknown key: %v", err)
	}
	os.WriteFile(p, []byte("node: EE/GOV/1/ss1\ndata_dir: /tmp/x\nregistry: r:1\nsubsystems:\n  - id: EE/GOV/1/a\n    backend: 127.0.0.1:9\n"), 0o600)
	cfg, err := node.LoadConfig(p)
	if err != nil || cfg.Subsystems[0].Backend != "127.0.0.1:9" || cfg.ConsumerListen != "127.0.0.1:8443" || cfg.BatchDelay != time.Millisecond {
		t.Fatalf("load: %+v, %v", cfg, err)
	}
	// consumer_tls: files are read by New, which names what is wrong.
	tlsCfg := base
	tlsCfg.ConsumerTLS = &node.ConsumerTLS{CertFile: filepath.Join(t.TempDir(), "none.crt"), KeyFile: "none.key"}
	if _, err := node.New(tlsCfg); err == nil || !strings.Contains(err.Error(), "consumer_tls") {
		t.Errorf("missing consumer_tls files: %v", err)
	}
	srv := selfSigned(t, t.TempDir(), "node", time.Now().Add(time.Hour))
	tlsCfg.ConsumerTLS = &node.ConsumerTLS{CertFile: srv.certFile, KeyFile: srv.keyFile, RequireClientCert: true}
	if _, err := node.New(tlsCfg); err == nil || !strings.Contains(err.Error(), "no subsystem pins") {
		t.Errorf("require_client_cert without pins: %v", err)
	}
	tlsCfg.Subsystems = []node.SubsystemConfig{{ID: "EE/GOV/1/a", ClientCerts: []string{srv.keyFile}}}
	if _, err := node.New(tlsCfg); err == nil || !strings.Contains(err.Error(), "subsystems[0].client_certs") {
		t.Errorf("client_certs without a certificate: %v", err)
	}
	// batch_delay: 0s turns the waits off (it is not "unset").
	os.WriteFile(p, []byte("node: EE/GOV/1/ss1\nbatch_delay: 0s\n"), 0o600)
	if cfg, err := node.LoadConfig(p); err != nil || cfg.BatchDelay != 0 {
		t.Fatalf("batch_delay 0s: %v, %v", cfg.BatchDelay, err)
	}
}

// TestExampleConfig keeps deploy/node.example.yaml valid.
func TestExampleConfig(t *testing.T) {
	cfg, err := node.LoadConfig("../deploy/node.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("example config: %v", err)
	}
}
