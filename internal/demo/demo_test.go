package demo

import (
	"bytes"
	"context"
	"errors"
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
		{"once runs setup then smoke, closes in reverse",
			Config{Once: true, Setup: []Step{step("a", nil), step("b", nil)}, Smoke: []Step{step("check", nil)}},
			nil, "a b check close check close b close a", "smoke checks passed"},
		{"a failing setup step stops the run and still closes",
			Config{Once: true, Setup: []Step{step("a", nil), step("b", boom), step("c", nil)}, Smoke: []Step{step("check", nil)}},
			boom, "a b close b close a", "==> b"},
		{"a failing smoke step fails the run",
			Config{Once: true, Setup: []Step{step("a", nil)}, Smoke: []Step{step("check", boom)}},
			boom, "a check close check close a", "==> check"},
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
		done <- Run(ctx, Config{Dir: dir, Keep: true, Out: &out, Setup: []Step{{Name: "up", Run: func(context.Context, *Demo) error {
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
