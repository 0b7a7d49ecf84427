// Package bench measures, for `sild bench`, the cost of the mesh: it starts
// a registry, a consumer node, a provider node and a backend in-process on
// 127.0.0.1 (see internal/mesh; mTLS, signatures and durable ledgers on both
// nodes, as in production), and times the same calls made straight to the
// backend and through the two nodes, in the same run, for each case and
// concurrency level.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/cpustat"
	"github.com/sildmesh/sild/internal/descset"
	"github.com/sildmesh/sild/internal/mesh"
	"github.com/sildmesh/sild/internal/promtext"
	"github.com/sildmesh/sild/node/envelope"
	"github.com/sildmesh/sild/node/forward"
)

// Case names.
const (
	CaseUnary  = "unary-1KiB"
	CaseStream = "server-stream-10x1KiB"
)

// Paths a call takes.
const (
	// PathDirect is the client calling the backend.
	PathDirect = "direct"
	// PathRelay is the client calling the backend through two plain gRPC
	// proxies (node/forward, plaintext, no checks): the same hops as the
	// mesh without TLS, signatures or ledgers, so the mesh's ceiling on
	// this machine.
	PathRelay = "relay"
	// PathMesh is the client calling the backend through a consumer node
	// and a provider node.
	PathMesh = "mesh"
)

// Paths are all the paths, in the order they are measured.
var Paths = []string{PathDirect, PathRelay, PathMesh}

// Config configures a benchmark run.
type Config struct {
	// Duration is how long each measurement runs (default 3 s).
	Duration time.Duration
	// Warmup runs before each measurement, not counted (default a tenth of
	// Duration, at most 500 ms).
	Warmup time.Duration
	// Concurrency are the numbers of concurrent callers (default 1, 16, 64).
	Concurrency []int
	// Cases to run (default CaseUnary and CaseStream).
	Cases []string
	// Paths to measure (none: all of Paths); without PathDirect there is
	// no ratio to direct.
	Paths []string
	// Dir is where the temporary data directory is created.
	Dir string
	// Progress receives a progress line while it runs (nil: none).
	Progress io.Writer
	// Logger receives the components' logs; nil discards them.
	Logger *slog.Logger
	// Repeat runs the whole sequence of measurements this many times
	// (default 1); each Result is then the median of its rounds, its ratio
	// to direct the median of the ratios within each round. On a shared
	// machine whose load changes from minute to minute, three or five
	// rounds give steadier figures than one long one.
	Repeat int
	// ByPart profiles each measurement to tell the CPU time per call of
	// each part (Result.CPUByPartUs) and estimate the share of direct each
	// path would reach with its parts on machines of their own
	// (Result.DedicatedShare). No other CPU profile may run meanwhile.
	ByPart bool
	// BackendWork is CPU work the backend does for each call before it
	// answers, as a backend that computes its answer: a fixed amount of
	// SHA-256 hashing that took this long on one core when calibrated at
	// start (0: none, the plain echo; at most MaxBackendWork).
	BackendWork time.Duration
	// BackendWait is how long the backend waits for each call before it
	// answers, without using CPU, as a backend that asks a database (0:
	// none; at most MaxBackendWait).
	BackendWait time.Duration
}

// Bounds of Config.BackendWork and Config.BackendWait.
const (
	MaxBackendWork = time.Second
	MaxBackendWait = 10 * time.Second
)

// DefaultConfig returns the defaults (about a minute in all).
func DefaultConfig() Config {
	return Config{Duration: 3 * time.Second, Concurrency: []int{1, 16, 64}, Cases: []string{CaseUnary, CaseStream}, Paths: Paths}
}

// Validate names the first wrong field.
func (c *Config) Validate() error {
	if c.Duration <= 0 {
		return errors.New("duration: must be positive")
	}
	if c.Warmup < 0 {
		return errors.New("warmup: must not be negative")
	}
	if len(c.Concurrency) == 0 {
		return errors.New("concurrency: at least one level")
	}
	for _, n := range c.Concurrency {
		if n < 1 || n > 4096 {
			return fmt.Errorf("concurrency: %d not in 1..4096", n)
		}
	}
	if len(c.Cases) == 0 {
		return errors.New("cases: at least one")
	}
	for _, k := range c.Cases {
		if k != CaseUnary && k != CaseStream {
			return fmt.Errorf("cases: unknown case %q (want %s or %s)", k, CaseUnary, CaseStream)
		}
	}
	for _, p := range c.Paths {
		if !slices.Contains(Paths, p) {
			return fmt.Errorf("paths: unknown path %q (want %s)", p, strings.Join(Paths, ", "))
		}
	}
	if c.BackendWork < 0 || c.BackendWork > MaxBackendWork {
		return fmt.Errorf("backend work: %v not in 0..%v", c.BackendWork, MaxBackendWork)
	}
	if c.BackendWait < 0 || c.BackendWait > MaxBackendWait {
		return fmt.Errorf("backend wait: %v not in 0..%v", c.BackendWait, MaxBackendWait)
	}
	if c.Repeat < 0 || c.Repeat > maxRepeat {
		return fmt.Errorf("repeat: %d not in 1..%d", c.Repeat, maxRepeat)
	}
	return nil
}

// maxRepeat bounds Config.Repeat.
const maxRepeat = 20

// Result is one measurement.
type Result struct {
	Case        string `json:"case"`
	Path        string `json:"path"`
	Concurrency int    `json:"concurrency"`
	Calls       int64  `json:"calls"`
	Errors      int64  `json:"errors"`
	// CallsPerSec is completed calls per second; a stream call counts once.
	CallsPerSec float64 `json:"calls_per_sec"`
	P50Ms       float64 `json:"p50_ms"`
	P99Ms       float64 `json:"p99_ms"`
	// RatioToDirect is CallsPerSec over that of the direct path for the
	// same case and concurrency (1 for direct itself; 0 when direct was
	// not measured or made no call).
	RatioToDirect float64 `json:"ratio_to_direct"`
	// CPUPerCallUs is the CPU time the whole process (client, nodes,
	// backend and registry alike) used per completed call while measuring,
	// in microseconds; 0 where it cannot be read. Unlike calls/s it hardly
	// depends on what else the machine is doing.
	CPUPerCallUs float64 `json:"cpu_per_call_us"`
	// CPUByPartUs splits CPUPerCallUs by the part that spent it (see
	// Parts), from a CPU profile of the measurement (Config.ByPart).
	CPUByPartUs map[string]float64 `json:"cpu_per_call_us_by_part,omitempty"`
	// DedicatedShare estimates RatioToDirect with each serving part (the
	// relay proxies or nodes, and the backend) on a machine of its own and
	// the callers not the limit: CPU-bound, a chain goes as fast as its
	// busiest part, so it is the CPU per call of the busiest serving part
	// of direct (the backend) over that of this path. CPU no part claims
	// (PartOther) is spread over the parts in proportion. Config.ByPart
	// only; 0 without direct.
	DedicatedShare float64 `json:"dedicated_share_of_direct,omitempty"`
	// Batching tells, for a mesh measurement, how each node (by part:
	// consumer, provider) shared its fixed costs among calls, from the
	// counters on its /metrics.
	Batching map[string]Batching `json:"batching,omitempty"`
	// FirstError is the text of the first failed call, if any.
	FirstError string `json:"first_error,omitempty"`
}

// Batching is how a node shared its fixed costs during a measurement.
type Batching struct {
	// RecordsPerCommit is the mean number of ledger records per synced
	// commit.
	RecordsPerCommit float64 `json:"records_per_commit"`
	// DigestsPerSignature is the mean number of digests one root signature
	// of the node covered.
	DigestsPerSignature float64 `json:"digests_per_signature"`
	// ChecksPerCall is how many root signatures of the other node it
	// verified per call (public-key operations).
	ChecksPerCall float64 `json:"checks_per_call"`
}

// Parts of the run that Config.ByPart tells apart: the callers, the relay's
// two proxies, the nodes and the backend (mesh.Part*), the registry, and
// CPU spent outside all of them (the Go runtime's own goroutines).
const (
	PartClient   = "client"
	PartRelay1   = "relay1"
	PartRelay2   = "relay2"
	PartRegistry = "registry"
	PartOther    = "other"
)

// Parts lists the parts in the order of a call's path.
var Parts = []string{PartClient, PartRelay1, PartRelay2, mesh.PartConsumer, mesh.PartProvider, mesh.PartBackend, PartRegistry, PartOther}

// serving reports whether part serves calls (a proxy, a node, the
// backend), as opposed to making them or being bystanders.
func serving(part string) bool {
	return part != PartClient && part != PartRegistry && part != PartOther
}

// Machine describes where the run took place.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model"`
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
}

// Report is the outcome of a run.
type Report struct {
	Machine    Machine   `json:"machine"`
	DurationMs int64     `json:"duration_per_measurement_ms"`
	SetupMs    int64     `json:"setup_ms"`
	TotalMs    int64     `json:"total_ms"`
	Started    time.Time `json:"started"`
	// Rounds is how many times each measurement was made (Config.Repeat).
	Rounds int `json:"rounds"`
	// BackendWorkUs and BackendWaitMs are Config.BackendWork and
	// Config.BackendWait; BackendWorkBlocks is how many 1 KiB blocks the
	// backend hashes per call to do that work on this machine.
	BackendWorkUs     float64  `json:"backend_work_us,omitempty"`
	BackendWorkBlocks int      `json:"backend_work_blocks,omitempty"`
	BackendWaitMs     float64  `json:"backend_wait_ms,omitempty"`
	Results           []Result `json:"results"`
}

// Run starts the mesh, runs every case at every concurrency level over
// every path (direct, relay, then mesh) and returns the report.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	if cfg.Warmup == 0 {
		cfg.Warmup = min(cfg.Duration/10, 500*time.Millisecond)
	}
	if len(cfg.Paths) == 0 {
		cfg.Paths = Paths
	}
	if cfg.Repeat == 0 {
		cfg.Repeat = 1
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bench config: %w", err)
	}
	start := time.Now()
	data, err := os.MkdirTemp(cfg.Dir, "sild-bench-")
	if err != nil {
		return nil, fmt.Errorf("bench data dir: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(data); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove bench data: %w", rerr))
		}
	}()
	m := mesh.New(data, cfg.Logger)
	defer func() { err = errors.Join(err, m.Close()) }()
	backend := testService{wait: cfg.BackendWait}
	if cfg.BackendWork > 0 {
		progress(cfg.Progress, "calibrating the backend's work")
		backend.blocks = calibrate(cfg.BackendWork)
	}
	progress(cfg.Progress, "starting a registry, two nodes and a backend")
	w, err := startWorld(ctx, m, backend)
	if err != nil {
		return nil, err
	}
	defer w.close()
	rep = &Report{Machine: machine(), DurationMs: cfg.Duration.Milliseconds(), Started: start.UTC(), SetupMs: time.Since(start).Milliseconds(),
		BackendWorkUs: float64(cfg.BackendWork.Nanoseconds()) / 1e3, BackendWorkBlocks: backend.blocks, BackendWaitMs: float64(cfg.BackendWait.Nanoseconds()) / 1e6}
	var run []string // cfg.Paths in measuring order
	for _, p := range Paths {
		if slices.Contains(cfg.Paths, p) {
			run = append(run, p)
		}
	}
	total := cfg.Repeat * len(cfg.Cases) * len(cfg.Concurrency) * len(run)
	rounds := make([][]Result, cfg.Repeat)
	n := 0
	for round := range rounds {
		for _, k := range cfg.Cases {
			for _, c := range cfg.Concurrency {
				var direct, directBusiest float64
				for _, path := range run {
					n++
					label := fmt.Sprintf("[%d/%d] %s %s concurrency %d", n, total, k, path, c)
					r, err := w.measure(ctx, cfg, k, path, c, label)
					if err != nil {
						return nil, err
					}
					b := busiest(r.CPUByPartUs)
					if path == PathDirect {
						direct, directBusiest = r.CallsPerSec, b
					}
					if direct > 0 { // 1 for direct itself
						r.RatioToDirect = r.CallsPerSec / direct
					}
					if directBusiest > 0 && b > 0 {
						r.DedicatedShare = directBusiest / b
					}
					rounds[round] = append(rounds[round], r)
				}
			}
		}
	}
	for i := range rounds[0] {
		same := make([]Result, len(rounds))
		for round, rs := range rounds {
			same[round] = rs[i]
		}
		rep.Results = append(rep.Results, medianOf(same))
	}
	rep.Rounds = cfg.Repeat
	progress(cfg.Progress, "")
	rep.TotalMs = time.Since(start).Milliseconds()
	return rep, nil
}

// world is the benchmark's mesh: consumer node A serving the client
// subsystem, provider node B serving the backend.
type world struct {
	directConn, relayConn, meshConn *grpc.ClientConn
	client, target                  ident.Subsystem
	metrics                         map[string]string // /metrics URL by part, of the nodes
}

func (w *world) close() {
	for _, c := range []*grpc.ClientConn{w.directConn, w.relayConn, w.meshConn} {
		if c != nil {
			c.Close()
		}
	}
}

var plaintext = grpc.WithTransportCredentials(insecure.NewCredentials())

// startRelay starts two plain proxies in front of backend and returns a
// connection to the first.
func startRelay(m *mesh.Mesh, backend string) (*grpc.ClientConn, error) {
	addr := backend
	for _, part := range []string{PartRelay2, PartRelay1} { // nearest the backend first
		var err error
		cpustat.Do(mesh.PartLabel, part, func() {
			var up *grpc.ClientConn
			if up, err = grpc.NewClient(addr, plaintext); err != nil {
				return
			}
			m.OnClose(up.Close)
			p := &forward.Proxy{Director: func(ctx context.Context, _ string) (forward.Route, error) {
				return forward.Route{Ctx: forward.CopyIncoming(ctx), Conn: up}, nil
			}}
			addr, err = m.StartBackend(func(*grpc.Server) {}, p.ServerOptions()...)
		})
		if err != nil {
			return nil, fmt.Errorf("relay proxy: %w", err)
		}
	}
	return grpc.NewClient(addr, plaintext)
}

// startWorld starts the registry, the pair and the relay, and connects the
// callers, each under its part's profiler label.
func startWorld(ctx context.Context, m *mesh.Mesh, backend testService) (w *world, err error) {
	var r *mesh.Registry
	cpustat.Do(mesh.PartLabel, PartRegistry, func() {
		r, err = m.StartRegistry(ctx, mesh.RegistryOptions{Instance: "EE", TrustDomain: "ee.sild.test", Servers: 1})
	})
	if err != nil {
		return nil, err
	}
	cpustat.Do(mesh.PartLabel, PartClient, func() { w, err = startPaths(ctx, m, r, backend) })
	return w, err
}

func startPaths(ctx context.Context, m *mesh.Mesh, r *mesh.Registry, backend testService) (*world, error) {
	member, _ := ident.ParseMember("EE/GOV/70000310")
	p, err := m.StartPair(ctx, r, mesh.PairOptions{Member: member, Service: "grpc.testing.TestService",
		DescriptorSet: descset.Of(testpb.File_grpc_testing_test_proto),
		Register:      func(s *grpc.Server) { testpb.RegisterTestServiceServer(s, backend) }})
	if err != nil {
		return nil, err
	}
	w := &world{client: p.Client, target: p.Target, metrics: map[string]string{
		mesh.PartConsumer: "http://" + p.Consumer.AdminAddr() + "/metrics",
		mesh.PartProvider: "http://" + p.Provider.AdminAddr() + "/metrics",
	}}
	if w.directConn, err = grpc.NewClient(p.Backend, plaintext); err != nil {
		return nil, err
	}
	if w.relayConn, err = startRelay(m, p.Backend); err != nil {
		w.close()
		return nil, err
	}
	if w.meshConn, err = p.Consumer.Dial(); err != nil {
		w.close()
		return nil, err
	}
	// The grant is in effect once a call through the mesh succeeds.
	var last error
	if err := mesh.WaitFor(ctx, 20*time.Second, "first call through the mesh", func() bool {
		last = w.call(w.ctx(context.Background(), PathMesh), testpb.NewTestServiceClient(w.meshConn), CaseUnary)
		return last == nil
	}); err != nil {
		w.close()
		return nil, fmt.Errorf("%w: %v", err, last)
	}
	return w, nil
}

func (w *world) ctx(ctx context.Context, path string) context.Context {
	if path == PathDirect {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, envelope.HeaderClient, w.client.String(), envelope.HeaderTarget, w.target.String())
}

var (
	payload    = &testpb.Payload{Body: make([]byte, 1024)}
	unaryReq   = &testpb.SimpleRequest{ResponseSize: 1024, Payload: payload}
	streamReq  = &testpb.StreamingOutputCallRequest{ResponseParameters: streamParams(10, 1024), Payload: payload}
	errShort   = errors.New("stream ended early")
	respBodies = make([]byte, 1024)
)

func streamParams(n, size int) []*testpb.ResponseParameters {
	ps := make([]*testpb.ResponseParameters, n)
	for i := range ps {
		ps[i] = &testpb.ResponseParameters{Size: int32(size)}
	}
	return ps
}

// call makes one call of case k.
func (w *world) call(ctx context.Context, c testpb.TestServiceClient, k string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if k == CaseUnary {
		_, err := c.UnaryCall(ctx, unaryReq)
		return err
	}
	s, err := c.StreamingOutputCall(ctx, streamReq)
	if err != nil {
		return err
	}
	n := 0
	for {
		_, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		n++
	}
	if n != len(streamReq.ResponseParameters) {
		return errShort
	}
	return nil
}

// measure runs conc callers of case k over path for the warmup and then
// for cfg.Duration, timing each call.
func (w *world) measure(ctx context.Context, cfg Config, k, path string, conc int, label string) (Result, error) {
	conn := map[string]*grpc.ClientConn{PathDirect: w.directConn, PathRelay: w.relayConn, PathMesh: w.meshConn}[path]
	client := testpb.NewTestServiceClient(conn)
	callCtx := w.ctx(ctx, path)
	var (
		counting atomic.Bool
		stop     atomic.Bool
		calls    atomic.Int64
		errs     atomic.Int64
		firstErr atomic.Pointer[string]
		wg       sync.WaitGroup
	)
	lats := make([][]time.Duration, conc)
	cpustat.Do(mesh.PartLabel, PartClient, func() {
		for i := range conc {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l := make([]time.Duration, 0, 4096)
				for !stop.Load() && ctx.Err() == nil {
					t := time.Now()
					err := w.call(callCtx, client, k)
					d := time.Since(t)
					if !counting.Load() {
						continue
					}
					if err != nil {
						errs.Add(1)
						msg := err.Error()
						firstErr.CompareAndSwap(nil, &msg)
						continue
					}
					calls.Add(1)
					l = append(l, d)
				}
				lats[i] = l
			}()
		}
	})
	ticker := time.NewTicker(250 * time.Millisecond)
	defer ticker.Stop()
	warm := time.NewTimer(cfg.Warmup)
	defer warm.Stop()
	var (
		measured time.Time
		end      <-chan time.Time
		cpuStart time.Duration
		cpuOK    bool
		before   map[string]map[string]float64
		prof     bytes.Buffer
		profErr  error
		profiled bool
	)
	progress(cfg.Progress, label+": warming up")
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case <-warm.C:
			if path == PathMesh {
				before = w.scrape(ctx)
			}
			if cfg.ByPart {
				if profErr = pprof.StartCPUProfile(&prof); profErr != nil {
					break wait
				}
				profiled = true
			}
			measured = time.Now()
			cpuStart, cpuOK = cpustat.Process()
			counting.Store(true)
			end = time.After(cfg.Duration)
		case <-end:
			break wait
		case <-ticker.C:
			if !measured.IsZero() {
				progress(cfg.Progress, fmt.Sprintf("%s: %.1fs, %d calls", label, time.Since(measured).Seconds(), calls.Load()))
			}
		}
	}
	counting.Store(false)
	cpuEnd, cpuEndOK := cpustat.Process()
	if profiled {
		pprof.StopCPUProfile()
	}
	var after map[string]map[string]float64
	if before != nil {
		after = w.scrape(ctx)
	}
	stop.Store(true)
	elapsed := time.Since(measured)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	if profErr != nil {
		return Result{}, fmt.Errorf("profile the measurement: %w", profErr)
	}
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	slices.Sort(all)
	r := Result{Case: k, Path: path, Concurrency: conc, Calls: calls.Load(), Errors: errs.Load()}
	if e := firstErr.Load(); e != nil {
		r.FirstError = *e
	}
	if elapsed > 0 {
		r.CallsPerSec = float64(r.Calls) / elapsed.Seconds()
	}
	r.P50Ms, r.P99Ms = quantile(all, 0.50), quantile(all, 0.99)
	r.Batching = batching(before, after, r.Calls)
	if cpuOK && cpuEndOK && r.Calls > 0 {
		r.CPUPerCallUs = float64((cpuEnd - cpuStart).Microseconds()) / float64(r.Calls)
	}
	if profiled && r.CPUPerCallUs > 0 {
		byPart, err := cpustat.ByLabel(prof.Bytes(), mesh.PartLabel)
		if err != nil {
			return Result{}, err
		}
		r.CPUByPartUs = splitCPU(r.CPUPerCallUs, byPart)
	}
	return r, nil
}

// medianOf merges the rounds of one measurement: medians of the rates,
// latencies, ratios and CPU figures, sums of the counts; the first error
// seen.
func medianOf(rs []Result) Result {
	out := rs[0]
	if len(rs) == 1 {
		return out
	}
	med := func(f func(Result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	out.Calls, out.Errors = 0, 0
	for _, r := range rs {
		out.Calls += r.Calls
		out.Errors += r.Errors
		if out.FirstError == "" {
			out.FirstError = r.FirstError
		}
	}
	out.CallsPerSec = med(func(r Result) float64 { return r.CallsPerSec })
	out.P50Ms = med(func(r Result) float64 { return r.P50Ms })
	out.P99Ms = med(func(r Result) float64 { return r.P99Ms })
	out.RatioToDirect = med(func(r Result) float64 { return r.RatioToDirect })
	out.CPUPerCallUs = med(func(r Result) float64 { return r.CPUPerCallUs })
	out.DedicatedShare = med(func(r Result) float64 { return r.DedicatedShare })
	parts, nodes := map[string]bool{}, map[string]bool{} // in any round
	for _, r := range rs {
		for part := range r.CPUByPartUs {
			parts[part] = true
		}
		for part := range r.Batching {
			nodes[part] = true
		}
	}
	out.CPUByPartUs, out.Batching = nil, nil
	for part := range parts {
		us := med(func(r Result) float64 { return r.CPUByPartUs[part] })
		if us == 0 {
			continue // idle in most rounds
		}
		if out.CPUByPartUs == nil {
			out.CPUByPartUs = map[string]float64{}
		}
		out.CPUByPartUs[part] = us
	}
	for part := range nodes {
		if out.Batching == nil {
			out.Batching = map[string]Batching{}
		}
		out.Batching[part] = Batching{
			RecordsPerCommit:    med(func(r Result) float64 { return r.Batching[part].RecordsPerCommit }),
			DigestsPerSignature: med(func(r Result) float64 { return r.Batching[part].DigestsPerSignature }),
			ChecksPerCall:       med(func(r Result) float64 { return r.Batching[part].ChecksPerCall }),
		}
	}
	return out
}

// scrape reads the nodes' counters; a node that cannot be read is left out.
func (w *world) scrape(ctx context.Context) map[string]map[string]float64 {
	out := map[string]map[string]float64{}
	for part, url := range w.metrics {
		if m, err := promtext.Scrape(ctx, url); err == nil {
			out[part] = m
		}
	}
	return out
}

// batching computes each node's Batching from its counters before and
// after a measurement of calls calls.
func batching(before, after map[string]map[string]float64, calls int64) map[string]Batching {
	if calls <= 0 {
		return nil
	}
	var out map[string]Batching
	for part, a := range after {
		b, ok := before[part]
		if !ok {
			continue
		}
		delta := func(name string) float64 { return a[name] - b[name] }
		ratio := func(x, y float64) float64 {
			if y <= 0 {
				return 0
			}
			return x / y
		}
		if out == nil {
			out = map[string]Batching{}
		}
		out[part] = Batching{
			RecordsPerCommit:    ratio(delta("sild_ledger_records_total"), delta("sild_ledger_commits_total")),
			DigestsPerSignature: ratio(delta("sild_signer_digests_total"), delta("sild_signer_signatures_total")),
			ChecksPerCall:       delta("sild_verifier_root_checks_total") / float64(calls),
		}
	}
	return out
}

// splitCPU divides perCall in proportion to the CPU profile's time by
// part; time without a part counts as PartOther.
func splitCPU(perCall float64, byPart map[string]time.Duration) map[string]float64 {
	var total time.Duration
	for _, d := range byPart {
		total += d
	}
	if total <= 0 {
		return nil
	}
	out := map[string]float64{}
	for part, d := range byPart {
		if part == "" {
			part = PartOther
		}
		out[part] += perCall * float64(d) / float64(total)
	}
	return out
}

// busiest returns the CPU per call of the busiest serving part, with
// PartOther spread over all parts in proportion; 0 if none served.
func busiest(byPart map[string]float64) float64 {
	var claimed, top float64
	for part, us := range byPart {
		if part != PartOther {
			claimed += us
		}
		if serving(part) {
			top = max(top, us)
		}
	}
	if claimed <= 0 {
		return 0
	}
	return top * (claimed + byPart[PartOther]) / claimed
}

// quantile returns the q-quantile of sorted durations in milliseconds.
func quantile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted)) + 0.5)
	i = min(max(i-1, 0), len(sorted)-1)
	return float64(sorted[i].Microseconds()) / 1000
}

// progress rewrites the progress line (an empty line clears it).
func progress(w io.Writer, line string) {
	if w == nil {
		return
	}
	if line == "" {
		fmt.Fprintf(w, "\r%-100s\r", "")
		return
	}
	fmt.Fprintf(w, "\r%-100.100s", line)
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// testService is the backend: grpc.testing.TestService answering with
// payloads of the requested sizes, after its work for the call (once per
// call, streams included).
type testService struct {
	testpb.UnimplementedTestServiceServer
	blocks int           // 1 KiB blocks hashed per call (Config.BackendWork)
	wait   time.Duration // Config.BackendWait
}

func (t testService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if err := t.work(ctx); err != nil {
		return nil, err
	}
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: respBodies[:min(int(req.GetResponseSize()), len(respBodies))]}}, nil
}

func (t testService) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, s testpb.TestService_StreamingOutputCallServer) error {
	if err := t.work(s.Context()); err != nil {
		return err
	}
	for _, p := range req.GetResponseParameters() {
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: respBodies[:min(int(p.GetSize()), len(respBodies))]}}); err != nil {
			return err
		}
	}
	return nil
}

// work does the backend's work for one call: it hashes t.blocks blocks and
// waits t.wait (or until ctx ends).
func (t testService) work(ctx context.Context) error {
	if t.blocks > 0 {
		hashBlocks(t.blocks)
	}
	if t.wait <= 0 {
		return nil
	}
	tm := time.NewTimer(t.wait)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// workSink keeps the backend's hashing from being optimised away.
var workSink atomic.Uint32

// hashBlocks hashes n chained 1 KiB blocks, each starting with the hash of
// the one before.
func hashBlocks(n int) {
	var block [1024]byte
	for range n {
		sum := sha256.Sum256(block[:])
		copy(block[:], sum[:])
	}
	workSink.Add(uint32(block[0]))
}

// calibrate returns how many blocks hashBlocks takes to run for about d on
// one core: the fastest of a few timed rounds, since a shared machine only
// ever makes a round slower.
func calibrate(d time.Duration) int {
	const probe = 2000
	best := time.Duration(math.MaxInt64)
	for range 5 {
		t := time.Now()
		hashBlocks(probe)
		best = min(best, time.Since(t))
	}
	return max(1, int(float64(probe)*float64(d)/float64(max(best, 1))))
}
