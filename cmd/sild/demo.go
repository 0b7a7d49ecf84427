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
		Short: "Run a demonstration mesh on loopback (registry of EE, 3 servers)",
		Long: `sild demo starts a three-server registry cluster for the instance EE (trust
domain ee.sild.test) on 127.0.0.1 with temporary data, prints its addresses,
the admin API key, the trust bundle and ready-to-paste 'sild ctl' commands,
and runs until interrupted (Ctrl-C). The data is removed at exit unless
--keep is given.

With --once it runs a smoke check instead (a member and a subsystem written
through a follower and read back from another server, then the Raft status)
and exits 0 on success.`,
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
	f.BoolVar(&cfg.Once, "once", false, "run the smoke check and exit instead of waiting")
	f.BoolVar(&cfg.Keep, "keep", false, "keep the temporary data directory at exit")
	f.StringVar(&cfg.Dir, "dir", "", "where to create the temporary data directory (default: the system's temp dir)")
	f.StringVar(&cfg.Command, "command", "go run ./cmd/sild", "how the printed commands invoke sild")
	f.BoolVarP(&verbose, "verbose", "v", false, "log what the servers do to stderr")
	return cmd
}
