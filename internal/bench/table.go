package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/sildmesh/sild/internal/mesh"
)

// WriteTable writes the report as a table for people, then the machine.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "case\tpath\tconcurrency\tcalls/s\tp50 ms\tp99 ms\tvs direct\tcpu µs/call\terrors\t\n")
	for _, x := range r.Results {
		ratio := "-"
		if x.RatioToDirect > 0 {
			ratio = fmt.Sprintf("%.0f%%", 100*x.RatioToDirect)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%.2f\t%.2f\t%s\t%.0f\t%d\t\n", x.Case, x.Path, x.Concurrency, x.CallsPerSec, x.P50Ms, x.P99Ms, ratio, x.CPUPerCallUs, x.Errors)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if err := r.writeParts(w); err != nil {
		return err
	}
	r.writeBatching(w)
	m := r.Machine
	rounds := ""
	if r.Rounds > 1 {
		rounds = fmt.Sprintf(", medians of %d rounds", r.Rounds)
	}
	var does []string
	if r.BackendWorkUs > 0 {
		does = append(does, fmt.Sprintf("works %.0f µs (%d KiB hashed)", r.BackendWorkUs, r.BackendWorkBlocks))
	}
	if r.BackendWaitMs > 0 {
		does = append(does, fmt.Sprintf("waits %.1f ms", r.BackendWaitMs))
	}
	backend := "the backend echoes at once"
	if len(does) > 0 {
		backend = "the backend " + strings.Join(does, " and ") + " per call"
	}
	_, err := fmt.Fprintf(w, "\n%d CPUs (%s), %s %s/%s; %s; %d ms per measurement%s, setup %d ms, total %.1f s\n",
		m.CPUs, m.CPUModel, m.GoVersion, m.OS, m.Arch, backend, r.DurationMs, rounds, r.SetupMs, float64(r.TotalMs)/1000)
	for _, x := range r.Results {
		if x.FirstError != "" {
			fmt.Fprintf(w, "first error (%s %s concurrency %d): %s\n", x.Case, x.Path, x.Concurrency, x.FirstError)
		}
	}
	return err
}

// writeParts writes, for runs with Config.ByPart, the CPU per call of each
// part and the estimated share of direct on dedicated machines.
func (r *Report) writeParts(w io.Writer) error {
	var parts []string // those measured, in path order
	for _, p := range Parts {
		for _, x := range r.Results {
			if x.CPUByPartUs[p] > 0 {
				parts = append(parts, p)
				break
			}
		}
	}
	if len(parts) == 0 {
		return nil
	}
	fmt.Fprintf(w, "\nCPU µs per call by part, and the share of direct estimated with each serving part on a machine of its own:\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "case\tpath\tconcurrency\t%s\tdedicated est.\t\n", strings.Join(parts, "\t"))
	for _, x := range r.Results {
		fmt.Fprintf(tw, "%s\t%s\t%d\t", x.Case, x.Path, x.Concurrency)
		for _, p := range parts {
			if us, ok := x.CPUByPartUs[p]; ok {
				fmt.Fprintf(tw, "%.0f\t", us)
			} else {
				fmt.Fprint(tw, "-\t")
			}
		}
		est := "-"
		if x.DedicatedShare > 0 {
			est = fmt.Sprintf("%.0f%%", 100*x.DedicatedShare)
		}
		fmt.Fprintf(tw, "%s\t\n", est)
	}
	return tw.Flush()
}

// writeBatching writes how the nodes shared their fixed costs in each mesh
// measurement.
func (r *Report) writeBatching(w io.Writer) {
	first := true
	for _, x := range r.Results {
		if len(x.Batching) == 0 {
			continue
		}
		if first {
			fmt.Fprintf(w, "\nBatching in the nodes (ledger records per commit, digests per signature, peer signatures verified per call):\n")
			first = false
		}
		fmt.Fprintf(w, "  %s concurrency %d:", x.Case, x.Concurrency)
		for _, part := range []string{mesh.PartConsumer, mesh.PartProvider} {
			if b, ok := x.Batching[part]; ok {
				fmt.Fprintf(w, "  %s %.1f, %.1f, %.2f", part, b.RecordsPerCommit, b.DigestsPerSignature, b.ChecksPerCall)
			}
		}
		fmt.Fprintln(w)
	}
}
