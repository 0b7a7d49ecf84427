package node_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sildmesh/sild/internal/promtext"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node"
	"github.com/sildmesh/sild/registry"
	"github.com/sildmesh/sild/registry/registrytest"
)

// logBuffer collects a node's logs for a test to read while it runs.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func healthz(t *testing.T, n *node.Node) {
	t.Helper()
	resp, err := http.Get("http://" + n.AdminAddr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(b) != "ok\n" {
		t.Fatalf("/healthz: %d %q, want 200 ok (the process is alive, ready or not)", resp.StatusCode, b)
	}
}

// TestRegistryDownExchangesGoOnUntilConfigExpires: the time-stamping
// authority runs on the registry, so with the registry stopped the
// ledger's records wait for time-stamps. With the defaults the ledger's
// limit follows the configuration's lifetime, and exchanges go on until
// the configuration expires, then fail with CONFIG_EXPIRED; /readyz says
// ready until then and why not after.
func TestRegistryDownExchangesGoOnUntilConfigExpires(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const ttl = 8 * time.Second
	m := startTwoNodes(t, ctx, func(c *registry.Config) { c.ConfigTTL, c.ConfigRefresh = ttl, time.Second },
		func(c *node.Config) { c.CheckpointInterval = 200 * time.Millisecond }) // max_unstamped: the default
	m.grant(t, ctx)
	registrytest.WaitFor(t, 10*time.Second, "grant in effect", func() bool { _, err := m.call(t, ctx, ""); return err == nil })
	for _, r := range []*running{m.a, m.b} {
		metrics, err := promtext.Scrape(ctx, "http://"+r.n.AdminAddr()+"/metrics")
		if err != nil {
			t.Fatal(err)
		}
		if got := metrics["sild_node_ledger_max_unstamped_seconds"]; got < ttl.Seconds() {
			t.Fatalf("%s: max_unstamped in effect %vs, want at least the configuration's lifetime %v", r.n.ID(), got, ttl)
		}
	}

	for _, s := range m.c.Live() {
		m.c.Stop(s)
	}
	first, last := m.a.n.Topology().Expires, m.b.n.Topology().Expires
	if last.Before(first) {
		first, last = last, first
	}
	var ok int
	for time.Now().Before(last.Add(2 * time.Second)) {
		start := time.Now()
		_, err := m.call(t, ctx, "")
		code, body := readyz(m.a.n)
		end := time.Now()
		switch {
		case end.Before(first.Add(-300 * time.Millisecond)): // both configurations valid throughout
			if err != nil {
				t.Fatalf("call %v before the configuration expires, registry stopped: %v (reason %q)", first.Sub(end), err, rpcerr.Reason(err))
			}
			if code != http.StatusOK {
				t.Fatalf("/readyz %v before the configuration expires: %d %q", first.Sub(end), code, body)
			}
			ok++
		case start.After(last.Add(300 * time.Millisecond)): // both expired
			if rpcerr.Reason(err) != rpcerr.ReasonConfigExpired {
				t.Fatalf("call after the configuration expired: %v (reason %q), want CONFIG_EXPIRED", err, rpcerr.Reason(err))
			}
			if code != http.StatusServiceUnavailable || !strings.Contains(body, "global configuration expired") {
				t.Fatalf("/readyz after the configuration expired: %d %q", code, body)
			}
		}
		healthz(t, m.a.n)
		time.Sleep(100 * time.Millisecond)
	}
	if ok == 0 {
		t.Fatal("no call fell before the configuration's expiry; the test proves nothing")
	}
}

// TestMaxUnstampedShorterThanConfigLifetime: a max_unstamped set shorter
// than the configuration's lifetime (here in the ratio of the old
// defaults, 10 min to 1 h) is kept, but the node warns at start; once
// records have waited that long for a time-stamp, exchanges are refused
// with LEDGER_UNAVAILABLE and /readyz says so, while /healthz stays ok.
func TestMaxUnstampedShorterThanConfigLifetime(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const ttl, maxUnstamped = 12 * time.Second, 2 * time.Second
	var logs logBuffer
	m := startTwoNodes(t, ctx, func(c *registry.Config) { c.ConfigTTL, c.ConfigRefresh = ttl, time.Second },
		func(c *node.Config) {
			c.MaxUnstamped, c.CheckpointInterval = maxUnstamped, 200*time.Millisecond
			if strings.HasSuffix(c.Subsystems[0].ID, "/licensing") {
				c.Logger = logs.logger()
			}
		})
	if !strings.Contains(logs.String(), "max_unstamped is shorter than the global configuration's lifetime") ||
		!strings.Contains(logs.String(), "config_lifetime="+ttl.String()) {
		t.Fatalf("no warning about max_unstamped at start; logs:\n%s", logs.String())
	}
	m.grant(t, ctx)
	registrytest.WaitFor(t, 10*time.Second, "grant in effect", func() bool { _, err := m.call(t, ctx, ""); return err == nil })

	for _, s := range m.c.Live() {
		m.c.Stop(s)
	}
	registrytest.WaitFor(t, 10*time.Second, "LEDGER_UNAVAILABLE", func() bool {
		_, err := m.call(t, ctx, "")
		return rpcerr.Reason(err) == rpcerr.ReasonLedgerUnavailable
	})
	var body string
	registrytest.WaitFor(t, 5*time.Second, "/readyz naming the ledger", func() bool {
		var code int
		code, body = readyz(m.a.n)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "LEDGER_UNAVAILABLE") &&
			strings.Contains(body, "max_unstamped ("+maxUnstamped.String()+")") && strings.Contains(body, "/tsa")
	})
	t.Logf("/readyz: %s", body)
	if m.a.n.Topology().Expired(time.Now()) {
		t.Fatal("the configuration expired first; the test shows nothing about the ledger")
	}
	healthz(t, m.a.n)
}
