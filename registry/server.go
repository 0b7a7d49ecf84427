// Package registry is the central server of one sild ecosystem: a server of a
// hashicorp/raft cluster (log and stable store on Badger, file snapshots,
// mTLS transport between registry servers) that holds the replicated state of
// package registry/fsm, serves the operators' AdminService and the nodes'
// NodeService, acts as the ecosystem's CA, publishes the signed global
// configuration to watching nodes and runs the RFC 3161 time-stamping
// authority.
//
// Lifetime: New validates the Config; Run starts the listeners and raft and
// blocks until its context ends, then shuts everything down. The first server
// of an ecosystem starts with Config.Bootstrap and creates the CA, the
// configuration-signing key, the time-stamping key and an admin API key
// (written to <data>/admin.key); the others start with Config.Join and a
// server token.
package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/raftstore"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry/fsm"
	"github.com/sildmesh/sild/tsa"
)

// Config configures one registry server.
type Config struct {
	// ServerID names this server in the cluster and in its SPIFFE ID
	// (spiffe://<td>/registry/<id>); identifier code characters.
	ServerID string
	// Instance and TrustDomain name the ecosystem; needed with Bootstrap.
	Instance    string
	TrustDomain string
	// DataDir holds the Raft log, snapshots and this server's keys.
	DataDir string
	// APIAddr is where the gRPC API (admin, nodes, cluster) listens (TLS).
	APIAddr string
	// RaftAddr is where the Raft transport listens (mTLS).
	RaftAddr string
	// HTTPAddr serves the time-stamping authority and health checks; empty
	// disables it.
	HTTPAddr string
	// Advertise* are the addresses other servers and nodes use; default the
	// listen addresses (which must then not be wildcard addresses).
	AdvertiseAPI  string
	AdvertiseRaft string
	AdvertiseHTTP string

	// FederationAddr serves the SPIFFE bundle endpoint and the
	// FederationService to federated ecosystems (TLS); empty disables
	// federation. AdvertiseFederation is the host:port peers use.
	FederationAddr      string
	AdvertiseFederation string
	// FederationRefresh is how often the leader re-checks every link
	// (peer bundle and export directory); also the bundle's refresh hint.
	FederationRefresh time.Duration

	// Bootstrap creates a new ecosystem with this server as its first voter.
	Bootstrap bool
	// Restore, with Bootstrap, starts the ecosystem from a backup
	// (AdminService.Backup) instead of creating new keys.
	Restore *registryv1.State

	// Join is the API address of a running server; Token a server token
	// from `sild ctl server token`, TrustBundle the ecosystem's root
	// certificates (PEM) to verify it by.
	Join        string
	Token       string
	TrustBundle []*x509.Certificate

	// NodeSVIDTTL is the lifetime of node SVIDs and signing certificates.
	NodeSVIDTTL time.Duration
	// ConfigTTL is how long a published configuration stays valid;
	// ConfigRefresh how often it is re-signed when nothing changed.
	ConfigTTL     time.Duration
	ConfigRefresh time.Duration
	// CAValidity is the lifetime of the root created at bootstrap.
	CAValidity time.Duration

	// Raft timing; zero values take hashicorp/raft's defaults scaled for
	// a LAN (see DefaultConfig).
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
	// SnapshotThreshold is the number of log entries between snapshots.
	SnapshotThreshold uint64

	Logger *slog.Logger
}

// DefaultConfig returns the defaults: node SVIDs for 24 h, configuration
// valid for 1 h and re-signed every 10 min, a 10-year root, and Raft
// timeouts of 500 ms (heartbeat) and 1 s (election).
func DefaultConfig() Config {
	return Config{
		NodeSVIDTTL:       24 * time.Hour,
		ConfigTTL:         time.Hour,
		ConfigRefresh:     10 * time.Minute,
		CAValidity:        10 * 365 * 24 * time.Hour,
		HeartbeatTimeout:  500 * time.Millisecond,
		ElectionTimeout:   1000 * time.Millisecond,
		SnapshotThreshold: 8192,
		FederationRefresh: 30 * time.Second,
	}
}

// Validate checks the configuration; errors name the field.
func (c *Config) Validate() error {
	if err := ident.CheckCode("server id", c.ServerID); err != nil {
		return fmt.Errorf("ServerID: %w", err)
	}
	if c.DataDir == "" {
		return errors.New("DataDir: required")
	}
	if c.APIAddr == "" {
		return errors.New("APIAddr: required")
	}
	if c.RaftAddr == "" {
		return errors.New("RaftAddr: required")
	}
	if c.Bootstrap && c.Join != "" {
		return errors.New("config: set Bootstrap or Join, not both")
	}
	if c.Restore != nil && !c.Bootstrap {
		return errors.New("config: Restore needs Bootstrap")
	}
	if c.Restore != nil {
		c.Instance, c.TrustDomain = c.Restore.GetInstance(), c.Restore.GetTrustDomain()
	}
	if c.Bootstrap {
		if err := ident.CheckCode("instance", c.Instance); err != nil {
			return fmt.Errorf("config: Instance: %w", err)
		}
		if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
			return fmt.Errorf("TrustDomain: %w", err)
		}
	}
	if c.Join != "" && (c.Token == "" || len(c.TrustBundle) == 0) {
		return errors.New("config: Join needs Token and TrustBundle")
	}
	if c.NodeSVIDTTL < time.Minute {
		return errors.New("NodeSVIDTTL: at least 1m")
	}
	if c.ConfigTTL < time.Second || c.ConfigRefresh <= 0 || c.ConfigRefresh >= c.ConfigTTL {
		return errors.New("ConfigTTL/ConfigRefresh: need ConfigTTL >= 1s and 0 < ConfigRefresh < ConfigTTL")
	}
	if c.FederationAddr != "" && c.FederationRefresh <= 0 {
		return errors.New("FederationRefresh: must be positive")
	}
	if c.HeartbeatTimeout <= 0 || c.ElectionTimeout < c.HeartbeatTimeout {
		return errors.New("ElectionTimeout: must be at least HeartbeatTimeout (> 0)")
	}
	return nil
}

// Server is one registry server.
type Server struct {
	cfg    Config
	log    *slog.Logger
	fsm    *fsm.FSM
	svids  *pki.SVIDSource
	bundle *pki.BundleSource

	raft   *raft.Raft
	raftP  atomic.Pointer[raft.Raft] // raft, for readers outside Run
	store  *raftstore.Store
	trans  *raft.NetworkTransport
	stream *tlsStream

	apiLn, raftLn, httpLn, fedLn net.Listener
	grpc                         *grpc.Server
	http                         *http.Server

	peersMu sync.Mutex
	peers   map[string]*grpc.ClientConn // API address -> conn (mTLS)

	published atomic.Pointer[published]
	pubCh     chan struct{} // closed when published changes
	pubMu     sync.Mutex

	ready    atomic.Bool
	stopping chan struct{} // closed when Run is shutting down

	tsaMu   sync.Mutex
	tsa     *tsa.Authority
	tsaCert []byte
}

// New checks cfg and prepares a server; Run starts it. Listeners are opened
// here so that Addr methods work before Run (and tests may pass ":0").
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("registry config: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	s := &Server{
		cfg:    cfg,
		log:    cfg.Logger.With("server", cfg.ServerID),
		fsm:    fsm.New(),
		svids:  pki.NewSVIDSource(nil),
		bundle: pki.NewBundleSource(),
		peers:  map[string]*grpc.ClientConn{},
		pubCh:  make(chan struct{}),

		stopping: make(chan struct{}),
	}
	var err error
	if s.apiLn, err = net.Listen("tcp", cfg.APIAddr); err != nil {
		return nil, fmt.Errorf("api listener: %w", err)
	}
	if s.raftLn, err = net.Listen("tcp", cfg.RaftAddr); err != nil {
		s.apiLn.Close()
		return nil, fmt.Errorf("raft listener: %w", err)
	}
	if cfg.HTTPAddr != "" {
		if s.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			s.apiLn.Close()
			s.raftLn.Close()
			return nil, fmt.Errorf("http listener: %w", err)
		}
	}
	// Raft peers must be registry servers of the trust domain of our own
	// SVID (known only once prepareIdentity ran, hence checked per handshake).
	authorize := func(id spiffeid.ID, chains [][]*x509.Certificate) error {
		svid, err := s.svids.GetX509SVID()
		if err != nil {
			return err
		}
		return pki.AuthorizeRegistry(svid.ID.TrustDomain())(id, chains)
	}
	s.stream = &tlsStream{
		Listener: tls.NewListener(s.raftLn, tlsconfig.MTLSServerConfig(s.svids, s.bundle, authorize)),
		client:   tlsconfig.MTLSClientConfig(s.svids, s.bundle, authorize),
	}
	if cfg.FederationAddr != "" {
		if s.fedLn, err = net.Listen("tcp", cfg.FederationAddr); err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("federation listener: %w", err)
		}
		if s.cfg.AdvertiseFederation == "" {
			s.cfg.AdvertiseFederation = s.fedLn.Addr().String()
		}
	}
	if s.cfg.AdvertiseAPI == "" {
		s.cfg.AdvertiseAPI = s.apiLn.Addr().String()
	}
	if s.cfg.AdvertiseRaft == "" {
		s.cfg.AdvertiseRaft = s.raftLn.Addr().String()
	}
	if s.cfg.AdvertiseHTTP == "" && s.httpLn != nil {
		s.cfg.AdvertiseHTTP = s.httpLn.Addr().String()
	}
	return s, nil
}

// APIAddr returns the address the API is reachable at.
func (s *Server) APIAddr() string { return s.cfg.AdvertiseAPI }

// RaftAddr returns the Raft transport's address.
func (s *Server) RaftAddr() string { return s.cfg.AdvertiseRaft }

// HTTPAddr returns the HTTP address ("" if disabled).
func (s *Server) HTTPAddr() string { return s.cfg.AdvertiseHTTP }

// BundleEndpointURL returns the SPIFFE bundle endpoint of this server
// ("" without federation).
func (s *Server) BundleEndpointURL() string {
	if s.cfg.AdvertiseFederation == "" {
		return ""
	}
	return "https://" + s.cfg.AdvertiseFederation + "/"
}

// ID returns the server id.
func (s *Server) ID() string { return s.cfg.ServerID }

// FSM exposes the replicated state for reading (tests, demo).
func (s *Server) FSM() *fsm.FSM { return s.fsm }

// Raft exposes the raft instance (tests: leadership, stats). Nil before Run
// has started it.
func (s *Server) Raft() *raft.Raft { return s.raftP.Load() }

// Ready reports whether the server is running, knows a leader, the
// ecosystem is initialized, the server's addresses are announced and its
// published configuration is as new as its state.
func (s *Server) Ready() bool {
	r := s.Raft()
	if !s.ready.Load() || r == nil || r.Leader() == "" {
		return false
	}
	p, _ := s.current()
	var version uint64
	s.fsm.Read(func(st *fsm.State, _ uint64) { version = st.ConfigVersion })
	return p != nil && p.config.GetVersion() >= version
}

// SetPartitioned cuts this server's Raft transport off from the others
// (closing open connections, refusing new ones) or heals it. It is meant for
// fault-injection tests and drills; the API stays reachable.
func (s *Server) SetPartitioned(cut bool) {
	if s.stream != nil {
		s.stream.setCut(cut)
	}
}

// maxRequest bounds a request to the API: above a publication's limit
// (fsm.DefaultMaxCatalogueBytes).
const maxRequest = fsm.DefaultMaxCatalogueBytes + 1<<20

// Run starts the server and blocks until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	defer s.closeListeners()
	boot, err := s.prepareIdentity(ctx)
	if err != nil {
		return err
	}
	if err := s.startRaft(boot); err != nil {
		return err
	}
	defer s.stopRaft()

	s.grpc = grpc.NewServer(grpc.Creds(credentials.NewTLS(s.apiTLS())),
		// Above a publication's limit (fsm.MaxCatalogueBytes), so that one a
		// little too large is refused with its reason, not by gRPC.
		grpc.MaxRecvMsgSize(maxRequest),
		grpc.ChainUnaryInterceptor(s.authUnary), grpc.ChainStreamInterceptor(s.authStream))
	registryv1.RegisterAdminServiceServer(s.grpc, &adminAPI{s: s})
	registryv1.RegisterNodeServiceServer(s.grpc, &nodeAPI{s: s})
	registryv1.RegisterClusterServiceServer(s.grpc, &clusterAPI{s: s})

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	run := func(name string, fn func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		}()
	}
	run("api", func() error { return s.grpc.Serve(s.apiLn) })
	if s.httpLn != nil {
		s.http = &http.Server{Handler: s.httpHandler(ctx), ReadHeaderTimeout: 10 * time.Second}
		run("http", func() error {
			if err := s.http.Serve(s.httpLn); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	var fedHTTP *http.Server
	if s.fedLn != nil {
		h, fedGRPC, err := s.federationHandler()
		if err != nil {
			return err
		}
		defer fedGRPC.Stop()
		fedHTTP = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, TLSConfig: s.federationTLS()}
		run("federation", func() error {
			if err := fedHTTP.ServeTLS(s.fedLn, "", ""); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		run("federation links", func() error { return s.federationLoop(ctx) })
	}
	run("publish", func() error { return s.publishLoop(ctx) })
	run("maintain", func() error { return s.maintainLoop(ctx, boot) })

	s.log.Info("registry server running", "api", s.APIAddr(), "raft", s.RaftAddr(), "http", s.HTTPAddr())
	<-ctx.Done()
	close(s.stopping) // ends the WatchConfig streams, which never end by themselves
	s.grpc.GracefulStop()
	for _, hs := range []*http.Server{s.http, fedHTTP} {
		if hs != nil {
			shutdownCtx, c := context.WithTimeout(context.Background(), 5*time.Second)
			_ = hs.Shutdown(shutdownCtx)
			c()
		}
	}
	s.grpc.Stop()
	wg.Wait()
	s.peersMu.Lock()
	for _, c := range s.peers {
		c.Close()
	}
	s.peersMu.Unlock()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

func (s *Server) closeListeners() {
	for _, ln := range []net.Listener{s.apiLn, s.raftLn, s.httpLn, s.fedLn} {
		if ln != nil {
			ln.Close()
		}
	}
}

// startRaft opens the store and starts raft; boot != nil bootstraps a new
// cluster with this server alone.
func (s *Server) startRaft(boot *registryv1.Init) error {
	st, err := raftstore.Open(filepath.Join(s.cfg.DataDir, "raft"), s.log)
	if err != nil {
		return err
	}
	s.store = st
	hl := hclogger(s.log, "raft")
	snaps, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(s.cfg.DataDir, "snapshots"), 3, hl)
	if err != nil {
		st.Close()
		return fmt.Errorf("snapshot store: %w", err)
	}
	s.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: s.stream, MaxPool: 3, Timeout: 10 * time.Second, Logger: hl,
	})
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(s.cfg.ServerID)
	rc.Logger = hl
	rc.HeartbeatTimeout = s.cfg.HeartbeatTimeout
	rc.ElectionTimeout = s.cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = s.cfg.HeartbeatTimeout
	rc.SnapshotThreshold = s.cfg.SnapshotThreshold
	r, err := raft.NewRaft(rc, s.fsm, st, st, snaps, s.trans)
	if err != nil {
		s.trans.Close()
		st.Close()
		return fmt.Errorf("start raft: %w", err)
	}
	s.raft = r
	s.raftP.Store(r)
	if boot != nil {
		f := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
			ID: rc.LocalID, Address: raft.ServerAddress(s.cfg.AdvertiseRaft), Suffrage: raft.Voter,
		}}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("bootstrap raft: %w", err)
		}
	}
	return nil
}

func (s *Server) stopRaft() {
	if s.raft != nil {
		if err := s.raft.Shutdown().Error(); err != nil {
			s.log.Warn("raft shutdown", "err", err)
		}
	}
	if s.trans != nil {
		s.trans.Close()
	}
	if s.store != nil {
		s.store.Close()
	}
}

// trustDomain is the configured or learned trust domain of the ecosystem.
func (s *Server) trustDomain() string {
	if s.cfg.TrustDomain != "" {
		return s.cfg.TrustDomain
	}
	if svid, err := s.svids.GetX509SVID(); err == nil {
		return svid.ID.TrustDomain().Name()
	}
	return ""
}

// apiTLS is the API listener's TLS: the server presents its SVID; a client
// certificate is requested but optional (operators and joining nodes have
// none) and verified by the handlers that need one.
func (s *Server) apiTLS() *tls.Config {
	c := tlsconfig.TLSServerConfig(s.svids)
	c.ClientAuth = tls.RequestClientCert
	return c
}
