// Package cpustat reads the CPU time this process has used, for benchmarks:
// on a shared machine CPU time per operation is a steadier measure of cost
// than wall time.
package cpustat

// Reporter is what PerOp reports to (a *testing.B).
type Reporter interface {
	ReportMetric(n float64, unit string)
}

// PerOp reports, as "cpu-µs/op", the process's CPU time from now until the
// returned func runs, divided by *n (pass &b.N).
func PerOp(r Reporter, n *int) func() {
	start, ok := Process()
	return func() {
		end, endOK := Process()
		if ok && endOK && *n > 0 {
			r.ReportMetric(float64((end-start).Microseconds())/float64(*n), "cpu-µs/op")
		}
	}
}
