package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestShortRun runs a very short benchmark on a real mesh and checks that
// the report is sane and survives a JSON round trip.
func TestShortRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	var progress bytes.Buffer
	cfg := Config{Duration: 200 * time.Millisecond, Concurrency: []int{2}, Cases: []string{CaseUnary, CaseStream}, Dir: t.TempDir(), Progress: &progress}
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Results) != 6 || back.Machine.CPUs < 1 || back.DurationMs != 200 || back.TotalMs < back.SetupMs {
		t.Fatalf("report: %s", raw)
	}
	for i, r := range back.Results {
		wantPath := []string{PathDirect, PathRelay, PathMesh}[i%3]
		switch {
		case r.Path != wantPath || r.Concurrency != 2 || r.Case != cfg.Cases[i/3]:
			t.Errorf("result %d is %s/%s/%d", i, r.Case, r.Path, r.Concurrency)
		case r.Calls <= 0 || r.Errors != 0 || r.FirstError != "":
			t.Errorf("result %d: %d calls, %d errors (%s)", i, r.Calls, r.Errors, r.FirstError)
		case r.CallsPerSec <= 0 || r.P50Ms <= 0 || r.P99Ms < r.P50Ms:
			t.Errorf("result %d: %.0f calls/s, p50 %.3f ms, p99 %.3f ms", i, r.CallsPerSec, r.P50Ms, r.P99Ms)
		case r.Path == PathDirect && r.RatioToDirect != 1, r.Path != PathDirect && (r.RatioToDirect <= 0 || r.RatioToDirect > 100):
			t.Errorf("result %d: ratio %f", i, r.RatioToDirect)
		case runtime.GOOS == "linux" && r.CPUPerCallUs <= 0:
			// Only that it is measured: in 200 ms windows, with the
			// components' background work and other tests running, how
			// the paths compare is noise (seen: mesh below relay).
			t.Errorf("result %d: no CPU time per call", i)
		}
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil || !strings.Contains(table.String(), "vs direct") || strings.Count(table.String(), "\n") < 8 {
		t.Errorf("table (%v):\n%s", err, table.String())
	}
	for _, r := range back.Results {
		if r.Path != PathMesh {
			if r.Batching != nil {
				t.Errorf("%s: batching %v outside the mesh", r.Path, r.Batching)
			}
			continue
		}
		// Read from the nodes' /metrics around the measurement. Each
		// counter is read on its own while calls go on, so a ratio may be
		// a batch off (seen: 0.99 records per commit).
		for _, part := range []string{"consumer", "provider"} {
			b, ok := r.Batching[part]
			if !ok || b.RecordsPerCommit < 0.5 || b.DigestsPerSignature < 0.5 || b.ChecksPerCall <= 0 || b.ChecksPerCall > 1.5 {
				t.Errorf("%s %s batching: %+v (present %v)", r.Case, part, b, ok)
			}
		}
	}
	if !strings.Contains(table.String(), "Batching in the nodes") {
		t.Errorf("table without batching:\n%s", table.String())
	}
	if !strings.Contains(progress.String(), "[6/6] "+CaseStream+" mesh concurrency 2") {
		t.Errorf("no progress line for the last measurement:\n%q", progress.String())
	}
}

func TestConfigValidate(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"duration":    func(c *Config) { c.Duration = 0 },
		"warmup":      func(c *Config) { c.Warmup = -1 },
		"concurrency": func(c *Config) { c.Concurrency = []int{0} },
		"no levels":   func(c *Config) { c.Concurrency = nil },
		"cases":       func(c *Config) { c.Cases = []string{"bidi"} },
		"paths":       func(c *Config) { c.Paths = []string{"mesh", "carrier pigeon"} },
		"repeat":      func(c *Config) { c.Repeat = 21 },
	} {
		cfg := DefaultConfig()
		mutate(&cfg)
		if err := cfg.Validate(); err == nil || !strings.HasPrefix(err.Error(), strings.Fields(name)[0]+":") && name != "no levels" {
			t.Errorf("%s: %v", name, err)
		}
	}
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

// Without a direct measurement there is no ratio, and the table says so
// instead of printing 0%.
func TestTableWithoutDirect(t *testing.T) {
	rep := &Report{Results: []Result{{Case: CaseUnary, Path: PathMesh, Concurrency: 1, Calls: 10, CallsPerSec: 5, P50Ms: 1, P99Ms: 2, CPUPerCallUs: 700}}}
	var b bytes.Buffer
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	line := strings.Split(b.String(), "\n")[1]
	if f := strings.Fields(line); len(f) != 9 || f[6] != "-" || f[7] != "700" {
		t.Fatalf("row %q", line)
	}
}

// TestByPart profiles a short run and checks that each path's CPU lands on
// the parts on its way: the proxies in relay, the two nodes in mesh.
func TestByPart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	// The profile samples at 100 Hz: a loaded machine gives this process
	// few samples, so each path runs long enough for every part to get some.
	cfg := Config{Duration: 1500 * time.Millisecond, Concurrency: []int{4}, Cases: []string{CaseUnary}, Dir: t.TempDir(), ByPart: true}
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 3 {
		t.Fatalf("%d results", len(rep.Results))
	}
	for _, r := range rep.Results {
		var sum float64
		for _, us := range r.CPUByPartUs {
			sum += us
		}
		if math.Abs(sum-r.CPUPerCallUs) > 0.01*r.CPUPerCallUs {
			t.Errorf("%s: parts %v add up to %.1f, not the %.1f µs per call measured", r.Path, r.CPUByPartUs, sum, r.CPUPerCallUs)
		}
	}
	direct, relay, mesh := rep.Results[0].CPUByPartUs, rep.Results[1].CPUByPartUs, rep.Results[2].CPUByPartUs
	if relay[PartRelay1]+relay[PartRelay2] <= 0 || relay[PartRelay1]+relay[PartRelay2] <= relay["consumer"]+relay["provider"] {
		t.Errorf("relay's CPU is not on its proxies: %v", relay)
	}
	if mesh["consumer"] <= 0 || mesh["provider"] <= 0 || mesh["consumer"]+mesh["provider"] < rep.Results[2].CPUPerCallUs/2 {
		t.Errorf("mesh's CPU is not mostly on its nodes: %v", mesh)
	}
	if direct["backend"] <= 0 && mesh["backend"] <= 0 {
		t.Errorf("no CPU on the backend: direct %v, mesh %v", direct, mesh)
	}
	if rep.Results[0].DedicatedShare != 1 || rep.Results[2].DedicatedShare <= 0 {
		t.Errorf("dedicated estimates: direct %v, mesh %v", rep.Results[0].DedicatedShare, rep.Results[2].DedicatedShare)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil || !strings.Contains(table.String(), "dedicated est.") {
		t.Errorf("table (%v):\n%s", err, table.String())
	}
}

func TestBusiestSpreadsOther(t *testing.T) {
	split := splitCPU(100, map[string]time.Duration{"": 10, "consumer": 30, "provider": 60})
	if split[PartOther] != 10 || split["consumer"] != 30 || split["provider"] != 60 {
		t.Fatalf("split %v", split)
	}
	// The busiest serving part takes its share of "other"; the client and
	// the registry never count as the busiest.
	got := busiest(map[string]float64{PartClient: 90, "provider": 60, "consumer": 30, PartRegistry: 20, PartOther: 20})
	if want := 60 * 220.0 / 200; math.Abs(got-want) > 1e-9 {
		t.Fatalf("busiest = %v, want %v", got, want)
	}
	if busiest(map[string]float64{PartOther: 5}) != 0 || busiest(nil) != 0 {
		t.Fatal("busiest of nothing that serves is not 0")
	}
}

func TestMedianOfRounds(t *testing.T) {
	rs := []Result{
		{Calls: 10, CallsPerSec: 300, P50Ms: 3, RatioToDirect: 0.3, CPUPerCallUs: 30, CPUByPartUs: map[string]float64{"consumer": 10}},
		{Calls: 20, Errors: 1, FirstError: "boom", CallsPerSec: 100, P50Ms: 1, RatioToDirect: 0.1, CPUPerCallUs: 10,
			CPUByPartUs: map[string]float64{"consumer": 30, PartRegistry: 3}},
		{Calls: 30, CallsPerSec: 200, P50Ms: 2, RatioToDirect: 0.2, CPUPerCallUs: 20, CPUByPartUs: map[string]float64{"consumer": 20},
			Batching: map[string]Batching{"provider": {RecordsPerCommit: 6}}},
	}
	m := medianOf(rs)
	if m.Calls != 60 || m.Errors != 1 || m.FirstError != "boom" || m.CallsPerSec != 200 || m.P50Ms != 2 || m.RatioToDirect != 0.2 || m.CPUPerCallUs != 20 {
		t.Fatalf("median of three: %+v", m)
	}
	// A part seen in one round only counts 0 in the others (and a part
	// idle in most rounds is left out).
	if _, ok := m.CPUByPartUs[PartRegistry]; m.CPUByPartUs["consumer"] != 20 || ok || len(m.CPUByPartUs) != 1 || m.Batching["provider"].RecordsPerCommit != 0 {
		t.Fatalf("parts %v, batching %v", m.CPUByPartUs, m.Batching)
	}
	if m := medianOf(rs[:2]); m.CallsPerSec != 200 || m.P50Ms != 2 {
		t.Fatalf("median of two is their mean: %+v", m)
	}
	if m := medianOf(rs[:1]); m.Calls != 10 || m.CallsPerSec != 300 {
		t.Fatalf("one round: %+v", m)
	}
}

func TestRepeatRuns(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	var progress bytes.Buffer
	rep, err := Run(ctx, Config{Duration: 100 * time.Millisecond, Concurrency: []int{2}, Cases: []string{CaseUnary},
		Paths: []string{PathDirect, PathMesh}, Repeat: 2, Dir: t.TempDir(), Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Rounds != 2 || len(rep.Results) != 2 || rep.Results[1].Path != PathMesh || rep.Results[1].RatioToDirect <= 0 {
		t.Fatalf("report %+v", rep)
	}
	if !strings.Contains(progress.String(), "[4/4] "+CaseUnary+" mesh concurrency 2") {
		t.Fatalf("progress %q", progress.String())
	}
}

// TestBackendWork: with Config.BackendWork and BackendWait the backend
// really spends that CPU and waits that long on each call (lower bounds
// only: a shared machine makes both longer, never shorter), and the report
// says so.
func TestBackendWork(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	const work, wait = 4 * time.Millisecond, 3 * time.Millisecond
	rep, err := Run(ctx, Config{Duration: 300 * time.Millisecond, Concurrency: []int{1}, Cases: []string{CaseUnary, CaseStream},
		Paths: []string{PathDirect}, Dir: t.TempDir(), BackendWork: work, BackendWait: wait})
	if err != nil {
		t.Fatal(err)
	}
	if rep.BackendWorkUs != 4000 || rep.BackendWaitMs != 3 || rep.BackendWorkBlocks < 1 {
		t.Fatalf("report: work %v µs in %d blocks, wait %v ms", rep.BackendWorkUs, rep.BackendWorkBlocks, rep.BackendWaitMs)
	}
	for _, r := range rep.Results {
		if r.Calls == 0 || r.Errors != 0 || r.P50Ms < 3+4.0/2 {
			t.Errorf("%s: %d calls, %d errors, p50 %.2f ms (want at least the wait and half the work)", r.Case, r.Calls, r.Errors, r.P50Ms)
		}
		if runtime.GOOS == "linux" && r.CPUPerCallUs < 4000/2 {
			t.Errorf("%s: %.0f µs CPU per call (want at least half the work)", r.Case, r.CPUPerCallUs)
		}
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil || !strings.Contains(table.String(), "the backend works 4000 µs") {
		t.Errorf("table (%v):\n%s", err, table.String())
	}
	if err := (&Config{Duration: time.Second, Concurrency: []int{1}, Cases: []string{CaseUnary}, BackendWork: -1}).Validate(); err == nil {
		t.Error("negative backend work accepted")
	}
}
