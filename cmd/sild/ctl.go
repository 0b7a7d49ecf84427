package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/internal/apikey"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/pki"
)

// ctlOptions are the global flags of `sild ctl`.
type ctlOptions struct {
	registry string
	apiKey   string
	keyFile  string
	trust    string
	output   string
	timeout  time.Duration
}

// ctl is what every ctl subcommand runs with: a connected AdminService
// client, a context with the call timeout, and the output.
type ctl struct {
	opts   *ctlOptions
	client registryv1.AdminServiceClient
	out    io.Writer // results
	errOut io.Writer // notes for people next to a secret on out
}

func newCtlCmd() *cobra.Command {
	opts := &ctlOptions{}
	cmd := &cobra.Command{
		Use:   "ctl",
		Short: "Operate a registry (members, nodes, services, requests, keys, Raft) and nodes' access rights",
		Long: `sild ctl is the operator's client of a registry cluster (its AdminService),
and with 'sild ctl access' of a provider node's access rights (its admin
listener; see 'sild ctl access --help').

It connects over TLS to one registry server, verifies that the server is a
registry server of the ecosystem whose root certificates are in --trust, and
authenticates with an API key, given by --api-key or read from --api-key-file
(the bootstrap admin key is admin.key in the first server's data directory;
create more with 'sild ctl apikey create').
Writes sent to a follower reach the leader; reads are linearizable unless
--stale is given.

Identifiers are written in their canonical form:
  member     EE/GOV/70000310
  subsystem  EE/GOV/70000310/licensing
  node       EE/GOV/70000310/ss1
  service    EE/GOV/70000310/licensing/licensing.v1.Licenses

Output is a table for people, or JSON (protobuf JSON mapping) with -o json.`,
		Example: `  export SILD_REGISTRY=127.0.0.1:7400 SILD_TRUST=/var/lib/sild/r1/bundle.pem
  export SILD_API_KEY=$(cat /var/lib/sild/r1/admin.key)
  sild ctl raft status
  sild ctl member add EE/GOV/70000310 --name "Ministry of Examples"
  sild ctl subsystem add EE/GOV/70000310/licensing
  sild ctl node add EE/GOV/70000310/ss1
  sild ctl node token EE/GOV/70000310/ss1 --ttl 2h
  sild ctl member list -o json`,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return bindEnv(cmd.Flags(), nil, "registry", "api-key", "api-key-file", "trust", "output", "timeout")
		},
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&opts.registry, "registry", "", "API address of a registry server, host:port, or several separated by commas to use the first that answers (env SILD_REGISTRY)")
	pf.StringVar(&opts.apiKey, "api-key", "", "operator API key (env SILD_API_KEY)")
	pf.StringVar(&opts.keyFile, "api-key-file", "", "file holding the operator API key, e.g. <data>/admin.key (env SILD_API_KEY_FILE)")
	pf.StringVar(&opts.trust, "trust", "", "PEM file with the ecosystem's root certificates, e.g. <data>/bundle.pem (env SILD_TRUST)")
	pf.StringVarP(&opts.output, "output", "o", "table", "output format: table or json (env SILD_OUTPUT)")
	pf.DurationVar(&opts.timeout, "timeout", 15*time.Second, "deadline of each call (env SILD_TIMEOUT)")

	cmd.AddCommand(
		newCtlMemberCmd(opts),
		newCtlSubsystemCmd(opts),
		newCtlNodeCmd(opts),
		newCtlGroupCmd(opts),
		newCtlAccessCmd(opts),
		newCtlServiceCmd(opts),
		newCtlRequestCmd(opts),
		newCtlAPIKeyCmd(opts),
		newCtlRaftCmd(opts),
		newCtlServerCmd(opts),
		newCtlConfigCmd(opts),
		newCtlFederationCmd(opts),
		newCtlExportCmd(opts),
		newCtlBackupCmd(opts),
		newCtlCACmd(opts),
	)
	return cmd
}

// bindEnv sets each named flag that was not given on the command line from
// the environment variable SILD_<NAME> (upper case, dashes as underscores),
// unless that is empty.
// Flags are looked up in fs and then in the others.
func bindEnv(fs *pflag.FlagSet, others *pflag.FlagSet, names ...string) error {
	return bindEnvWith("SILD_", fs, others, names...)
}

// bindEnvPrefix is bindEnv with another prefix than SILD_.
func bindEnvPrefix(fs *pflag.FlagSet, prefix string, names ...string) error {
	return bindEnvWith(prefix, fs, nil, names...)
}

func bindEnvWith(prefix string, fs *pflag.FlagSet, others *pflag.FlagSet, names ...string) error {
	for _, name := range names {
		f := fs.Lookup(name)
		if f == nil && others != nil {
			f = others.Lookup(name)
		}
		if f == nil || f.Changed {
			continue
		}
		env := envNameWith(prefix, name)
		v := os.Getenv(env)
		if v == "" {
			continue
		}
		if err := f.Value.Set(v); err != nil {
			return fmt.Errorf("environment %s: %w", env, err)
		}
		f.Changed = true
	}
	return nil
}

func envNameWith(prefix, flag string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// ctlRun wraps a subcommand body: it checks the global flags, connects and
// calls fn with a context bounded by --timeout.
func ctlRun(opts *ctlOptions, fn func(ctx context.Context, c *ctl, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := checkOutput(opts.output); err != nil {
			return err
		}
		conn, err := dialRegistry(opts)
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(cmd.Context(), opts.timeout)
		defer cancel()
		c := &ctl{opts: opts, client: registryv1.NewAdminServiceClient(conn), out: cmd.OutOrStdout(), errOut: cmd.ErrOrStderr()}
		return fn(ctx, c, args)
	}
}

// dialRegistry connects to --registry over TLS, accepting only a server
// whose SVID is a registry server's (spiffe://<td>/registry/<id>) in the
// trust domain of the --trust roots, and sends the API key with every call.
func dialRegistry(opts *ctlOptions) (*grpc.ClientConn, error) {
	if opts.registry == "" {
		return nil, errors.New("no registry address: pass --registry HOST:PORT or set SILD_REGISTRY")
	}
	if opts.trust == "" {
		return nil, errors.New("no trust bundle: pass --trust FILE or set SILD_TRUST (bundle.pem in a registry server's data directory)")
	}
	key, err := apiKeyOf(opts.apiKey, opts.keyFile, "the bootstrap key is admin.key in the first server's data directory")
	if err != nil {
		return nil, err
	}
	opts.apiKey = key
	bundle, td, err := loadTrust(opts.trust)
	if err != nil {
		return nil, err
	}
	// Only a registry server may receive the API key: a node's SVID from the
	// same CA does not do.
	tc := tlsconfig.TLSClientConfig(bundle, pki.AuthorizeRegistry(td))
	dialOpts := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithPerRPCCredentials(apikey.Credentials(strings.TrimSpace(opts.apiKey), true)),
		// A backup, the catalogue and the configuration (which carries the
		// catalogue twice, signed and decoded) exceed gRPC's default 4 MiB.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(ctlMaxRecv)),
	}
	target := opts.registry
	if addrs := strings.Split(opts.registry, ","); len(addrs) > 1 {
		// Several servers: pick_first uses the first one that answers.
		r := manual.NewBuilderWithScheme("sild-registry")
		var st resolver.State
		for _, a := range addrs {
			if a = strings.TrimSpace(a); a != "" {
				st.Addresses = append(st.Addresses, resolver.Address{Addr: a})
			}
		}
		r.InitialState(st)
		target = "sild-registry:///registry"
		dialOpts = append(dialOpts, grpc.WithResolvers(r))
	}
	conn, err := grpc.NewClient(target, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", opts.registry, err)
	}
	return conn, nil
}

// ctlMaxRecv bounds an answer of the registry to sild ctl.
const ctlMaxRecv = 1 << 30

// apiKeyOf returns the API key given by --api-key (key) or --api-key-file
// (file), refusing both or neither; hint says where a key is found.
func apiKeyOf(key, file, hint string) (string, error) {
	if file != "" {
		if key != "" {
			return "", errors.New("--api-key and --api-key-file (or SILD_API_KEY and SILD_API_KEY_FILE): give one")
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("--api-key-file: %w", err)
		}
		key = string(b)
	}
	if key = strings.TrimSpace(key); key == "" {
		return "", fmt.Errorf("no API key: pass --api-key KEY or --api-key-file FILE, or set SILD_API_KEY (%s)", hint)
	}
	return key, nil
}

// loadTrust reads a PEM bundle of root certificates; the trust domain is
// the SPIFFE ID in the first root's URI SAN.
func loadTrust(file string) (*x509bundle.Bundle, spiffeid.TrustDomain, error) {
	roots, err := pki.ReadCerts(file)
	if err != nil {
		return nil, spiffeid.TrustDomain{}, fmt.Errorf("trust bundle: %w", err)
	}
	if len(roots[0].URIs) == 0 {
		return nil, spiffeid.TrustDomain{}, fmt.Errorf("trust bundle %s: the root has no SPIFFE trust domain (URI SAN)", file)
	}
	td, err := spiffeid.TrustDomainFromURI(roots[0].URIs[0])
	if err != nil {
		return nil, spiffeid.TrustDomain{}, fmt.Errorf("trust bundle %s: %w", file, err)
	}
	return x509bundle.FromX509Authorities(td, roots), td, nil
}

// callError turns an RPC error into what the operator reads: the status
// message, the code and, when present, the sild reason and component.
func callError(op string, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", op, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s (code %s", op, st.Message(), st.Code())
	if r := rpcerr.Reason(err); r != "" {
		fmt.Fprintf(&b, ", reason %s", r)
	}
	if c := rpcerr.Component(err); c != "" {
		fmt.Fprintf(&b, ", from %s", c)
	}
	b.WriteString(")")
	return &ctlError{msg: b.String(), err: err}
}

// ctlError keeps the gRPC status of a failed call reachable with
// status.FromError and rpcerr.Reason.
type ctlError struct {
	msg string
	err error
}

func (e *ctlError) Error() string { return e.msg }
func (e *ctlError) Unwrap() error { return e.err }

// json reports whether -o json was asked for.
func (c *ctl) json() bool { return c.opts.output == "json" }

// checkOutput refuses an --output other than table or json.
func checkOutput(format string) error {
	if format != "table" && format != "json" {
		return fmt.Errorf("--output %q: must be table or json", format)
	}
	return nil
}

// printJSON writes m in the protobuf JSON mapping.
func (c *ctl) printJSON(m proto.Message) error {
	b, err := protojson.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	// protojson varies its whitespace on purpose; print it stable and indented.
	var compact, out bytes.Buffer
	if err := json.Compact(&compact, b); err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	if err := json.Indent(&out, compact.Bytes(), "", "  "); err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	out.WriteByte('\n')
	_, err = c.out.Write(out.Bytes())
	return err
}

// done prints the result of a write: resp as JSON, or msg for people.
func (c *ctl) done(resp proto.Message, format string, a ...any) error {
	if c.json() {
		return c.printJSON(resp)
	}
	_, err := fmt.Fprintf(c.out, format+"\n", a...)
	return err
}

// secret prints a token or key alone on out, so that $(sild ctl ...) captures
// just it, and a note about it on errOut.
func (c *ctl) secret(secret, format string, a ...any) error {
	fmt.Fprintf(c.errOut, "# "+format+"\n", a...)
	_, err := fmt.Fprintln(c.out, secret)
	return err
}

// table writes rows under header, aligned in columns.
func (c *ctl) table(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// readOpts is the read options of a list command with --stale.
func readOpts(stale bool) *registryv1.ReadOptions {
	return &registryv1.ReadOptions{Stale: stale}
}

func addStale(cmd *cobra.Command, stale *bool) {
	cmd.Flags().BoolVar(stale, "stale", false, "answer from the contacted server's local state, without checking with the leader")
}

// fmtTime renders a timestamp for tables ("-" when unset).
func fmtTime(t *timestamppb.Timestamp) string {
	if t == nil || !t.IsValid() {
		return "-"
	}
	return t.AsTime().UTC().Format(time.RFC3339)
}
