// Package demo runs sild's demonstration on loopback for `sild demo`: a
// sequence of steps that bring up a mesh with temporary data (today the
// registry cluster of the ecosystem EE; nodes, ledger and federation are
// added as further steps), print how to reach it, and, with Once, run smoke
// checks against it and stop.
//
// To extend the demo, write a func(ctx, *Demo) error, add it to Setup (to
// bring something up) or Smoke (to check it), and keep what later steps need
// in a field of Demo. Anything a step starts must be stopped through
// Demo.OnClose.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"
)

// Step is one stage of the demo. Run must return once its work is done; what
// it leaves running it registers with Demo.OnClose.
type Step struct {
	Name string
	Run  func(ctx context.Context, d *Demo) error
}

// Setup returns the steps that bring the demo mesh up, in order.
func Setup() []Step {
	return []Step{
		{Name: "start the registry of EE (3 servers)", Run: startRegistryEE},
	}
}

// Smoke returns the checks Once runs after Setup, in order.
func Smoke() []Step {
	return []Step{
		{Name: "registry: write through a follower, read from another server", Run: smokeRegistry},
	}
}

// Config configures a demo run.
type Config struct {
	// Dir is where the temporary data directory is created (default
	// os.TempDir()).
	Dir string
	// Keep leaves the data directory in place at exit.
	Keep bool
	// Once runs the Smoke steps after Setup and returns instead of waiting
	// for ctx to end.
	Once bool
	// Out receives what the operator reads (addresses, keys, commands).
	Out io.Writer
	// Logger receives the components' logs; nil discards them.
	Logger *slog.Logger
	// Command is how the printed commands invoke sild, e.g.
	// "go run ./cmd/sild" (default "sild").
	Command string
	// Setup and Smoke replace the default steps (Setup() and Smoke())
	// when not nil.
	Setup, Smoke []Step
}

// Demo is the state shared by the steps.
type Demo struct {
	Config
	// Data is the temporary directory holding all state of this run.
	Data string
	// EE is the registry cluster of the ecosystem EE (set by Setup).
	EE *Registry

	closers []func() error
}

// OnClose registers fn to run when the demo stops, in reverse order of
// registration.
func (d *Demo) OnClose(fn func() error) { d.closers = append(d.closers, fn) }

// Printf writes to the operator's output.
func (d *Demo) Printf(format string, a ...any) { fmt.Fprintf(d.Out, format, a...) }

// Run creates the data directory, runs the Setup steps and then either the
// Smoke steps (Once) or waits until ctx ends; then it stops everything and
// removes the data unless Keep is set.
func Run(ctx context.Context, cfg Config) (err error) {
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Command == "" {
		cfg.Command = "sild"
	}
	if cfg.Setup == nil {
		cfg.Setup = Setup()
	}
	if cfg.Smoke == nil {
		cfg.Smoke = Smoke()
	}
	data, err := os.MkdirTemp(cfg.Dir, "sild-demo-")
	if err != nil {
		return fmt.Errorf("demo data dir: %w", err)
	}
	d := &Demo{Config: cfg, Data: data}
	defer func() {
		err = errors.Join(err, d.close())
		if cfg.Keep {
			d.Printf("data kept in %s\n", data)
		} else if rerr := os.RemoveAll(data); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove demo data: %w", rerr))
		}
	}()

	start := time.Now()
	if err := d.run(ctx, cfg.Setup); err != nil {
		return err
	}
	d.Printf("\nsild demo is up after %s (data in %s).\n", time.Since(start).Round(10*time.Millisecond), data)
	if cfg.Once {
		if err := d.run(ctx, cfg.Smoke); err != nil {
			return err
		}
		d.Printf("\nsmoke checks passed\n")
		return nil
	}
	d.Printf("Press Ctrl-C to stop.\n")
	<-ctx.Done()
	d.Printf("\nstopping\n")
	return nil
}

func (d *Demo) run(ctx context.Context, steps []Step) error {
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		d.Printf("==> %s\n", s.Name)
		t := time.Now()
		if err := s.Run(ctx, d); err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
		d.Logger.Debug("demo step done", "step", s.Name, "took", time.Since(t))
	}
	return nil
}

func (d *Demo) close() error {
	var errs []error
	for i := len(d.closers) - 1; i >= 0; i-- {
		errs = append(errs, d.closers[i]())
	}
	d.closers = nil
	return errors.Join(errs...)
}

// waitFor polls cond until it holds, ctx ends or d passes.
func waitFor(ctx context.Context, d time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not after %s", what, d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
