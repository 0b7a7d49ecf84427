package main

import (
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/sildmesh/sild/internal/demo"
)

func newDemoCmd() *cobra.Command {
	cfg := demo.Config{}
	var verbose bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a demonstration: two federated ecosystems, four nodes, sample services",
		Long: `sild demo starts, on 127.0.0.1 with temporary data, two federated ecosystems:
EE (trust domain ee.sild.test) with a three-server registry and the nodes of
a licensing authority, the business registry and the tax board, and FI
(fi.sild.test) with its own registry and the population register's node.
The sample services (sild.demo.v1.BusinessRegistryService, TaxBoardService,
PopulationRegisterService) are published with their descriptors, access is
granted on the providers' nodes, and the link EE <-> FI is set up with FI's
population register exported to EE and EE's business registry to FI.

Then it runs the scenario — the licensing authority checks a company, its
events (a server stream), its tax status (over REST) and, across the border,
its Finnish board member; one call is refused for want of an access right;
and FI's population register asks EE's business registry about the company
— printing for each step who asked what, the result and the ledger
receipts of both nodes. Finally it prints the addresses, the API keys and
ready-to-paste grpcurl, curl and 'sild ctl' commands, and runs until
interrupted (Ctrl-C). The data is removed at exit unless --keep is given.

With --once it exits after the scenario: 0 if every step succeeded, 1 if not.`,
		Example: `  go run ./cmd/sild demo
  go run ./cmd/sild demo --once`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Out = cmd.OutOrStdout()
			if verbose {
				cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelInfo}))
			}
			return demo.Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&cfg.Once, "once", false, "run the scenario and exit (status 1 if a step failed) instead of waiting")
	f.BoolVar(&cfg.Keep, "keep", false, "keep the temporary data directory at exit")
	f.StringVar(&cfg.Dir, "dir", "", "where to create the temporary data directory (default: the system's temp dir)")
	f.StringVar(&cfg.Command, "command", "go run ./cmd/sild", "how the printed commands invoke sild")
	f.BoolVarP(&verbose, "verbose", "v", false, "log what the servers do to stderr")
	cmd.AddCommand(newDemoBackendCmd())
	return cmd
}
