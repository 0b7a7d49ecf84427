package node

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/sildmesh/sild/gateway"
	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/ledger"
	"github.com/sildmesh/sild/node/envelope"
	"github.com/sildmesh/sild/node/exchange"
	"github.com/sildmesh/sild/node/meta"
	"github.com/sildmesh/sild/tsa"
)

// openLedger opens the node's evidence log. Checkpoints are signed with the
// node's signing key and time-stamped by the ecosystem's TSA (the URLs of
// the configuration in use).
func (n *Node) openLedger(id *identity) (*ledger.Ledger, error) {
	cfg := ledger.DefaultConfig()
	cfg.Dir = filepath.Join(n.cfg.DataDir, dirLedger)
	cfg.Origin = n.self.String()
	cfg.Signer, cfg.SignerChain = id.signKey, id.signChain
	cfg.Stamp = n.stamp
	cfg.Logger = n.log.With("component", "ledger")
	cfg.CommitDelay = n.cfg.BatchDelay
	if n.cfg.CheckpointInterval > 0 {
		cfg.CheckpointInterval = n.cfg.CheckpointInterval
	}
	if n.cfg.MaxUnstamped > 0 {
		cfg.MaxUnstamped = n.cfg.MaxUnstamped
	}
	if n.cfg.LedgerRetention > 0 {
		cfg.Retention = n.cfg.LedgerRetention
		cfg.ArchiveDir = n.cfg.LedgerArchiveDir
		if cfg.ArchiveDir == "" {
			cfg.ArchiveDir = filepath.Join(n.cfg.DataDir, "archive")
		}
	}
	cfg.BodyModes = map[string]ledger.BodyMode{}
	for _, s := range n.cfg.Subsystems {
		if s.Body == "" {
			continue
		}
		m, err := ledger.ParseBodyMode(s.Body)
		if err != nil {
			return nil, fmt.Errorf("subsystems %s: body: %w", s.ID, err)
		}
		cfg.BodyModes[s.ID] = m
	}
	if n.cfg.LedgerKeyFile != "" {
		raw, err := os.ReadFile(n.cfg.LedgerKeyFile)
		if err != nil {
			return nil, fmt.Errorf("ledger_key_file: %w", err)
		}
		key, err := hex.DecodeString(strings.TrimSpace(string(raw)))
		if err != nil || len(key) != 32 {
			return nil, errors.New("ledger_key_file: want 64 hex digits (an AES-256 key)")
		}
		cfg.BodyKey = key
	}
	return ledger.New(cfg)
}

// stamp asks the time-stamping authorities of the configuration in turn.
func (n *Node) stamp(ctx context.Context, digest []byte) ([]byte, error) {
	top := n.Topology()
	if top == nil || len(top.Config.GetTsaUrls()) == 0 {
		return nil, errors.New("no time-stamping authority in the configuration")
	}
	client := &http.Client{Timeout: 10 * time.Second}
	var errs []error
	for _, url := range top.Config.GetTsaUrls() {
		token, err := tsa.Request(ctx, client, url, digest)
		if err == nil {
			return token, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", url, err))
	}
	return nil, errors.Join(errs...)
}

// exchangeConfig is what the consumer and provider sides share.
func (n *Node) exchangeConfig(led *ledger.Ledger) exchange.Config {
	cfg := exchange.DefaultConfig()
	cfg.Node = n.self
	cfg.Topology = n.Topology
	cfg.Changed = n.TopologyChanged
	cfg.SVID, cfg.Bundles = n.svids, n.bundles
	cfg.Signer, cfg.Verifier = n.signer, n.verifier
	cfg.Access = n.access
	cfg.Logger = n.log
	cfg.MaxMessageSize = n.cfg.MaxMessageSize
	if n.cfg.ReplayWindow > 0 {
		cfg.ReplayWindow = n.cfg.ReplayWindow
	}
	if n.cfg.ReplayMaxPerClient > 0 {
		cfg.ReplayMax = n.cfg.ReplayMaxPerClient
	}
	cfg.Observe = n.exchanges.observe
	cfg.Recorder = exchange.RecorderFunc(func(ctx context.Context, r *ledgerv1.Record, body *ledgerv1.Body) error {
		_, err := led.Append(ctx, r, body).Wait(ctx)
		return err
	})
	if led.KeepsBodies() { // else the exchange passes no body, at no cost
		cfg.Capture = func(sub ident.Subsystem) exchange.Capture {
			switch led.BodyMode(sub.String()) {
			case ledger.BodyMetadata:
				return exchange.CaptureHeaders
			case ledger.BodyFull:
				return exchange.CaptureMessages
			}
			return exchange.CaptureNone
		}
	}
	cfg.Backends = map[ident.Subsystem]string{}
	for _, s := range n.cfg.Subsystems {
		sub, _ := ident.ParseSubsystem(s.ID) // validated
		cfg.Clients = append(cfg.Clients, sub)
		if s.Backend != "" {
			cfg.Backends[sub] = s.Backend
		}
	}
	return cfg
}

// notAdmitted are the provider's refusals answered before or at its
// replay check: their message ids never entered the replay table (and with
// UNKNOWN_CLIENT the client is one the calling node does not serve), so a
// restart must not enter them either.
var notAdmitted = map[string]bool{
	rpcerr.ReasonUnknownClient:      true,
	rpcerr.ReasonUnknownTarget:      true,
	rpcerr.ReasonStaleRequest:       true,
	rpcerr.ReasonReplayed:           true,
	envelope.ReasonReplayWindowFull: true,
}

// seedReplay enters into r the message ids this node admitted as provider
// within r's window before now, read from the ledger: what a restart
// would otherwise forget. It reads every record appended within the window
// (both sides), logging its progress every few seconds.
func seedReplay(ctx context.Context, led *ledger.Ledger, r *envelope.Replay, now time.Time, log *slog.Logger) error {
	began := time.Now()
	since := now.Add(-r.Window())
	type seen struct {
		client, id string
		at         time.Time
	}
	var ids []seen
	read, next := 0, began.Add(5*time.Second)
	err := led.Recent(since, func(s *ledger.Stored) error {
		read++
		if read%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
			if t := time.Now(); t.After(next) {
				log.Info("replay window: reading recent exchanges from the ledger", "records", read, "ids", len(ids), "since", since)
				next = t.Add(5 * time.Second)
			}
		}
		rec := s.Record
		if rec.GetSide() != ledgerv1.Side_SIDE_PROVIDER || notAdmitted[rec.GetStatusReason()] {
			return nil
		}
		if at := rec.GetStartTime().AsTime(); !at.Before(since) {
			ids = append(ids, seen{rec.GetClient(), rec.GetMessageId(), at})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("replay window from the ledger: %w", err)
	}
	slices.SortFunc(ids, func(a, b seen) int { return a.at.Compare(b.at) })
	for _, s := range ids {
		r.Seed(s.client, s.id, s.at)
	}
	log.Info("replay window restored from the ledger", "ids", len(ids), "records", read, "since", since, "took", time.Since(began))
	return nil
}

// serveMesh serves the consumer listener (member systems) and the exchange
// listener (other nodes, mTLS) until ctx ends.
func (n *Node) serveMesh(ctx context.Context, led *ledger.Ledger) error {
	cfg := n.exchangeConfig(led)
	// gateway: JSON/HTTP backends are reached through REST providers on loopback.
	stopProviders, err := gateway.StartProviders(ctx, cfg.Backends, n.Topology, n.log)
	if err != nil {
		return err
	}
	defer stopProviders()
	consumerLn, copts := n.consumerLn, []grpc.ServerOption(nil)
	rest := gateway.ConsumerConfig{Topology: n.Topology, Logger: n.log}
	if ct := n.consumerTLS; ct != nil {
		go ct.watch(ctx, consumerTLSReload, n.log)
		consumerLn = tls.NewListener(consumerLn, ct.config)
		copts = append(copts, grpc.Creds(newHandshaken()))
		cfg.MayCallAs, rest.MayCallAs = ct.grpcMayCallAs, ct.restMayCallAs
	}
	consumer, err := exchange.NewConsumer(cfg)
	if err != nil {
		return err
	}
	defer consumer.Close()
	cfg.Replay = envelope.NewReplay(cfg.ReplayWindow, cfg.ReplayMax)
	if err := seedReplay(ctx, led, cfg.Replay, time.Now(), n.log); err != nil {
		return err
	}
	provider, err := exchange.NewProvider(cfg)
	if err != nil {
		return err
	}
	defer provider.Close()
	cs := grpc.NewServer(append(consumer.ServerOptions(), copts...)...)
	ps := grpc.NewServer(provider.ServerOptions()...)
	mcfg := meta.Config{
		Self: n.self, Topology: n.Topology, Clients: cfg.Clients,
		Dial: func(_ context.Context, peer ident.Node) (*grpc.ClientConn, func(), error) {
			top := n.Topology()
			if top == nil {
				return nil, nil, errors.New("no configuration")
			}
			return consumer.Conn(top, peer) // pooled with the exchange's connections
		},
		Access: n.access, Backends: cfg.Backends, CallerNode: exchange.CallerNode, MayCallAs: cfg.MayCallAs,
		Logger: n.log,
	}
	meta.NewConsumer(mcfg).Register(cs)
	meta.NewProvider(mcfg).Register(ps)
	// gateway: the legacy REST consumer shares the consumer port (HTTP/1.x;
	// gRPC is told apart by the HTTP/2 preface) and calls the consumer's
	// gRPC server in process.
	grpcLn, restLn := gateway.SplitListener(consumerLn)
	errc := make(chan error, 3)
	go func() { errc <- serveGRPC(ctx, cs, grpcLn) }()
	go func() { errc <- serveGRPC(ctx, ps, n.exchangeLn) }()
	go func() { errc <- gateway.ServeConsumer(ctx, restLn, cs, rest) }()
	return errors.Join(<-errc, <-errc, <-errc)
}
