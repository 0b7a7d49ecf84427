package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

func TestRunnerOrderCleanupAndFailure(t *testing.T) {
	var order []string
	step := func(name string, err error) Step {
		return Step{Name: name, Run: func(_ context.Context, d *Demo) error {
			order = append(order, name)
			if _, statErr := os.Stat(d.Data); statErr != nil {
				t.Errorf("step %s: data dir: %v", name, statErr)
			}
			d.OnClose(func() error { order = append(order, "close "+name); return nil })
			return err
		}}
	}
	boom := errors.New("boom")
	cases := []struct {
		name      string
		cfg       Config
		wantErr   error
		wantOrder string
		wantOut   string
	}{
		{"once runs setup then the scenario, closes in reverse",
			Config{Once: true, Setup: []Step{step("a", nil), step("b", nil)}, Scenario: []Step{step("check", nil)}},
			nil, "a b check close check close b close a", "all 1 scenario steps succeeded"},
		{"a failing setup step stops the run and still closes",
			Config{Once: true, Setup: []Step{step("a", nil), step("b", boom), step("c", nil)}, Scenario: []Step{step("check", nil)}},
			boom, "a b close b close a", "==> b"},
		{"a failing scenario step fails the run",
			Config{Once: true, Setup: []Step{step("a", nil)}, Scenario: []Step{step("check", boom)}},
			ErrScenario, "a check close check close a", "1. FAIL check | boom"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			order = nil
			var out bytes.Buffer
			tc.cfg.Out = &out
			tc.cfg.Dir = t.TempDir()
			err := Run(context.Background(), tc.cfg)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if got := strings.Join(order, " "); got != tc.wantOrder {
				t.Fatalf("order %q, want %q", got, tc.wantOrder)
			}
			if !strings.Contains(out.String(), tc.wantOut) {
				t.Fatalf("output lacks %q:\n%s", tc.wantOut, out.String())
			}
			if left, _ := os.ReadDir(tc.cfg.Dir); len(left) != 0 {
				t.Fatalf("data left behind: %v", left)
			}
		})
	}
}

func TestRunWaitsForContextAndKeeps(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	var out bytes.Buffer
	up := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Dir: dir, Keep: true, Out: &out, Scenario: []Step{}, Setup: []Step{{Name: "up", Run: func(context.Context, *Demo) error {
			close(up)
			return nil
		}}}})
	}()
	<-up
	select {
	case err := <-done:
		t.Fatalf("returned before the context ended: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 1 || !strings.Contains(out.String(), "data kept in") {
		t.Fatalf("--keep: %v\n%s", left, out.String())
	}
}

// TestScenario runs the whole demo in-process, as `sild demo --once` does:
// two federated ecosystems, four nodes, every scenario step must succeed,
// each with ledger receipts from both nodes.
func TestScenario(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	var out bytes.Buffer
	dir := t.TempDir()
	if err := Run(ctx, Config{Once: true, Dir: dir, Out: &out}); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	text := out.String()
	for i, s := range Scenario() {
		line := fmt.Sprintf("%d. ok   %s | ", i+1, s.Name)
		if !strings.Contains(text, line) {
			t.Errorf("output lacks %q", line)
		}
		if want := fmt.Sprintf("(message demo-%d)", i+1); !strings.Contains(text, want) {
			t.Errorf("no ledger receipt for step %d (%q)", i+1, want)
		}
	}
	for _, want := range []string{
		"link EE <-> FI active on both sides", "refused as expected: ACCESS_DENIED",
		"131052-308T Matti Virtanen", "grpcurl -plaintext -H 'sild-client: EE/GOV/70000310/licensing'",
		"curl -s -H 'Sild-Client: EE/GOV/70000310/licensing'", "admin API key  sild_", "all 6 scenario steps succeeded",
		"ledger export --node-admin 127.0.0.1:", "ctl access list --node-admin 127.0.0.1:", "ledger query --node-admin 127.0.0.1:",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(text)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("data left behind: %v", left)
	}
}
