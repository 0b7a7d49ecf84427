package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sildmesh/sild/internal/bench"
)

func newBenchCmd() *cobra.Command {
	cfg := bench.DefaultConfig()
	var (
		asJSON, verbose, quiet bool
		levels, cpuProfile     string
		cases                  []string
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure a call through two nodes against the same call made directly",
		Long: `sild bench starts, in this process on 127.0.0.1 with temporary data, a registry,
a consumer node, a provider node and a gRPC backend (grpc.testing.TestService),
with everything a real exchange has: mTLS between the nodes, signatures on both
sides, and durable ledger records on both nodes before an answer is released.

It then measures, in the same run, each case at each concurrency level over
three paths: straight to the backend (direct); through two plain gRPC proxies
(relay: the same hops as the mesh, without TLS, signatures or ledgers, so the
most the mesh could reach on this machine); and through the two nodes (mesh).
  unary-1KiB              a unary call, 1 KiB request and 1 KiB response
  server-stream-10x1KiB   a server-streaming call answering 10 messages of 1 KiB
It prints calls per second, p50 and p99 latency, throughput as a share of
direct, and the CPU time the process used per call (everything runs in this
one process, so mesh minus direct is what the two nodes cost). For the mesh
it also prints how each node batched its fixed costs: ledger records per
synced commit, digests per signature, and signatures of the other node
verified per call (from the nodes' /metrics).

With --by-part it profiles each measurement and splits that CPU time by the
part that spent it. A chain of machines bound by CPU goes as fast as its
busiest part, so the last column estimates the share of direct each path
would reach with every proxy, node and the backend on a machine of its own
(the callers not counted as a limit): the backend's CPU per call in direct
over that of the busiest part of the path. It is an estimate from one
machine, where the parts also compete for caches and the scheduler.

With --repeat N it runs the whole sequence N times, interleaving the paths,
and reports for each measurement the median of its rounds (the ratio to
direct is the median of the ratios within each round): on a shared machine
whose load changes from minute to minute this is steadier than one long run.

The backend answers at once by default: the mesh's cost is then compared with
the cheapest call there is. A real backend computes or looks up its answer;
--backend-work makes it do a fixed amount of CPU work per call (hashing,
calibrated at start to take that long on one core), --backend-wait makes it
wait per call without using CPU (as for a database). The direct path calls the
same backend, so the ratios tell what the mesh costs a service of that weight.

A progress line goes to stderr while it runs. With the defaults the whole run
takes about a minute.`,
		Example: `  go run ./cmd/sild bench
  go run ./cmd/sild bench --duration 1s --concurrency 1,64 --json
  go run ./cmd/sild bench --case unary-1KiB --concurrency 64 --by-part
  go run ./cmd/sild bench --case unary-1KiB --backend-work 200us --backend-wait 2ms
  go run ./cmd/sild bench --path mesh --case unary-1KiB --concurrency 64 --cpuprofile mesh.prof`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if cfg.Concurrency, err = parseLevels(levels); err != nil {
				return fmt.Errorf("--concurrency: %w", err)
			}
			cfg.Cases = cases
			if !quiet {
				cfg.Progress = cmd.ErrOrStderr()
			}
			if verbose {
				cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelInfo}))
			}
			if cpuProfile != "" && cfg.ByPart {
				return fmt.Errorf("--cpuprofile and --by-part both profile the process: choose one")
			}
			if cpuProfile != "" {
				stop, err := startCPUProfile(cpuProfile)
				if err != nil {
					return err
				}
				defer stop()
			}
			rep, err := bench.Run(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			return rep.WriteTable(cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long each measurement runs")
	f.DurationVar(&cfg.Warmup, "warmup", 0, "warm-up before each measurement (default a tenth of --duration, at most 500ms)")
	f.StringVar(&levels, "concurrency", "1,16,64", "comma-separated numbers of concurrent callers")
	f.StringSliceVar(&cases, "case", cfg.Cases, "cases to run: "+bench.CaseUnary+", "+bench.CaseStream)
	f.StringSliceVar(&cfg.Paths, "path", cfg.Paths, "paths to measure: "+strings.Join(bench.Paths, ", ")+" (ratios need direct; one path alone suits --cpuprofile)")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON (for scripts)")
	f.BoolVarP(&quiet, "quiet", "q", false, "no progress line on stderr")
	f.StringVar(&cfg.Dir, "dir", "", "where to create the temporary data directory (default: the system's temp dir)")
	f.BoolVarP(&verbose, "verbose", "v", false, "log what the components do to stderr")
	f.IntVar(&cfg.Repeat, "repeat", 1, "run the whole sequence this many times and report medians (steadier on a shared machine)")
	f.BoolVar(&cfg.ByPart, "by-part", false, "also split the CPU per call by part (client, relay proxies, consumer and provider node, backend) and estimate each path's share of direct with each part on a machine of its own")
	f.DurationVar(&cfg.BackendWork, "backend-work", 0, fmt.Sprintf("CPU work the backend does per call, calibrated to take this long on one core (0: none; at most %v)", bench.MaxBackendWork))
	f.DurationVar(&cfg.BackendWait, "backend-wait", 0, fmt.Sprintf("time the backend waits per call before answering, using no CPU (0: none; at most %v)", bench.MaxBackendWait))
	f.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to `file` (read it with go tool pprof)")
	return cmd
}

// startCPUProfile profiles the process into path until the returned
// function is called.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

func parseLevels(s string) ([]int, error) {
	var out []int
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive number", p)
		}
		out = append(out, n)
	}
	return out, nil
}
