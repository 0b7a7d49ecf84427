package main

import (
	"context"
	"crypto/x509"
	"fmt"

	"github.com/spf13/cobra"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/pki"
)

func newCtlCACmd(opts *ctlOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Rotate the ecosystem's root CA",
		Long: `A root CA rotation runs in three phases, each started by an operator:

  prepare   a new root is created and published next to the current one:
            nodes learn it from the global configuration, federated
            ecosystems from the bundle endpoint. Refresh the bundle files
            operators and joining nodes pin (bundle.pem of a server).
  activate  certificates are issued by the new root from now on (nodes get
            them at their next renewal; registry servers re-issue their own
            at once); the old root stays trusted.
  finish    the old root is no longer trusted. Wait until every node has
            renewed (at most the SVID lifetime, 24 h by default).`,
	}
	phase := func(use string, p registryv1.CARotationPhase) *cobra.Command {
		return &cobra.Command{
			Use: use, Short: "Root CA rotation: " + use, Args: cobra.NoArgs,
			RunE: ctlRun(opts, func(ctx context.Context, c *ctl, _ []string) error {
				resp, err := c.client.RotateCA(ctx, &registryv1.RotateCARequest{Phase: p})
				if err != nil {
					return callError("ca "+use, err)
				}
				if c.json() {
					return c.printJSON(resp)
				}
				fmt.Fprintf(c.out, "ca rotation: %s done; trusted roots:\n", use)
				for _, der := range resp.GetRoots() {
					cert, err := x509.ParseCertificate(der)
					if err != nil {
						return err
					}
					fmt.Fprintf(c.out, "  %s  expires %s\n", pki.Fingerprint(cert), cert.NotAfter.UTC().Format("2006-01-02"))
				}
				return nil
			}),
		}
	}
	cmd.AddCommand(
		phase("prepare", registryv1.CARotationPhase_CA_ROTATION_PHASE_PREPARE),
		phase("activate", registryv1.CARotationPhase_CA_ROTATION_PHASE_ACTIVATE),
		phase("finish", registryv1.CARotationPhase_CA_ROTATION_PHASE_FINISH),
	)
	return cmd
}
