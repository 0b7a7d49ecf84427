package node_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/registry"
	"github.com/sildmesh/sild/registry/registrytest"
)

// syncBuffer is a bytes.Buffer for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// renew_before at or above the lifetime of the certificates the registry
// issues would renew at once, over and over: the node renews at half-life
// instead and says why.
func TestRenewBeforeBeyondLifetime(t *testing.T) {
	c := registrytest.StartWith(t, 1, func(cfg *registry.Config) { cfg.NodeSVIDTTL = time.Minute })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	self, _ := ident.ParseNode("EE/GOV/70000310/ss1")
	dir := t.TempDir()
	cfg := nodeConfig(c, self.String(), dir, c.NodeToken(ctx, self))
	cfg.RenewBefore = 2 * time.Minute
	var logs syncBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	r := startNode(t, cfg)
	registrytest.WaitFor(t, 30*time.Second, "node ready", func() bool { code, _ := readyz(r.n); return code == 200 })
	first, err := os.ReadFile(filepath.Join(dir, "svid.crt"))
	if err != nil {
		t.Fatal(err)
	}
	// Half-life is 30 s away; a node renewing in a loop renews hundreds of
	// times a second.
	time.Sleep(time.Second)
	now, err := os.ReadFile(filepath.Join(dir, "svid.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "identity installed"); !bytes.Equal(first, now) || n != 1 {
		t.Fatalf("the node renewed within a second of joining (%d identities installed)", n)
	}
	if !strings.Contains(logs.String(), "renew_before is not shorter than the lifetime") {
		t.Fatalf("no warning about renew_before in the log:\n%s", logs.String())
	}
}
