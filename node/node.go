// Package node is sild's security server: the daemon a member organisation
// runs to exchange data with others. It joins its ecosystem's registry with
// a one-time token (receiving an X.509-SVID and a message-signing
// certificate), renews both before they expire, watches the signed global
// configuration (verifying every version, caching the last on disk so that
// it keeps serving while the registry is unreachable), and serves three
// listeners:
//
//   - consumer: member systems call any gRPC method with sild-client and
//     sild-target metadata (node/exchange carries the call);
//   - exchange: mTLS between nodes, SPIFFE SVIDs on both sides;
//   - admin: the node's admin gRPC API (access rights) and /metrics,
//     /healthz, /readyz over HTTP on one port (HTTP/2 without TLS for gRPC).
//
// The pieces live in sub-packages: forward (raw-frame proxy), envelope
// (headers, hash chains, replay), sign (batch signatures), access (access
// rights), topology (configuration index), exchange (consumer and provider
// paths).
package node

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"google.golang.org/grpc"

	"github.com/sildmesh/sild/gateway"
	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/apikey"
	"github.com/sildmesh/sild/ledger"
	"github.com/sildmesh/sild/node/access"
	"github.com/sildmesh/sild/node/sign"
	"github.com/sildmesh/sild/node/topology"
	"github.com/sildmesh/sild/pki"
)

// Node is one security server. Create it with New, start it with Run.
type Node struct {
	cfg  Config
	log  *slog.Logger
	self ident.Node

	svids   *pki.SVIDSource
	bundles *pki.BundleSource

	idMu sync.Mutex
	id   *identity

	top      atomic.Pointer[topology.Topology]
	topCh    chan struct{} // closed when top changes
	topMu    sync.Mutex
	signer   *sign.Signer
	verifier *sign.Verifier // of the peers' signatures
	access   *access.Store
	ledgerP  atomic.Pointer[ledger.Ledger]

	regMu   sync.Mutex
	regAddr string
	regConn *grpc.ClientConn

	consumerLn, exchangeLn, adminLn net.Listener
	consumerTLS                     *consumerTLS // nil: plaintext
	metrics                         *prometheus.Registry
	configVersion                   prometheus.Gauge
	maxUnstamped                    prometheus.Gauge // the ledger's limit in effect (seconds)
	exchanges                       *exchangeMetrics

	limitMu      sync.Mutex
	limit        time.Duration // the ledger's max_unstamped in effect
	limitForLife time.Duration // the configuration lifetime limit was set for
}

// New validates cfg and opens the listeners (so that their addresses are
// known before Run, also with port 0).
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("node config: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	self, _ := ident.ParseNode(cfg.Node)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	ctls, err := loadConsumerTLS(&cfg)
	if err != nil {
		return nil, err
	}
	n := &Node{consumerTLS: ctls,
		cfg: cfg, log: cfg.Logger.With("node", self.String()), self: self,
		svids: pki.NewSVIDSource(nil), bundles: pki.NewBundleSource(),
		topCh:   make(chan struct{}),
		metrics: prometheus.NewRegistry(),
	}
	n.configVersion = prometheus.NewGauge(prometheus.GaugeOpts{Name: "sild_node_config_version", Help: "Version of the global configuration in use."})
	n.maxUnstamped = prometheus.NewGauge(prometheus.GaugeOpts{Name: "sild_node_ledger_max_unstamped_seconds",
		Help: "How long ledger records may wait for a time-stamp before exchanges are refused (max_unstamped, or the configuration's lifetime)."})
	n.exchanges = newExchangeMetrics()
	n.metrics.MustRegister(collectors.NewGoCollector(), n.configVersion, n.maxUnstamped, n.exchanges.calls, n.exchanges.duration)
	listen := func(addr string) net.Listener {
		if err != nil {
			return nil
		}
		var ln net.Listener
		ln, err = net.Listen("tcp", addr)
		return ln
	}
	n.consumerLn = listen(cfg.ConsumerListen)
	n.exchangeLn = listen(cfg.ExchangeListen)
	n.adminLn = listen(cfg.AdminListen)
	if err != nil {
		n.closeListeners()
		return nil, fmt.Errorf("listen: %w", err)
	}
	return n, nil
}

func (n *Node) closeListeners() {
	for _, ln := range []net.Listener{n.consumerLn, n.exchangeLn, n.adminLn} {
		if ln != nil {
			ln.Close()
		}
	}
}

// ConsumerAddr, ExchangeAddr and AdminAddr return the listeners' addresses.
func (n *Node) ConsumerAddr() string { return n.consumerLn.Addr().String() }

// ExchangeAddr returns the exchange listener's address.
func (n *Node) ExchangeAddr() string { return n.exchangeLn.Addr().String() }

// AdminAddr returns the admin listener's address.
func (n *Node) AdminAddr() string { return n.adminLn.Addr().String() }

// ID returns the node's identifier.
func (n *Node) ID() ident.Node { return n.self }

// Topology returns the configuration in use, or nil before the first one.
func (n *Node) Topology() *topology.Topology { return n.top.Load() }

// exchangeAdvertise is the exchange address published in the configuration.
func (n *Node) exchangeAdvertise() string {
	if n.cfg.ExchangeAdvertise != "" {
		return n.cfg.ExchangeAdvertise
	}
	addr := n.exchangeLn.Addr().(*net.TCPAddr)
	if addr.IP.IsUnspecified() {
		host, _ := os.Hostname()
		return net.JoinHostPort(host, fmt.Sprint(addr.Port))
	}
	return addr.String()
}

// setRoots trusts roots (the ecosystem's bundle) for new handshakes.
func (n *Node) setRoots(roots []*x509.Certificate) {
	td, err := pki.TrustDomainOf(roots)
	if err != nil {
		n.log.Error("trust bundle", "err", err)
		return
	}
	n.bundles.Set(x509bundle.FromX509Authorities(td, roots))
}

// Run starts the node and blocks until ctx ends.
func (n *Node) Run(ctx context.Context) error {
	defer n.closeListeners()
	id, joinConfig, err := n.startIdentity(ctx) // joinConfig: the configuration a join returns
	if err != nil {
		return err
	}
	linger := n.cfg.BatchDelay
	if linger == 0 {
		linger = -1 // never (0 would be sign's default)
	}
	if n.signer, err = sign.New(sign.Config{Key: id.signKey, Chain: id.signChain, IncludeChain: true, Linger: linger}); err != nil {
		return err
	}
	defer n.signer.Close()
	n.verifier = sign.NewVerifier(0)
	if err := n.install(id); err != nil {
		return err
	}
	if err := n.loadCachedConfig(); err != nil {
		n.log.Warn("cached configuration", "err", err)
	}
	if joinConfig != nil {
		if err := n.acceptConfig(joinConfig); err != nil && !errors.Is(err, errStale) {
			n.log.Warn("configuration from join", "err", err)
		}
	}
	if n.access, err = access.Open(access.Config{Dir: filepath.Join(n.cfg.DataDir, dirAccess), Logger: n.log}); err != nil {
		return err
	}
	defer n.access.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	run := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		}()
	}
	led, err := n.openLedger(id)
	if err != nil {
		return err
	}
	defer led.Close()
	n.followConfigLifetime(led)
	n.ledgerP.Store(led)
	for _, c := range batchMetrics(led, n.signer, n.verifier) {
		n.metrics.MustRegister(c)
		defer n.metrics.Unregister(c)
	}
	run("watch", n.watchLoop)
	run("renew", n.renewLoop)
	run("admin", n.serveAdmin)
	run("ledger", led.Run)
	run("ledger limit", func(ctx context.Context) error {
		for {
			changed := n.TopologyChanged()
			n.followConfigLifetime(led)
			select {
			case <-ctx.Done():
				return nil
			case <-changed:
			}
		}
	})
	run("mesh", func(ctx context.Context) error { return n.serveMesh(ctx, led) })
	n.log.Info("node running", "consumer", n.ConsumerAddr(), "exchange", n.ExchangeAddr(), "admin", n.AdminAddr())
	<-ctx.Done()
	wg.Wait()
	n.regMu.Lock()
	if n.regConn != nil {
		n.regConn.Close()
	}
	n.regMu.Unlock()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// startIdentity returns the node's identity: the one in the data
// directory, if it is this node's and its SVID has not expired, else a new
// one from the join token, with the configuration the join returned.
func (n *Node) startIdentity(ctx context.Context) (*identity, *signedConfig, error) {
	id, err := loadIdentity(n.cfg.DataDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if n.cfg.TrustBundle == "" {
			return nil, nil, errors.New("trust_bundle: required on the first start (no identity in data_dir " + n.cfg.DataDir +
				" yet): the PEM file of the ecosystem's root certificates, from its registry operator; give it with --trust, SILD_NODE_TRUST or trust_bundle in --config")
		}
		if n.cfg.JoinToken == "" {
			return nil, nil, errors.New("join_token: required on the first start (no identity in data_dir " + n.cfg.DataDir +
				" yet): a one-time token from the registry operator (sild ctl node token " + n.self.String() +
				"); give it with --token, SILD_NODE_TOKEN or join_token in --config")
		}
		n.log.Info("no identity yet: joining", "registry", n.cfg.Registry)
		return n.joinAndSave(ctx)
	case err != nil:
		return nil, nil, fmt.Errorf("identity in data_dir %s: %w", n.cfg.DataDir, err)
	}
	svid, err := pki.NewSVID(id.svidKey, id.svidChain...)
	if err != nil {
		return nil, nil, fmt.Errorf("identity in data_dir %s: %w", n.cfg.DataDir, err)
	}
	if owner, err := ident.NodeFromSPIFFEID(svid.ID, n.self.Member.Instance); err != nil || owner != n.self {
		whose := svid.ID.String()
		if err == nil {
			whose = "node " + owner.String()
		}
		return nil, nil, fmt.Errorf("data_dir %s holds the identity of %s, not of node %s: give each node its own data directory (--data), or correct node (--node)",
			n.cfg.DataDir, whose, n.self)
	}
	expired := id.svidChain[0].NotAfter
	if time.Now().Before(expired) {
		return id, nil, nil
	}
	at := expired.UTC().Format(time.RFC3339)
	newToken := "get a new join token from the registry operator (sild ctl node token " + n.self.String() +
		") and start with --token <token> (or SILD_NODE_TOKEN): the node joins again and keeps its ledger and access rights"
	if n.cfg.JoinToken == "" {
		return nil, nil, fmt.Errorf("the SVID of %s in data_dir %s expired at %s, so neither the registry nor other nodes accept it; %s",
			n.self, n.cfg.DataDir, at, newToken)
	}
	n.log.Warn("SVID expired: joining again with the join token", "expired", at, "registry", n.cfg.Registry)
	if n.cfg.TrustBundle == "" { // the roots the node last trusted
		n.cfg.TrustBundle = filepath.Join(n.cfg.DataDir, fileBundle)
	}
	id, sc, err := n.joinAndSave(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("the SVID of %s expired at %s, and joining again with the configured join token failed (%w); a join token works only once: %s",
			n.self, at, err, newToken)
	}
	return id, sc, nil
}

// joinAndSave joins with the join token and stores the new identity.
func (n *Node) joinAndSave(ctx context.Context) (*identity, *signedConfig, error) {
	id, sc, err := n.join(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := id.save(n.cfg.DataDir); err != nil {
		return nil, nil, err
	}
	return id, sc, nil
}

// defaultConfigLifetime stands for the configuration's lifetime until the
// node has a configuration (the registry's default --config-ttl).
const defaultConfigLifetime = time.Hour

// followConfigLifetime sets the ledger's max_unstamped for the
// configuration in use. The time-stamping authority runs on the registry:
// when the registry is unreachable, records wait for a time-stamp while the
// node goes on with its cached configuration. Unset, max_unstamped is
// therefore the configuration's lifetime plus what a record may already
// have waited when the registry went away (a checkpoint interval and a
// time-stamp request), so that exchanges go on until the configuration
// expires (CONFIG_EXPIRED), and no record waits for its time-stamp longer
// than the node may work without the registry. A max_unstamped shorter than
// the lifetime is kept, with a warning.
func (n *Node) followConfigLifetime(led *ledger.Ledger) {
	var known time.Duration // the configuration's lifetime, 0 before one is known
	if top := n.Topology(); top != nil {
		known = max(top.Expires.Sub(top.Config.GetIssuedAt().AsTime()), 0)
	}
	n.limitMu.Lock()
	defer n.limitMu.Unlock()
	if n.limit != 0 && known == n.limitForLife {
		return
	}
	lifetime := cmp.Or(known, defaultConfigLifetime)
	limit := n.cfg.MaxUnstamped
	if limit == 0 {
		def := ledger.DefaultConfig()
		limit = lifetime + cmp.Or(n.cfg.CheckpointInterval, def.CheckpointInterval) + def.StampTimeout
	} else if known != 0 && limit < lifetime {
		n.log.Warn("max_unstamped is shorter than the global configuration's lifetime: while the registry and its time-stamping authority are unreachable, "+
			"exchanges will be refused (LEDGER_UNAVAILABLE) after max_unstamped, before the configuration expires; leave max_unstamped unset to follow the configuration",
			"max_unstamped", limit, "config_lifetime", lifetime)
	}
	if err := led.SetMaxUnstamped(limit); err != nil {
		n.log.Error("ledger max_unstamped", "err", err)
		return
	}
	if limit != n.limit {
		n.log.Info("ledger records may wait for a time-stamp", "max_unstamped", limit, "config_lifetime", lifetime)
	}
	n.limit, n.limitForLife = limit, known
	n.maxUnstamped.Set(limit.Seconds())
}

// serveGRPC serves srv on ln until ctx ends.
func serveGRPC(ctx context.Context, srv *grpc.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		stopped := make(chan struct{})
		go func() { srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			srv.Stop()
		}
		return nil
	case err := <-errc:
		return err
	}
}

// serveAdmin serves the admin gRPC API and the HTTP endpoints on one port.
func (n *Node) serveAdmin(ctx context.Context) error {
	roles := map[string]string{}
	for _, k := range n.cfg.AdminKeys {
		roles[k.Hash] = k.Role
	}
	gs := grpc.NewServer(access.ServerOptions(apikey.Static(roles))...)
	rights, err := access.NewServer(access.ServerConfig{Store: n.access, Logger: n.log, Serves: n.servesProvider})
	if err != nil {
		return err
	}
	nodev1.RegisterAdminServiceServer(gs, &adminServer{Server: rights, ledger: n.Ledger, log: n.log})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := n.ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.metrics, promhttp.HandlerOpts{}))
	// gateway: admin REST + GET /openapi.json on gs (same API-key checks).
	gw, err := gateway.NewNodeAdmin(ctx, gs, n.log.With("component", "gateway"))
	if err != nil {
		return err
	}
	mux.Handle("/", gw)
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	hs := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		Protocols:         &protocols,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
				gs.ServeHTTP(w, r)
				return
			}
			mux.ServeHTTP(w, r)
		}),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(n.adminLn) }()
	select {
	case <-ctx.Done():
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = hs.Shutdown(sctx)
		gs.Stop()
		return nil
	case err := <-errc:
		gs.Stop()
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}

// ready reports why the node cannot serve exchanges, or nil.
func (n *Node) ready() error {
	top := n.Topology()
	if top == nil {
		return errors.New("no global configuration yet")
	}
	if top.Expired(time.Now()) {
		return errors.New("global configuration expired at " + top.Expires.UTC().Format(time.RFC3339))
	}
	if rec := top.Node(n.self); rec == nil || rec.GetState() != registryv1.NodeState_NODE_STATE_ACTIVE {
		return errors.New("this node is not active in the global configuration (yet)")
	}
	if _, err := n.svids.GetX509SVID(); err != nil {
		return err
	}
	if led := n.Ledger(); led != nil {
		if err := led.Healthy(); err != nil {
			n.limitMu.Lock()
			limit := n.limit
			n.limitMu.Unlock()
			return fmt.Errorf("%w: records have waited longer than max_unstamped (%s) for a time-stamp from %s; exchanges are refused until one answers",
				err, limit, strings.Join(top.Config.GetTsaUrls(), ", "))
		}
	}
	return nil
}

// servesProvider reports whether this node is configured with a backend for
// sub (access rights may only be granted on those).
func (n *Node) servesProvider(sub ident.Subsystem) bool {
	for _, s := range n.cfg.Subsystems {
		if s.ID == sub.String() && s.Backend != "" {
			return true
		}
	}
	return false
}

// Ledger returns the node's evidence log (nil before Run opened it).
func (n *Node) Ledger() *ledger.Ledger { return n.ledgerP.Load() }
