package bench

import (
	"fmt"
	"io"
	"text/tabwriter"
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
	m := r.Machine
	_, err := fmt.Fprintf(w, "\n%d CPUs (%s), %s %s/%s; %d ms per measurement, setup %d ms, total %.1f s\n",
		m.CPUs, m.CPUModel, m.GoVersion, m.OS, m.Arch, r.DurationMs, r.SetupMs, float64(r.TotalMs)/1000)
	for _, x := range r.Results {
		if x.FirstError != "" {
			fmt.Fprintf(w, "first error (%s %s concurrency %d): %s\n", x.Case, x.Path, x.Concurrency, x.FirstError)
		}
	}
	return err
}
