package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
)

func newCtlBackupCmd(opts *ctlOptions) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "backup --file FILE",
		Short: "Write the registry's whole state (keys included) to a file",
		Long: `Writes a consistent copy of the replicated state — members, nodes, catalogue,
API keys, and the CA, configuration-signing and time-stamping keys — to FILE
(mode 0600). Keep it as secret as the CA itself. A new cluster starts from it
with: sild registry --bootstrap --restore FILE --id ... --data ...`,
		Args: cobra.NoArgs,
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, _ []string) error {
			if file == "" {
				return fmt.Errorf("--file: required")
			}
			resp, err := c.client.Backup(ctx, &registryv1.BackupRequest{})
			if err != nil {
				return callError("backup", err)
			}
			if err := os.WriteFile(file, resp.GetState(), 0o600); err != nil {
				return err
			}
			fmt.Fprintf(c.out, "backup of log index %d written to %s (%d bytes)\n", resp.GetIndex(), file, len(resp.GetState()))
			return nil
		}),
	}
	cmd.Flags().StringVar(&file, "file", "", "where to write the backup")
	return cmd
}
