package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/apikey"
	"github.com/sildmesh/sild/node/access"
)

// dialNodeAdmin connects to a running node's admin listener (plaintext
// gRPC, as it serves it on loopback) with an API key of its admin_keys,
// given as --api-key (key) or --api-key-file (keyFile).
func dialNodeAdmin(addr, key, keyFile string) (nodev1.AdminServiceClient, func(), error) {
	key, err := apiKeyOf(key, keyFile, "a key of the node's admin_keys; 'sild node admin-key' makes one")
	if err != nil {
		return nil, nil, err
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(apikey.Credentials(key, false)))
	if err != nil {
		return nil, nil, fmt.Errorf("--node-admin %s: %w", addr, err)
	}
	return nodev1.NewAdminServiceClient(conn), func() { conn.Close() }, nil
}

func newCtlAccessCmd(opts *ctlOptions) *cobra.Command {
	var nodeAdmin string
	cmd := &cobra.Command{
		Use:   "access",
		Short: "Grant, revoke and list the access rights a provider's node holds",
		Long: `Access rights are held by the provider's own node, not by the registry: these
commands talk to a running node's admin listener (--node-admin, its
admin_listen) with an API key of its admin_keys (--api-key or --api-key-file;
'sild node admin-key' makes one). Listing needs the reader role, granting and
revoking the admin role.

A client is a subsystem (EE/GOV/70000311/licensing) or every member subsystem
of a global group (INSTANCE:CODE, e.g. EE:health-workers). A service is
SUBSYSTEM/SERVICE (EE/GOV/70000310/business-registry/sild.demo.v1.BusinessRegistryService);
--method limits a right to one method of it.`,
		Example: `  export SILD_NODE_ADMIN=127.0.0.1:9443 SILD_API_KEY_FILE=/etc/sild/node-admin.key
  sild ctl access grant EE/GOV/70000311/licensing EE/GOV/70000310/business-registry/sild.demo.v1.BusinessRegistryService
  sild ctl access grant EE:health-workers EE/GOV/70000310/business-registry/sild.demo.v1.BusinessRegistryService --method GetCompany
  sild ctl access list --client EE/GOV/70000311/licensing
  sild ctl access revoke EE/GOV/70000311/licensing EE/GOV/70000310/business-registry/sild.demo.v1.BusinessRegistryService`,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return bindEnv(cmd.Flags(), nil, "node-admin", "api-key", "api-key-file", "output", "timeout")
		},
	}
	cmd.PersistentFlags().StringVar(&nodeAdmin, "node-admin", "", "admin listener of the provider's node, host:port (its admin_listen; env SILD_NODE_ADMIN)")
	run := func(fn func(ctx context.Context, c *ctl, admin nodev1.AdminServiceClient, args []string) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(opts.output); err != nil {
				return err
			}
			if nodeAdmin == "" {
				return errors.New("--node-admin: required (the node's admin_listen, host:port; env SILD_NODE_ADMIN)")
			}
			admin, closeConn, err := dialNodeAdmin(nodeAdmin, opts.apiKey, opts.keyFile)
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, cancel := context.WithTimeout(cmd.Context(), opts.timeout)
			defer cancel()
			return fn(ctx, &ctl{opts: opts, out: cmd.OutOrStdout(), errOut: cmd.ErrOrStderr()}, admin, args)
		}
	}
	var method string
	right := func(args []string) (access.Right, error) {
		client, err := access.ParseClient(args[0])
		if err != nil {
			return access.Right{}, fmt.Errorf("client %q: %w", args[0], err)
		}
		svc, err := ident.ParseService(args[1])
		if err != nil {
			return access.Right{}, fmt.Errorf("service %q: %w", args[1], err)
		}
		r := access.Right{Client: client, Service: svc, Method: method}
		return r, r.Validate()
	}
	grant := &cobra.Command{
		Use: "grant CLIENT SERVICE [--method NAME]", Short: "Let a client call a service (or one method of it)", Args: cobra.ExactArgs(2),
		RunE: run(func(ctx context.Context, c *ctl, admin nodev1.AdminServiceClient, args []string) error {
			r, err := right(args)
			if err != nil {
				return err
			}
			resp, err := admin.GrantAccess(ctx, &nodev1.GrantAccessRequest{Right: r.Proto()})
			if err != nil {
				return callError("grant access", err)
			}
			if !resp.GetCreated() {
				return c.done(resp, "%s was granted already", r)
			}
			return c.done(resp, "granted %s", r)
		}),
	}
	grant.Flags().StringVar(&method, "method", "", "only this method of the service (e.g. GetCompany)")
	revoke := &cobra.Command{
		Use: "revoke CLIENT SERVICE [--method NAME]", Short: "Remove exactly one right (a whole-service right leaves per-method ones)", Args: cobra.ExactArgs(2),
		RunE: run(func(ctx context.Context, c *ctl, admin nodev1.AdminServiceClient, args []string) error {
			r, err := right(args)
			if err != nil {
				return err
			}
			resp, err := admin.RevokeAccess(ctx, &nodev1.RevokeAccessRequest{Right: r.Proto()})
			if err != nil {
				return callError("revoke access", err)
			}
			return c.done(resp, "revoked %s", r)
		}),
	}
	revoke.Flags().StringVar(&method, "method", "", "the method of a per-method right")
	var client, subsystem, service, onlyMethod string
	list := &cobra.Command{
		Use: "list [--client C] [--subsystem S] [--service S] [--method M]", Short: "List the rights matching every filter given", Args: cobra.NoArgs,
		RunE: run(func(ctx context.Context, c *ctl, admin nodev1.AdminServiceClient, _ []string) error {
			req := &nodev1.ListAccessRequest{MethodName: onlyMethod}
			if client != "" {
				cl, err := access.ParseClient(client)
				if err != nil {
					return fmt.Errorf("--client %q: %w", client, err)
				}
				req.Client = cl.Proto()
			}
			if subsystem != "" {
				sub, err := argSubsystem(subsystem)
				if err != nil {
					return fmt.Errorf("--subsystem: %w", err)
				}
				req.Subsystem = sub
			}
			if service != "" {
				svc, err := ident.ParseService(service)
				if err != nil {
					return fmt.Errorf("--service %q: %w", service, err)
				}
				req.Service = svc.Proto()
			}
			resp, err := admin.ListAccess(ctx, req)
			if err != nil {
				return callError("list access", err)
			}
			if c.json() {
				return c.printJSON(resp)
			}
			rows := make([][]string, 0, len(resp.GetRights()))
			for _, p := range resp.GetRights() {
				r, err := access.RightFromProto(p, "right")
				if err != nil {
					return fmt.Errorf("node answered a malformed right: %w", err)
				}
				m := r.Method
				if m == "" {
					m = "*"
				}
				rows = append(rows, []string{r.Client.String(), r.Service.String(), m, r.GrantedAt.UTC().Format("2006-01-02 15:04:05")})
			}
			return c.table([]string{"CLIENT", "SERVICE", "METHOD", "GRANTED (UTC)"}, rows)
		}),
	}
	lf := list.Flags()
	lf.StringVar(&client, "client", "", "only rights of this client (exactly: a subsystem does not expand to its groups)")
	lf.StringVar(&subsystem, "subsystem", "", "only rights on services of this provider subsystem")
	lf.StringVar(&service, "service", "", "only rights on this service")
	lf.StringVar(&onlyMethod, "method", "", "only rights for this method")
	cmd.AddCommand(grant, revoke, list)
	return cmd
}
