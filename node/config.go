package node

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sildmesh/sild/gateway"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/apikey"
	"github.com/sildmesh/sild/node/exchange"
	"github.com/sildmesh/sild/pki"
)

// Config configures a node. It is read from YAML (LoadConfig) and flags.
type Config struct {
	// Node is this node's identifier, e.g. EE/GOV/70000310/ss1.
	Node string `yaml:"node"`
	// Registry is the API address of a registry server used to join and
	// as the first to watch; the configuration names the others.
	Registry string `yaml:"registry"`
	// TrustBundle is a PEM file with the ecosystem's root certificates,
	// pinned before the first join (the registry is verified against it);
	// later the roots stored in DataDir serve.
	TrustBundle string `yaml:"trust_bundle"`
	// JoinToken is the one-time token from `sild ctl node token`; needed
	// on the first start, and again to join anew once the stored SVID has
	// expired (a node stopped past its expiry); otherwise unused.
	JoinToken string `yaml:"join_token"`
	// DataDir holds keys, certificates, the cached configuration, access
	// rights and the ledger.
	DataDir string `yaml:"data_dir"`

	// ConsumerListen is where member systems call the node (gRPC, and
	// REST over HTTP/1.1): plaintext, meant for loopback or a private
	// network, unless ConsumerTLS is set.
	ConsumerListen string `yaml:"consumer_listen"`
	// ConsumerTLS, if set, serves the consumer listener over TLS, and with
	// RequireClientCert over mTLS.
	ConsumerTLS *ConsumerTLS `yaml:"consumer_tls"`
	// ExchangeListen is the mTLS listener for other nodes;
	// ExchangeAdvertise the address published in the configuration.
	ExchangeListen    string `yaml:"exchange_listen"`
	ExchangeAdvertise string `yaml:"exchange_advertise"`
	// AdminListen serves the admin gRPC API and /metrics, /healthz,
	// /readyz over HTTP (h2c) on one port.
	AdminListen string `yaml:"admin_listen"`
	// AdminKeys are API keys of the admin API: hash (from `sild node
	// admin-key`, "sha256:...") and role (admin or reader).
	AdminKeys []AdminKey `yaml:"admin_keys"`

	// Subsystems are the member subsystems on this node: as clients
	// (consumer side) and, with a backend, as providers.
	Subsystems []SubsystemConfig `yaml:"subsystems"`

	// RenewBefore is how long before expiry the SVID and signing
	// certificate are renewed (default: at half their lifetime).
	RenewBefore time.Duration `yaml:"renew_before"`
	// MaxMessageSize bounds one message in either direction (default 16 MiB).
	MaxMessageSize int `yaml:"max_message_size"`
	// BatchDelay is how long a ledger commit or a batch signature may wait
	// for company while the node's CPUs are busy and calls arrive fast
	// (default 1 ms; 0 never waits). See ledger.Config.CommitDelay.
	BatchDelay time.Duration `yaml:"batch_delay"`

	// CheckpointInterval is how often the ledger signs a checkpoint (default
	// 1 s); MaxUnstamped how long records may wait for a time-stamp before
	// exchanges are refused with LEDGER_UNAVAILABLE. The time-stamping
	// authority runs on the registry, so by default (zero) MaxUnstamped
	// follows the lifetime of the global configuration in use (plus a
	// checkpoint interval and a time-stamp request's 30 s): with the
	// registry unreachable, exchanges go on until the configuration
	// expires. A value shorter than that lifetime stops them sooner (the
	// node warns).
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`
	MaxUnstamped       time.Duration `yaml:"max_unstamped"`
	// LedgerKeyFile holds the AES-256 key (64 hex digits) that encrypts
	// message bodies kept in the ledger (subsystems with body: full).
	LedgerKeyFile string `yaml:"ledger_key_file"`
	// LedgerRetention moves records older than this out of the ledger
	// into hash-linked archive files in LedgerArchiveDir (default
	// <data_dir>/archive); zero keeps everything in the ledger.
	LedgerRetention  time.Duration `yaml:"ledger_retention"`
	LedgerArchiveDir string        `yaml:"ledger_archive_dir"`

	// ReplayWindow is how long this node, as provider, remembers each
	// client's message ids and refuses them again with MESSAGE_REPLAYED
	// (default 10m, at most 24h), and so how old a request may be
	// (STALE_REQUEST beyond); ReplayMaxPerClient how many ids of one
	// client it remembers within the window (default 1048576): a client
	// over it is refused with REPLAY_WINDOW_FULL, the others are not. At
	// start the node reads the window's ids back from its ledger, so a
	// restart forgets none (ledger_retention, if set, must not be shorter).
	ReplayWindow       time.Duration `yaml:"replay_window"`
	ReplayMaxPerClient int           `yaml:"replay_max_per_client"`

	Logger *slog.Logger `yaml:"-"`
}

// AdminKey is one API key of the node's admin API.
type AdminKey struct {
	Hash string `yaml:"hash"`
	Role string `yaml:"role"`
}

// ConsumerTLS is the TLS of the consumer listener.
type ConsumerTLS struct {
	// CertFile and KeyFile are the listener's certificate (PEM, with its
	// chain) and private key; member systems verify them as they would any
	// TLS server. Read at start and again within seconds of a change, as
	// are the subsystems' ClientCerts.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// RequireClientCert makes member systems present a client certificate
	// that a subsystem pins (SubsystemConfig.ClientCerts); a call may then
	// name as its client only a subsystem that pins the caller's
	// certificate.
	RequireClientCert bool `yaml:"require_client_cert"`
}

// SubsystemConfig is one subsystem the node serves.
type SubsystemConfig struct {
	ID string `yaml:"id"`
	// Backend is the provider backend's gRPC address (host:port), or the
	// base URL of a JSON/HTTP backend (http:// or https://: each call of
	// method M becomes POST {url}/M with JSON, see gateway.Provider); empty
	// for a subsystem that only consumes.
	Backend string `yaml:"backend"`
	// Body is what the ledger keeps of its exchanges' content: off
	// (default), metadata or full (both encrypted with ledger_key_file).
	Body string `yaml:"body"`
	// ClientCerts are PEM files of the member systems' certificates that
	// may call as this subsystem over the consumer listener (with
	// consumer_tls.require_client_cert): pinned, whoever issued them.
	ClientCerts []string `yaml:"client_certs"`
}

// DefaultConfig returns the defaults: consumer on 127.0.0.1:8443, exchange
// on :7443, admin on 127.0.0.1:9443, 16 MiB messages, 1 ms batch delay.
func DefaultConfig() Config {
	return Config{
		ConsumerListen: "127.0.0.1:8443",
		ExchangeListen: ":7443",
		AdminListen:    "127.0.0.1:9443",
		MaxMessageSize: 16 << 20,
		BatchDelay:     time.Millisecond,
	}
}

// LoadConfig reads a YAML file over the defaults. Unknown keys are errors.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	f, err := os.Open(path)
	if err != nil {
		return cfg, fmt.Errorf("node config: %w", err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); errors.Is(err, io.EOF) {
		return cfg, fmt.Errorf("node config %s: the file is empty (no YAML settings; see deploy/node.example.yaml)", path)
	} else if err != nil {
		return cfg, fmt.Errorf("node config %s: %w", path, err)
	}
	return cfg, nil
}

// FieldError is an error of Validate about one setting, named by its YAML
// key (e.g. data_dir, subsystems[0].backend).
type FieldError struct {
	Key string
	Err error
}

func (e *FieldError) Error() string { return e.Key + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(key, format string, a ...any) error {
	return &FieldError{Key: key, Err: fmt.Errorf(format, a...)}
}

// Validate checks the configuration; its errors are *FieldError, which
// name the YAML key.
func (c *Config) Validate() error {
	if _, err := ident.ParseNode(c.Node); err != nil {
		return &FieldError{Key: "node", Err: err}
	}
	if c.DataDir == "" {
		return fieldErr("data_dir", "required")
	}
	if c.Registry == "" {
		return fieldErr("registry", "required (host:port of a registry server)")
	}
	for _, l := range []struct{ key, addr string }{{"consumer_listen", c.ConsumerListen}, {"exchange_listen", c.ExchangeListen}, {"admin_listen", c.AdminListen}} {
		if _, _, err := net.SplitHostPort(l.addr); err != nil {
			return &FieldError{Key: l.key, Err: err}
		}
	}
	seen := map[string]bool{}
	for i, s := range c.Subsystems {
		key := func(field string) string { return fmt.Sprintf("subsystems[%d].%s", i, field) }
		sub, err := ident.ParseSubsystem(s.ID)
		if err != nil {
			return &FieldError{Key: key("id"), Err: err}
		}
		if seen[sub.String()] {
			return fieldErr(key("id"), "%s listed twice", sub)
		}
		seen[sub.String()] = true
		if gateway.IsJSONBackend(s.Backend) { // gateway: a JSON/HTTP backend
			if err := gateway.CheckBaseURL(s.Backend); err != nil {
				return &FieldError{Key: key("backend"), Err: err}
			}
		} else if s.Backend != "" {
			if _, _, err := net.SplitHostPort(s.Backend); err != nil {
				return &FieldError{Key: key("backend"), Err: err}
			}
		}
		if len(s.ClientCerts) > 0 && (c.ConsumerTLS == nil || !c.ConsumerTLS.RequireClientCert) {
			return fieldErr(key("client_certs"), "need consumer_tls.require_client_cert")
		}
		switch s.Body {
		case "", "off":
		case "metadata", "full":
			if c.LedgerKeyFile == "" {
				return fieldErr(key("body"), "%s needs ledger_key_file (bodies are encrypted at rest)", s.Body)
			}
		default:
			return fieldErr(key("body"), "want off, metadata or full")
		}
	}
	if t := c.ConsumerTLS; t != nil && (t.CertFile == "" || t.KeyFile == "") {
		return fieldErr("consumer_tls", "cert_file and key_file are required")
	}
	for i, k := range c.AdminKeys {
		if !apikey.ValidHash(k.Hash) {
			return fieldErr(fmt.Sprintf("admin_keys[%d].hash", i), "want sha256:<64 hex digits>")
		}
		if k.Role != "admin" && k.Role != "reader" {
			return fieldErr(fmt.Sprintf("admin_keys[%d].role", i), "want admin or reader")
		}
	}
	if c.MaxMessageSize < 4<<20 {
		return fieldErr("max_message_size", "at least 4 MiB")
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"checkpoint_interval", c.CheckpointInterval}, {"max_unstamped", c.MaxUnstamped}, {"ledger_retention", c.LedgerRetention}, {"renew_before", c.RenewBefore}} {
		if d.v < 0 {
			return fieldErr(d.key, "must not be negative")
		}
	}
	if c.ReplayWindow < 0 || c.ReplayWindow > MaxReplayWindow {
		return fieldErr("replay_window", "between 0s (default, %v) and %v", exchange.DefaultReplayWindow, MaxReplayWindow)
	}
	if c.ReplayMaxPerClient < 0 {
		return fieldErr("replay_max_per_client", "must not be negative (0: default, %d)", exchange.DefaultReplayMax)
	}
	if w := c.replayWindow(); c.LedgerRetention > 0 && c.LedgerRetention < w {
		return fieldErr("ledger_retention", "shorter than replay_window %v: a restarted node reads the window's message ids from the ledger", w)
	}
	if c.BatchDelay < 0 || c.BatchDelay > time.Second {
		return fieldErr("batch_delay", "between 0s (never wait) and 1s")
	}
	return nil
}

// MaxReplayWindow bounds replay_window: the node reads the window's
// exchanges back from its ledger at start.
const MaxReplayWindow = 24 * time.Hour

// replayWindow is replay_window or its default.
func (c *Config) replayWindow() time.Duration {
	if c.ReplayWindow > 0 {
		return c.ReplayWindow
	}
	return exchange.DefaultReplayWindow
}

// roots reads the pinned trust bundle.
func (c *Config) roots() ([]*x509.Certificate, error) {
	certs, err := pki.ReadCerts(c.TrustBundle)
	if err != nil {
		return nil, fmt.Errorf("trust_bundle: %w", err)
	}
	return certs, nil
}
