package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sildmesh/sild/internal/apikey"
	"github.com/sildmesh/sild/node"
)

type nodeOptions struct {
	file       string
	cfg        node.Config
	subsystems []string
	logLevel   string
	logFormat  string
}

func newNodeCmd() *cobra.Command { return nodeCmd(&nodeOptions{cfg: node.DefaultConfig()}) }

// nodeCmd builds the command around o, which the flags fill.
func nodeCmd(o *nodeOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run a security server (node) of a member organisation",
		Long: `sild node runs a member organisation's security server. On its first start
it joins the ecosystem with a one-time token (sild ctl node token <node id>)
and the pinned trust bundle, receives its SVID and signing certificate and
keeps them renewed (a node stopped until its SVID expired needs a new token);
it watches the signed global configuration and caches it in the data
directory, so it keeps working while the registry is unreachable (until the
configuration expires).

Settings come from a YAML file (--config) and flags; flags win. Every flag can
also be set in the environment as SILD_NODE_<FLAG>, e.g. SILD_NODE_TOKEN (a
prefix of its own, so that the SILD_REGISTRY and SILD_TRUST of 'sild ctl'
do not steer a node).

Listeners: --consumer-listen for member systems (gRPC and REST; plaintext,
so keep it on loopback or a private network, unless the YAML's consumer_tls
serves it over TLS, or mTLS with the member systems' certificates each
subsystem pins in client_certs), --exchange-listen for other nodes (mTLS
with SPIFFE SVIDs), --admin-listen for the admin API over gRPC and REST
(access rights, evidence; see 'sild ctl access' and 'sild ledger query'),
/openapi.json, /metrics, /healthz and /readyz. docs/configuration.md lists
every setting.`,
		Example: `  # node.yaml
  node: EE/GOV/70000310/ss1
  registry: 127.0.0.1:7400
  trust_bundle: /etc/sild/ee-bundle.pem
  data_dir: /var/lib/sild/ss1
  exchange_advertise: ss1.rik.ee:7443
  subsystems:
    - id: EE/GOV/70000310/business-registry
      backend: 127.0.0.1:9000
  admin_keys:
    - hash: sha256:...        # from: sild node admin-key
      role: admin

  SILD_NODE_TOKEN=... sild node --config node.yaml`,
		Args: cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			var names []string
			cmd.Flags().VisitAll(func(f *pflag.Flag) { names = append(names, f.Name) })
			return bindEnvPrefix(cmd.Flags(), "SILD_NODE_", names...)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := o.config(cmd)
			if err != nil {
				return err
			}
			n, err := node.New(cfg)
			if err != nil {
				return err
			}
			return n.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	c := &o.cfg
	f.StringVar(&o.file, "config", "", "YAML configuration file (keys as in the example)")
	f.StringVar(&c.Node, "node", "", "this node's identifier, e.g. EE/GOV/70000310/ss1")
	f.StringVar(&c.Registry, "registry", "", "API address of a registry server (host:port)")
	f.StringVar(&c.TrustBundle, "trust", "", "PEM file with the ecosystem's root certificates (pinned before joining)")
	f.StringVar(&c.JoinToken, "token", "", "one-time join token (first start only; prefer SILD_NODE_TOKEN)")
	f.StringVar(&c.DataDir, "data", "", "data directory: keys, certificates, cached configuration, access rights, ledger")
	f.StringVar(&c.ConsumerListen, "consumer-listen", c.ConsumerListen, "listen address for member systems (gRPC)")
	f.StringVar(&c.ExchangeListen, "exchange-listen", c.ExchangeListen, "listen address for other nodes (mTLS)")
	f.StringVar(&c.ExchangeAdvertise, "exchange-advertise", "", "exchange address published in the configuration (default: the listen address)")
	f.StringVar(&c.AdminListen, "admin-listen", c.AdminListen, "admin API (gRPC and REST, /openapi.json) and /metrics, /healthz, /readyz")
	f.StringArrayVar(&o.subsystems, "subsystem", nil, "subsystem this node serves, ID or ID=BACKEND (repeatable)")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	cmd.AddCommand(newNodeAdminKeyCmd())
	return cmd
}

// config merges the YAML file under the flags that were set.
func (o *nodeOptions) config(cmd *cobra.Command) (node.Config, error) {
	cfg := o.cfg
	if o.file != "" {
		fileCfg, err := node.LoadConfig(o.file)
		if err != nil {
			return cfg, err
		}
		flags := cmd.Flags()
		set := func(name string, dst *string, v string) {
			if flags.Changed(name) {
				*dst = v
			}
		}
		set("node", &fileCfg.Node, cfg.Node)
		set("registry", &fileCfg.Registry, cfg.Registry)
		set("trust", &fileCfg.TrustBundle, cfg.TrustBundle)
		set("token", &fileCfg.JoinToken, cfg.JoinToken)
		set("data", &fileCfg.DataDir, cfg.DataDir)
		set("consumer-listen", &fileCfg.ConsumerListen, cfg.ConsumerListen)
		set("exchange-listen", &fileCfg.ExchangeListen, cfg.ExchangeListen)
		set("exchange-advertise", &fileCfg.ExchangeAdvertise, cfg.ExchangeAdvertise)
		set("admin-listen", &fileCfg.AdminListen, cfg.AdminListen)
		cfg = fileCfg
	}
	for _, s := range o.subsystems {
		id, backend, _ := strings.Cut(s, "=")
		cfg.Subsystems = append(cfg.Subsystems, node.SubsystemConfig{ID: id, Backend: backend})
	}
	log, err := newLogger(cmd.ErrOrStderr(), o.logLevel, o.logFormat)
	if err != nil {
		return cfg, err
	}
	cfg.Logger = log
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("%w (%s)", err, nodeSettingHint(err))
	}
	return cfg, nil
}

// nodeFlags are the flags of the node's YAML keys that have one.
var nodeFlags = map[string]string{
	"node": "--node", "registry": "--registry", "trust_bundle": "--trust", "join_token": "--token", "data_dir": "--data",
	"consumer_listen": "--consumer-listen", "exchange_listen": "--exchange-listen",
	"exchange_advertise": "--exchange-advertise", "admin_listen": "--admin-listen",
	"subsystems.id": "--subsystem ID[=BACKEND]", "subsystems.backend": "--subsystem ID[=BACKEND]",
}

// nodeSettingHint says where the setting a Validate error names is set.
func nodeSettingHint(err error) string {
	var fe *node.FieldError
	if !errors.As(err, &fe) {
		return "see docs/configuration.md"
	}
	key := fe.Key // e.g. data_dir, subsystems[2].backend
	if i := strings.IndexByte(key, '['); i >= 0 {
		if j := strings.IndexByte(key, ']'); j > i {
			key = key[:i] + key[j+1:] // subsystems.backend
		}
	}
	if flag, ok := nodeFlags[key]; ok {
		name, _, _ := strings.Cut(strings.TrimPrefix(flag, "--"), " ")
		return fmt.Sprintf("set %s in the --config file, or %s (%s)", fe.Key, flag, envNameWith("SILD_NODE_", name))
	}
	return fmt.Sprintf("it has no flag: set %s in the --config file", fe.Key)
}

func newNodeAdminKeyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "admin-key",
		Short: "Generate an API key for a node's admin API and print it with its hash",
		Long: `Prints a new random API key and the hash to put in the node's admin_keys.
Give the key to the operator (sent as authorization: Bearer <key>); only the
hash goes into the configuration.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := apikey.Generate()
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "key:  %s\nhash: %s\n", key, apikey.Hash(key))
			return nil
		},
	}
}
