package node_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node"
	"github.com/sildmesh/sild/registry/registrytest"
)

// A message id the provider's node answered is refused again after that
// node restarts: the replay window is read back from its ledger.
func TestReplayRefusedAfterProviderRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	var cfgB node.Config
	m := startTwoNodes(t, ctx, nil, func(c *node.Config) {
		if c.Node == "EE/GOV/70000310/ss1" {
			cfgB = *c
		}
	})
	m.grant(t, ctx)
	for _, id := range []string{"before-1", "before-2"} {
		if _, err := m.call(t, ctx, id); err != nil {
			t.Fatalf("call %s: %v", id, err)
		}
	}
	if _, err := m.call(t, ctx, "before-1"); rpcerr.Reason(err) != rpcerr.ReasonReplayed {
		t.Fatalf("replay before the restart: %v", err)
	}

	cfgB.ExchangeListen = m.b.n.ExchangeAddr() // where the configuration says B is
	m.b.stop(t)
	b := startNode(t, cfgB)
	registrytest.WaitFor(t, 30*time.Second, "restarted provider ready", func() bool { code, _ := readyz(b.n); return code == 200 })

	for _, id := range []string{"before-1", "before-2"} {
		_, err := m.call(t, ctx, id)
		if status.Code(err) != codes.AlreadyExists || rpcerr.Reason(err) != rpcerr.ReasonReplayed {
			t.Fatalf("replay of %s after the provider restarted: %v (reason %q)", id, err, rpcerr.Reason(err))
		}
	}
	if _, err := m.call(t, ctx, "after-1"); err != nil {
		t.Fatalf("fresh id after the restart: %v", err)
	}
	// B's ledger holds the exchange and both refusals (refused before
	// access rights and the backend).
	recs, err := b.n.Ledger().ByMessageID("before-1")
	if err != nil || len(recs) != 3 || recs[2].Record.GetStatusReason() != rpcerr.ReasonReplayed {
		t.Fatalf("records of before-1: %d, %v", len(recs), err)
	}
}

func TestReplayConfigValidation(t *testing.T) {
	base := node.DefaultConfig()
	base.Node, base.DataDir, base.Registry = "EE/GOV/1/ss1", t.TempDir(), "127.0.0.1:1"
	for key, mutate := range map[string]func(*node.Config){
		"replay_window":         func(c *node.Config) { c.ReplayWindow = -time.Second },
		"replay_window ":        func(c *node.Config) { c.ReplayWindow = 25 * time.Hour },
		"replay_max_per_client": func(c *node.Config) { c.ReplayMaxPerClient = -1 },
		"ledger_retention":      func(c *node.Config) { c.LedgerRetention = 5 * time.Minute }, // < the default 10m window
	} {
		cfg := base
		mutate(&cfg)
		var fe *node.FieldError
		if err := cfg.Validate(); !errors.As(err, &fe) || fe.Key != strings.TrimSpace(key) {
			t.Errorf("%s: got %v", key, err)
		}
	}
	ok := base
	ok.ReplayWindow, ok.ReplayMaxPerClient, ok.LedgerRetention = 5*time.Minute, 1000, 5*time.Minute
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
}
