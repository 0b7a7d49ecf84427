package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry"
)

// registryFlags maps registry.Config field names (as Validate names them)
// to the flags that set them, so that a configuration error names the flag.
var registryFlags = []struct{ field, flag string }{
	{"ServerID", "--id"},
	{"Instance", "--instance"},
	{"TrustDomain", "--trust-domain"},
	{"DataDir", "--data"},
	{"APIAddr", "--api-listen"},
	{"RaftAddr", "--raft-listen"},
	{"Bootstrap", "--bootstrap"},
	{"Join", "--join"},
	{"Restore", "--restore"},
	{"Token", "--token"},
	{"TrustBundle", "--trust"},
	{"NodeSVIDTTL", "--node-svid-ttl"},
	{"ConfigTTL", "--config-ttl"},
	{"ConfigRefresh", "--config-refresh"},
	{"HeartbeatTimeout", "--heartbeat-timeout"},
	{"ElectionTimeout", "--election-timeout"},
	{"FederationRefresh", "--federation-refresh"},
}

// flagHint appends the flags named by a registry.Config error.
func flagHint(err error) error {
	var flags []string
	msg := err.Error()
	for _, f := range registryFlags {
		if strings.Contains(msg, f.field) {
			flags = append(flags, f.flag)
		}
	}
	if len(flags) == 0 {
		return err
	}
	return fmt.Errorf("%w (see %s)", err, strings.Join(flags, ", "))
}

type registryOptions struct {
	cfg       registry.Config
	trust     string
	restore   string
	logLevel  string
	logFormat string
}

func newRegistryCmd() *cobra.Command {
	o := &registryOptions{cfg: registry.DefaultConfig()}
	cmd := &cobra.Command{
		Use:   "registry",
		Short: "Run a server of an ecosystem's registry (Raft cluster, CA, global configuration, TSA)",
		Long: `sild registry runs one server of the Raft-replicated registry of an ecosystem
(one instance, e.g. EE): it holds members, subsystems, nodes, groups and the
service catalogue, is the ecosystem's CA, publishes the signed global
configuration to nodes and runs the RFC 3161 time-stamping authority.

The first server creates the ecosystem with --bootstrap: it makes the root
CA, the configuration-signing key and an admin API key, and writes
<data>/admin.key and the trust bundle <data>/bundle.pem. Each further server
joins with --join (the API address of a running server), a one-time token from
'sild ctl server token ID --voter' and --trust (that bundle.pem). A restarted
server needs only --id, --data and its listen addresses.

Every flag can also be set in the environment as SILD_<FLAG>, e.g.
SILD_DATA=/var/lib/sild or SILD_TOKEN=... (keeps the token out of ps).
The server runs until SIGINT or SIGTERM.`,
		Example: `  # Three servers on one machine (one machine per server in production):
  sild registry --bootstrap --id r1 --instance EE --trust-domain ee.sild.test --data /tmp/sild/r1 \
    --api-listen 127.0.0.1:7400 --raft-listen 127.0.0.1:7401 --http-listen 127.0.0.1:7402 &
  until curl -sf 127.0.0.1:7402/readyz; do sleep 0.2; done

  export SILD_REGISTRY=127.0.0.1:7400 SILD_TRUST=/tmp/sild/r1/bundle.pem
  export SILD_API_KEY=$(cat /tmp/sild/r1/admin.key)

  for i in 2 3; do
    SILD_TOKEN=$(sild ctl server token r$i --voter) sild registry --id r$i --data /tmp/sild/r$i \
      --join 127.0.0.1:7400 --trust /tmp/sild/r1/bundle.pem \
      --api-listen 127.0.0.1:74${i}0 --raft-listen 127.0.0.1:74${i}1 --http-listen 127.0.0.1:74${i}2 &
    until curl -sf 127.0.0.1:74${i}2/readyz; do sleep 0.2; done
  done
  sild ctl raft status`,
		Args: cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			var names []string
			cmd.Flags().VisitAll(func(f *pflag.Flag) {
				if f.Name != "help" {
					names = append(names, f.Name)
				}
			})
			return bindEnv(cmd.Flags(), nil, names...)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := o.config(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return runRegistry(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	c := &o.cfg
	f.StringVar(&c.ServerID, "id", "", "this server's id in the cluster and its SPIFFE ID, e.g. r1 (required)")
	f.StringVar(&c.Instance, "instance", "", "instance code of the ecosystem, e.g. EE (with --bootstrap)")
	f.StringVar(&c.TrustDomain, "trust-domain", "", "SPIFFE trust domain of the ecosystem, e.g. ee.sild.test (with --bootstrap)")
	f.StringVar(&c.DataDir, "data", "", "data directory: Raft log, snapshots, keys (required)")
	f.StringVar(&c.APIAddr, "api-listen", "127.0.0.1:7400", "gRPC API listen address (TLS): admin, nodes, cluster")
	f.StringVar(&c.RaftAddr, "raft-listen", "127.0.0.1:7401", "Raft transport listen address (mTLS between registry servers)")
	f.StringVar(&c.HTTPAddr, "http-listen", "127.0.0.1:7402", "HTTP listen address: time-stamping authority, admin REST API with /openapi.json, /healthz, /readyz (empty disables)")
	f.StringVar(&c.AdvertiseAPI, "advertise-api", "", "API address others use (default: --api-listen, which must then not be a wildcard)")
	f.StringVar(&c.AdvertiseRaft, "advertise-raft", "", "Raft address others use (default: --raft-listen)")
	f.StringVar(&c.AdvertiseHTTP, "advertise-http", "", "HTTP address others use (default: --http-listen)")
	f.StringVar(&c.FederationAddr, "federation-listen", "", "listen address of the SPIFFE bundle endpoint and the federation API for linked ecosystems (TLS; empty disables federation)")
	f.StringVar(&c.AdvertiseFederation, "advertise-federation", "", "federation address peers use (default: --federation-listen)")
	f.DurationVar(&c.FederationRefresh, "federation-refresh", c.FederationRefresh, "how often the leader re-checks every federation link")
	f.BoolVar(&c.Bootstrap, "bootstrap", false, "create a new ecosystem with this server as its first voter")
	f.StringVar(&o.restore, "restore", "", "with --bootstrap: start the ecosystem from a backup file (sild ctl backup) instead of new keys")
	f.StringVar(&c.Join, "join", "", "API address of a running server to join through")
	f.StringVar(&c.Token, "token", "", "one-time server token for --join (sild ctl server token)")
	f.StringVar(&o.trust, "trust", "", "PEM file with the ecosystem's root certificates, for --join (bundle.pem of a running server)")
	f.DurationVar(&c.NodeSVIDTTL, "node-svid-ttl", c.NodeSVIDTTL, "lifetime of node SVIDs and signing certificates")
	f.DurationVar(&c.ConfigTTL, "config-ttl", c.ConfigTTL, "how long a published global configuration stays valid")
	f.DurationVar(&c.ConfigRefresh, "config-refresh", c.ConfigRefresh, "how often the configuration is re-signed when nothing changed")
	f.DurationVar(&c.CAValidity, "ca-validity", c.CAValidity, "lifetime of the root certificate created at bootstrap")
	f.DurationVar(&c.HeartbeatTimeout, "heartbeat-timeout", c.HeartbeatTimeout, "Raft heartbeat timeout")
	f.DurationVar(&c.ElectionTimeout, "election-timeout", c.ElectionTimeout, "Raft election timeout")
	f.Uint64Var(&c.SnapshotThreshold, "snapshot-threshold", c.SnapshotThreshold, "Raft log entries between snapshots")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	return cmd
}

// newLogger makes the slog logger the flags ask for.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: must be debug, info, warn or error", level)
	}
	ho := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, ho)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, ho)), nil
	}
	return nil, fmt.Errorf("--log-format %q: must be text or json", format)
}

// config completes and checks the configuration; errors name the flag.
func (o *registryOptions) config(logOut io.Writer) (registry.Config, error) {
	cfg := o.cfg
	log, err := newLogger(logOut, o.logLevel, o.logFormat)
	if err != nil {
		return cfg, err
	}
	cfg.Logger = log
	if o.trust != "" {
		roots, err := pki.ReadCerts(o.trust)
		if err != nil {
			return cfg, fmt.Errorf("--trust: %w", err)
		}
		cfg.TrustBundle = roots
	}
	if o.restore != "" {
		data, err := os.ReadFile(o.restore)
		if err != nil {
			return cfg, fmt.Errorf("--restore: %w", err)
		}
		st, err := decodeBackup(data)
		if err != nil {
			return cfg, fmt.Errorf("--restore %s: %w", o.restore, err)
		}
		cfg.Restore = st
	}
	if err := cfg.Validate(); err != nil {
		return cfg, flagHint(err)
	}
	for _, a := range []struct{ listen, advertise, listenFlag, advertiseFlag string }{
		{cfg.APIAddr, cfg.AdvertiseAPI, "--api-listen", "--advertise-api"},
		{cfg.RaftAddr, cfg.AdvertiseRaft, "--raft-listen", "--advertise-raft"},
		{cfg.HTTPAddr, cfg.AdvertiseHTTP, "--http-listen", "--advertise-http"},
		{cfg.FederationAddr, cfg.AdvertiseFederation, "--federation-listen", "--advertise-federation"},
	} {
		if a.listen == "" || a.advertise != "" {
			continue
		}
		host, _, err := net.SplitHostPort(a.listen)
		if err != nil {
			return cfg, fmt.Errorf("%s %q: %w", a.listenFlag, a.listen, err)
		}
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			return cfg, fmt.Errorf("%s %q is a wildcard address: set %s to the address other servers and nodes reach this one at", a.listenFlag, a.listen, a.advertiseFlag)
		}
	}
	return cfg, nil
}

// runRegistry runs a server until ctx ends, logging once it is ready (with
// where the operator finds the admin key and trust bundle).
func runRegistry(ctx context.Context, cfg registry.Config) error {
	srv, err := registry.New(cfg)
	if err != nil {
		return flagHint(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for !srv.Ready() {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
		attrs := []any{"id", srv.ID(), "api", srv.APIAddr(), "raft", srv.RaftAddr(), "http", srv.HTTPAddr(),
			"trust_bundle", filepath.Join(cfg.DataDir, registry.FileBundle)}
		if key := filepath.Join(cfg.DataDir, registry.FileAdminKey); fileExists(key) {
			attrs = append(attrs, "admin_key_file", key)
		}
		cfg.Logger.Info("registry ready", attrs...)
	}()
	err = srv.Run(ctx)
	cancel()
	<-watched
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("registry: %w", err)
	}
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
