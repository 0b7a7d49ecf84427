package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/pki"
)

func linkState(s registryv1.LinkState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "LINK_STATE_"))
}

func newCtlFederationCmd(opts *ctlOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "federation",
		Short: "Link this ecosystem with others (active once both sides added the link)",
		Long: `A federation link is one side of an agreement between two ecosystems. Each
operator adds the other: the peer's instance code, its SPIFFE bundle endpoint
(sild registry --federation-listen of a peer server), the SPIFFE ID that
endpoint presents, and the fingerprint of the peer's root certificate, got
from the peer operator out of band (sild ctl federation fingerprint --trust
their-bundle.pem). The link becomes active when the peer has linked back;
then each side sees what the other exports to it.`,
		Example: `  # on EE, with FI's values:
  sild ctl federation add FI --trust-domain fi.sild.test \
    --bundle-endpoint https://registry.fi.example:7403/ \
    --endpoint-id spiffe://fi.sild.test/registry/r1 --fingerprint sha256:...
  sild ctl federation list`,
	}
	var td, endpoint, endpointID, fingerprint string
	add := &cobra.Command{
		Use: "add INSTANCE", Short: "Add a link to another ecosystem", Args: cobra.ExactArgs(1),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			resp, err := c.client.AddFederationLink(ctx, &registryv1.AddFederationLinkRequest{
				Instance: args[0], TrustDomain: td, BundleEndpointUrl: endpoint, EndpointSpiffeId: endpointID, RootFingerprint: fingerprint,
			})
			if err != nil {
				return callError("add federation link", err)
			}
			return c.done(resp, "link to %s added; it becomes active when %s links back (see: sild ctl federation list)", args[0], args[0])
		}),
	}
	add.Flags().StringVar(&td, "trust-domain", "", "the peer's SPIFFE trust domain, e.g. fi.sild.test")
	add.Flags().StringVar(&endpoint, "bundle-endpoint", "", "the peer's bundle endpoint URL (https)")
	add.Flags().StringVar(&endpointID, "endpoint-id", "", "SPIFFE ID the bundle endpoint presents")
	add.Flags().StringVar(&fingerprint, "fingerprint", "", "sha256:<hex> of the peer's root certificate")
	remove := &cobra.Command{
		Use: "remove INSTANCE", Short: "Remove a link (and the exports to it)", Args: cobra.ExactArgs(1),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			resp, err := c.client.RemoveFederationLink(ctx, &registryv1.RemoveFederationLinkRequest{Instance: args[0]})
			if err != nil {
				return callError("remove federation link", err)
			}
			return c.done(resp, "link to %s removed", args[0])
		}),
	}
	suspend := func(use string, suspended bool) *cobra.Command {
		return &cobra.Command{
			Use: use + " INSTANCE", Short: strings.ToUpper(use[:1]) + use[1:] + " a link", Args: cobra.ExactArgs(1),
			RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
				resp, err := c.client.SetFederationLinkSuspended(ctx, &registryv1.SetFederationLinkSuspendedRequest{Instance: args[0], Suspended: suspended})
				if err != nil {
					return callError(use+" federation link", err)
				}
				return c.done(resp, "link to %s: %sed", args[0], strings.TrimSuffix(use, "e"))
			}),
		}
	}
	var stale bool
	list := &cobra.Command{
		Use: "list", Short: "List links with their state", Args: cobra.NoArgs,
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, _ []string) error {
			resp, err := c.client.ListFederationLinks(ctx, &registryv1.ListFederationLinksRequest{Read: readOpts(stale)})
			if err != nil {
				return callError("list federation links", err)
			}
			if c.json() {
				return c.printJSON(resp)
			}
			var rows [][]string
			for _, l := range resp.GetLinks() {
				d := l.GetDirectory()
				rows = append(rows, []string{l.GetInstance(), l.GetTrustDomain(), linkState(l.GetState()),
					fmt.Sprint(len(d.GetServices())), orDash(l.GetStatus())})
			}
			return c.table([]string{"INSTANCE", "TRUST DOMAIN", "STATE", "SERVICES", "STATUS"}, rows)
		}),
	}
	addStale(list, &stale)
	var trust string
	fp := &cobra.Command{
		Use: "fingerprint", Short: "Print the fingerprints of the roots in a PEM bundle (to give a peer)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if trust == "" {
				return fmt.Errorf("--trust: required")
			}
			roots, err := pki.ReadCerts(trust)
			if err != nil {
				return fmt.Errorf("--trust: %w", err)
			}
			for _, r := range roots {
				fmt.Fprintln(cmd.OutOrStdout(), pki.Fingerprint(r))
			}
			return nil
		},
	}
	fp.Flags().StringVar(&trust, "trust", "", "PEM bundle (bundle.pem of a registry server)")
	cmd.AddCommand(add, remove, suspend("suspend", true), suspend("resume", false), list, fp)
	return cmd
}

func newCtlExportCmd(opts *ctlOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "export", Short: "Offer a subsystem's services to a federated ecosystem"}
	var to string
	change := func(use string, add bool) *cobra.Command {
		c := &cobra.Command{
			Use: use + " SUBSYSTEM --to INSTANCE", Short: map[bool]string{true: "Export a subsystem", false: "Stop exporting a subsystem"}[add], Args: cobra.ExactArgs(1),
			RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
				sub, err := argSubsystem(args[0])
				if err != nil {
					return err
				}
				if to == "" {
					return fmt.Errorf("--to: required (the peer's instance code)")
				}
				if add {
					resp, err := c.client.AddExport(ctx, &registryv1.AddExportRequest{Subsystem: sub, ToInstance: to})
					if err != nil {
						return callError("add export", err)
					}
					return c.done(resp, "%s exported to %s", args[0], to)
				}
				resp, err := c.client.RemoveExport(ctx, &registryv1.RemoveExportRequest{Subsystem: sub, ToInstance: to})
				if err != nil {
					return callError("remove export", err)
				}
				return c.done(resp, "%s no longer exported to %s", args[0], to)
			}),
		}
		c.Flags().StringVar(&to, "to", "", "instance code of the federated ecosystem")
		return c
	}
	var stale bool
	list := &cobra.Command{
		Use: "list", Short: "List exports", Args: cobra.NoArgs,
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, _ []string) error {
			resp, err := c.client.ListExports(ctx, &registryv1.ListExportsRequest{Read: readOpts(stale)})
			if err != nil {
				return callError("list exports", err)
			}
			if c.json() {
				return c.printJSON(resp)
			}
			var rows [][]string
			for _, e := range resp.GetExports() {
				rows = append(rows, []string{subsystemStr(e.GetSubsystem()), strings.Join(e.GetToInstances(), ",")})
			}
			return c.table([]string{"SUBSYSTEM", "TO"}, rows)
		}),
	}
	addStale(list, &stale)
	cmd.AddCommand(change("add", true), change("remove", false), list)
	return cmd
}
