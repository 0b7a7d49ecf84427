package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
)

func requestState(s registryv1.RequestState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "REQUEST_STATE_"))
}

func parseRequestState(s string) (registryv1.RequestState, error) {
	switch strings.ToLower(s) {
	case "", "all":
		return registryv1.RequestState_REQUEST_STATE_UNSPECIFIED, nil
	case "pending":
		return registryv1.RequestState_REQUEST_STATE_PENDING, nil
	case "approved":
		return registryv1.RequestState_REQUEST_STATE_APPROVED, nil
	case "rejected":
		return registryv1.RequestState_REQUEST_STATE_REJECTED, nil
	}
	return 0, fmt.Errorf("--state %q: must be pending, approved, rejected or all", s)
}

func parseRequestID(s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("request id %q: must be a positive number (see sild ctl request list)", s)
	}
	return id, nil
}

func newCtlRequestCmd(opts *ctlOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "request", Short: "Review management requests: list, approve, reject, auto-approve policy"}
	var stateFlag string
	var stale bool
	list := &cobra.Command{
		Use: "list", Short: "List management requests", Args: cobra.NoArgs,
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, _ []string) error {
			st, err := parseRequestState(stateFlag)
			if err != nil {
				return err
			}
			resp, err := c.client.ListRequests(ctx, &registryv1.ListRequestsRequest{Read: readOpts(stale), State: st})
			if err != nil {
				return callError("list requests", err)
			}
			if c.json() {
				return c.printJSON(resp)
			}
			var rows [][]string
			for _, q := range resp.GetRequests() {
				rows = append(rows, []string{strconv.FormatUint(q.GetId(), 10), q.GetKind(), requestState(q.GetState()),
					fmtTime(q.GetCreatedAt()), fmtTime(q.GetDecidedAt()), orDash(q.GetSummary())})
			}
			return c.table([]string{"ID", "KIND", "STATE", "CREATED", "DECIDED", "SUMMARY"}, rows)
		}),
	}
	list.Flags().StringVar(&stateFlag, "state", "all", "only requests in this state: pending, approved, rejected or all")
	addStale(list, &stale)
	decide := func(use, short string, approve bool) *cobra.Command {
		return &cobra.Command{
			Use: use + " ID", Short: short, Args: cobra.ExactArgs(1),
			RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
				id, err := parseRequestID(args[0])
				if err != nil {
					return err
				}
				var resp proto.Message
				if approve {
					resp, err = c.client.ApproveRequest(ctx, &registryv1.ApproveRequestRequest{Id: id})
				} else {
					resp, err = c.client.RejectRequest(ctx, &registryv1.RejectRequestRequest{Id: id})
				}
				if err != nil {
					return callError(use+" request", err)
				}
				past := "rejected"
				if approve {
					past = "approved"
				}
				return c.done(resp, "request %d %s", id, past)
			}),
		}
	}
	auto := &cobra.Command{
		Use:   "auto-approve KIND on|off",
		Short: "Approve requests of a kind automatically (e.g. register_subsystem), or stop doing so",
		Args:  cobra.ExactArgs(2),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			var on bool
			switch args[1] {
			case "on", "true", "yes":
				on = true
			case "off", "false", "no":
			default:
				return fmt.Errorf("auto-approve %s %q: must be on or off", args[0], args[1])
			}
			resp, err := c.client.SetAutoApprove(ctx, &registryv1.SetAutoApproveRequest{Kind: args[0], AutoApprove: on})
			if err != nil {
				return callError("set auto-approve", err)
			}
			return c.done(resp, "auto-approve %s: %s", args[0], args[1])
		}),
	}
	cmd.AddCommand(list, decide("approve", "Approve a pending request (its change is applied)", true),
		decide("reject", "Reject a pending request", false), auto)
	return cmd
}

func parseRole(s string) (registryv1.Role, error) {
	switch strings.ToLower(s) {
	case "reader":
		return registryv1.Role_ROLE_READER, nil
	case "operator":
		return registryv1.Role_ROLE_OPERATOR, nil
	case "admin":
		return registryv1.Role_ROLE_ADMIN, nil
	}
	return 0, fmt.Errorf("--role %q: must be reader, operator or admin", s)
}

func roleStr(r registryv1.Role) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "ROLE_"))
}

func newCtlAPIKeyCmd(opts *ctlOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use: "apikey", Short: "Manage operator API keys (admin only)",
		Long: `Manage operator API keys. Roles: reader (lists, raft status, config),
operator (also members, subsystems, nodes, groups, services, requests),
admin (everything, including keys and servers).`,
	}
	var role string
	create := &cobra.Command{
		Use: "create NAME --role reader|operator|admin", Short: "Create an API key; its secret is printed once", Args: cobra.ExactArgs(1),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			r, err := parseRole(role)
			if err != nil {
				return err
			}
			resp, err := c.client.CreateApiKey(ctx, &registryv1.CreateApiKeyRequest{Name: args[0], Role: r})
			if err != nil {
				return callError("create api key", err)
			}
			if c.json() {
				return c.printJSON(resp)
			}
			return c.secret(resp.GetSecret(), "API key %s, id %s, role %s: store it now, it is not shown again",
				args[0], resp.GetKey().GetId(), roleStr(resp.GetKey().GetRole()))
		}),
	}
	create.Flags().StringVar(&role, "role", "", "reader, operator or admin (required)")
	revoke := &cobra.Command{
		Use: "revoke ID", Short: "Revoke an API key by its id", Args: cobra.ExactArgs(1),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			resp, err := c.client.RevokeApiKey(ctx, &registryv1.RevokeApiKeyRequest{Id: args[0]})
			if err != nil {
				return callError("revoke api key", err)
			}
			return c.done(resp, "API key %s revoked", args[0])
		}),
	}
	var stale bool
	list := &cobra.Command{
		Use: "list", Short: "List API keys (never their secrets)", Args: cobra.NoArgs,
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, _ []string) error {
			resp, err := c.client.ListApiKeys(ctx, &registryv1.ListApiKeysRequest{Read: readOpts(stale)})
			if err != nil {
				return callError("list api keys", err)
			}
			if c.json() {
				return c.printJSON(resp)
			}
			var rows [][]string
			for _, k := range resp.GetKeys() {
				rows = append(rows, []string{k.GetId(), k.GetName(), roleStr(k.GetRole()), fmtTime(k.GetCreatedAt())})
			}
			return c.table([]string{"ID", "NAME", "ROLE", "CREATED"}, rows)
		}),
	}
	addStale(list, &stale)
	cmd.AddCommand(create, revoke, list)
	return cmd
}

func newCtlRaftCmd(opts *ctlOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "raft", Short: "Inspect the registry's Raft cluster"}
	st := &cobra.Command{
		Use: "status", Short: "Show the contacted server's Raft state, the leader, the servers and indexes", Args: cobra.NoArgs,
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, _ []string) error {
			resp, err := c.client.RaftStatus(ctx, &registryv1.RaftStatusRequest{})
			if err != nil {
				return callError("raft status", err)
			}
			if c.json() {
				return c.printJSON(resp)
			}
			fmt.Fprintf(c.out, "server %s: %s, leader %s, term %d, commit %d, applied %d, last log %d\n\n",
				resp.GetServerId(), resp.GetState(), orDash(resp.GetLeaderId()), resp.GetTerm(),
				resp.GetCommitIndex(), resp.GetAppliedIndex(), resp.GetLastLogIndex())
			var rows [][]string
			for _, s := range resp.GetServers() {
				role := "follower"
				if s.GetLeader() {
					role = "leader"
				}
				if !s.GetVoter() {
					role = "non-voter"
				}
				rows = append(rows, []string{s.GetId(), role, orDash(s.GetApiAddress()), s.GetRaftAddress()})
			}
			return c.table([]string{"SERVER", "ROLE", "API", "RAFT"}, rows)
		}),
	}
	cmd.AddCommand(st)
	return cmd
}

func newCtlServerCmd(opts *ctlOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "server", Short: "Add (by token) and remove registry servers"}
	var voter bool
	var ttl time.Duration
	token := &cobra.Command{
		Use:   "token ID [--voter]",
		Short: "Mint the one-time token with which a new registry server joins",
		Long: `Mint a one-time token for a new registry server with id ID. Start the
server with:

  sild registry --id ID --join <API address of a running server> --token TOKEN \
    --trust <bundle.pem> --data DIR --api-listen ... --raft-listen ...

With --voter it joins as a voter; without, as a non-voter (a read replica).`,
		Args: cobra.ExactArgs(1),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			req := &registryv1.CreateServerTokenRequest{ServerId: args[0], Voter: voter}
			if ttl != 0 {
				req.Ttl = durationpb.New(ttl)
			}
			resp, err := c.client.CreateServerToken(ctx, req)
			if err != nil {
				return callError("create server token", err)
			}
			if c.json() {
				return c.printJSON(resp)
			}
			kind := "non-voter"
			if voter {
				kind = "voter"
			}
			return c.secret(resp.GetToken(), "one-time token for registry server %s as %s, expires %s", args[0], kind, fmtTime(resp.GetExpiresAt()))
		}),
	}
	token.Flags().BoolVar(&voter, "voter", false, "join as a voter (default: non-voter, a read replica)")
	token.Flags().DurationVar(&ttl, "ttl", 0, "token lifetime (default 1h on the server, at most 168h)")
	remove := &cobra.Command{
		Use: "remove ID", Short: "Remove a registry server from the Raft cluster", Args: cobra.ExactArgs(1),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			resp, err := c.client.RemoveServer(ctx, &registryv1.RemoveServerRequest{ServerId: args[0]})
			if err != nil {
				return callError("remove server", err)
			}
			return c.done(resp, "registry server %s removed", args[0])
		}),
	}
	cmd.AddCommand(token, remove)
	return cmd
}

func certSummary(der []byte) string {
	sum := sha256.Sum256(der)
	fp := "sha256:" + hex.EncodeToString(sum[:8])
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fp + " (unparsable)"
	}
	id := ""
	if len(cert.URIs) > 0 {
		id = cert.URIs[0].String() + " "
	}
	return fmt.Sprintf("%s%s, expires %s", id, fp, cert.NotAfter.UTC().Format(time.RFC3339))
}

func newCtlConfigCmd(opts *ctlOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Show the published global configuration; rotate its signing key"}
	show := &cobra.Command{
		Use: "show", Short: "Show the current global configuration (a summary, or all of it with -o json)", Args: cobra.NoArgs,
		Long: `Show the global configuration as last published by the contacted server:
a summary table, or the whole GlobalConfig with -o json. Publication follows
committed changes within about a second, so a change made just before may
not be in it yet.`,
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, _ []string) error {
			resp, err := c.client.GetGlobalConfig(ctx, &registryv1.GetGlobalConfigRequest{})
			if err != nil {
				return callError("get global config", err)
			}
			g := resp.GetConfig()
			if c.json() {
				return c.printJSON(g)
			}
			rows := [][]string{
				{"instance", g.GetInstance()},
				{"trust domain", g.GetTrustDomain()},
				{"version", strconv.FormatUint(g.GetVersion(), 10)},
				{"issued", fmtTime(g.GetIssuedAt())},
				{"expires", fmtTime(g.GetExpiresAt())},
				{"members", strconv.Itoa(len(g.GetMembers()))},
				{"subsystems", strconv.Itoa(len(g.GetSubsystems()))},
				{"nodes", strconv.Itoa(len(g.GetNodes()))},
				{"groups", strconv.Itoa(len(g.GetGroups()))},
				{"services", strconv.Itoa(len(g.GetServices()))},
				{"federated", strconv.Itoa(len(g.GetFederated()))},
				{"registry servers", orDash(strings.Join(g.GetRegistryAddresses(), ","))},
				{"tsa", orDash(strings.Join(g.GetTsaUrls(), ","))},
			}
			for _, r := range g.GetTrustBundle() {
				rows = append(rows, []string{"root", certSummary(r)})
			}
			if len(resp.GetSigned().GetSignerChain()) > 0 {
				rows = append(rows, []string{"signed by", certSummary(resp.GetSigned().GetSignerChain()[0])})
			}
			return c.table([]string{"FIELD", "VALUE"}, rows)
		}),
	}
	rotate := &cobra.Command{
		Use: "rotate-key", Short: "Replace the configuration-signing key (admin)", Args: cobra.NoArgs,
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, _ []string) error {
			resp, err := c.client.RotateConfigKey(ctx, &registryv1.RotateConfigKeyRequest{})
			if err != nil {
				return callError("rotate config key", err)
			}
			return c.done(resp, "configuration-signing key rotated: %s", certSummary(resp.GetCertificate()))
		}),
	}
	cmd.AddCommand(show, rotate)
	return cmd
}
