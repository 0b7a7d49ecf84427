// Package demo runs sild's demonstration on loopback for `sild demo`: two
// federated ecosystems with temporary data — EE with a three-server registry
// and three nodes (a licensing authority, the business registry, the tax
// board), FI with its own registry and the population register's node —
// sample services with real protos, and a scenario in which the licensing
// authority checks a company, its tax status and, across the border, its
// Finnish board member, and the Finnish register asks the Estonian one. Each scenario step prints who asked what, the
// result and the ledger receipts of both nodes. Then it prints how to reach
// everything and stays up (or, with Once, exits).
//
// To extend the demo, write a func(ctx, *Demo) error and add it to Setup
// (to bring something up) or Scenario (an exchange to show; it reports its
// outcome with Demo.Report). Anything a step starts must be stopped
// through Demo.OnClose (or be started on Demo.Mesh).
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/sildmesh/sild/internal/mesh"
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
		{Name: "start the registries of EE (3 servers) and FI (1 server)", Run: startRegistries},
		{Name: "register members, subsystems, nodes; publish services with their descriptors", Run: registerAll},
		{Name: "start the sample backends and four nodes (join with one-time tokens)", Run: startNodes},
		{Name: "grant access rights on the providers' nodes (node admin API)", Run: grantAll},
		{Name: "federate EE and FI (link both ways); FI exports its population register, EE its business registry", Run: federate},
		{Name: "start the REST bridge of the licensing authority's node", Run: startREST},
	}
}

// Scenario returns the exchanges the demo shows, in order.
func Scenario() []Step {
	return []Step{
		{Name: "licensing authority (EE) -> business registry (EE): GetCompany over gRPC", Run: stepGetCompany},
		{Name: "licensing authority (EE) -> business registry (EE): ListCompanyEvents, server stream", Run: stepCompanyEvents},
		{Name: "licensing authority (EE) -> tax board (EE): GetTaxStatus over REST", Run: stepTaxStatusREST},
		{Name: "business registry (EE) -> tax board (EE): GetTaxStatus without an access right", Run: stepRefused},
		{Name: "licensing authority (EE) -> population register (FI): GetPerson across the border", Run: stepCrossBorder},
		{Name: "population register (FI) -> business registry (EE): GetCompany across the border", Run: stepCrossBorderBack},
	}
}

// Config configures a demo run.
type Config struct {
	// Dir is where the temporary data directory is created (default
	// os.TempDir()).
	Dir string
	// Keep leaves the data directory in place at exit.
	Keep bool
	// Once runs the scenario and returns (an error if any step failed)
	// instead of waiting for ctx to end.
	Once bool
	// Out receives what the operator reads (steps, addresses, keys,
	// commands).
	Out io.Writer
	// Logger receives the components' logs; nil discards them.
	Logger *slog.Logger
	// Command is how the printed commands invoke sild, e.g.
	// "go run ./cmd/sild" (default "sild").
	Command string
	// Setup and Scenario replace the default steps (Setup() and
	// Scenario()) when not nil.
	Setup, Scenario []Step
}

// Demo is the state shared by the steps.
type Demo struct {
	Config
	// Data is the temporary directory holding all state of this run.
	Data string
	// Mesh runs the components; it is closed with the demo.
	Mesh *mesh.Mesh
	// World is what Setup brought up (nil fields until then).
	World

	closers []func() error
	report  string
	infos   []func()
}

// OnClose registers fn to run when the demo stops, in reverse order of
// registration.
func (d *Demo) OnClose(fn func() error) { d.closers = append(d.closers, fn) }

// Printf writes to the operator's output.
func (d *Demo) Printf(format string, a ...any) { fmt.Fprintf(d.Out, format, a...) }

// Report sets the outcome line of the running scenario step: the result
// and the ledger receipts.
func (d *Demo) Report(format string, a ...any) { d.report = fmt.Sprintf(format, a...) }

// OnReady registers fn to print how to reach what a step started, after the
// scenario.
func (d *Demo) OnReady(fn func()) { d.infos = append(d.infos, fn) }

// ErrScenario is returned by Run with Once when a scenario step failed.
var ErrScenario = errors.New("scenario failed")

// Run creates the data directory, runs the Setup steps, the Scenario, prints
// how to reach the mesh, and then returns (Once) or waits until ctx ends;
// then it stops everything and removes the data unless Keep is set.
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
	if cfg.Scenario == nil {
		cfg.Scenario = Scenario()
	}
	data, err := os.MkdirTemp(cfg.Dir, "sild-demo-")
	if err != nil {
		return fmt.Errorf("demo data dir: %w", err)
	}
	d := &Demo{Config: cfg, Data: data, Mesh: mesh.New(data, cfg.Logger)}
	d.OnClose(d.Mesh.Close)
	defer func() {
		err = errors.Join(err, d.close())
		if cfg.Keep {
			d.Printf("data kept in %s\n", data)
		} else if rerr := os.RemoveAll(data); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove demo data: %w", rerr))
		}
	}()

	start := time.Now()
	for _, s := range cfg.Setup {
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
	d.Printf("\nsild demo is up after %s (data in %s).\n", time.Since(start).Round(10*time.Millisecond), data)
	failed := d.scenario(ctx)
	for _, fn := range d.infos {
		fn()
	}
	if cfg.Once {
		if failed > 0 {
			return fmt.Errorf("%w: %d of %d steps", ErrScenario, failed, len(cfg.Scenario))
		}
		d.Printf("\nall %d scenario steps succeeded\n", len(cfg.Scenario))
		return nil
	}
	if failed > 0 {
		d.Printf("\n%d of %d scenario steps FAILED (see above); the mesh stays up.\n", failed, len(cfg.Scenario))
	}
	d.Printf("\nPress Ctrl-C to stop.\n")
	<-ctx.Done()
	d.Printf("\nstopping\n")
	return nil
}

// scenario runs every scenario step, printing one line each, and returns
// how many failed.
func (d *Demo) scenario(ctx context.Context) int {
	if len(d.Scenario) == 0 {
		return 0
	}
	d.Printf("\nScenario (who -> whom: what | result | ledger receipts):\n")
	failed := 0
	for i, s := range d.Scenario {
		d.report = ""
		err := ctx.Err()
		if err == nil {
			err = s.Run(ctx, d)
		}
		if err != nil {
			failed++
			d.Printf("  %d. FAIL %s | %v\n", i+1, s.Name, err)
			continue
		}
		d.Printf("  %d. ok   %s | %s\n", i+1, s.Name, d.report)
	}
	return failed
}

func (d *Demo) close() error {
	var errs []error
	for i := len(d.closers) - 1; i >= 0; i-- {
		errs = append(errs, d.closers[i]())
	}
	d.closers = nil
	return errors.Join(errs...)
}
