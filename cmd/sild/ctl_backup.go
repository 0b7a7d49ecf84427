package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
			if err := writeFileAtomic(file, resp.GetState()); err != nil {
				return fmt.Errorf("backup file: %w", err)
			}
			fmt.Fprintf(c.out, "backup of log index %d written to %s (%d bytes)\n", resp.GetIndex(), file, len(resp.GetState()))
			return nil
		}),
	}
	cmd.Flags().StringVar(&file, "file", "", "where to write the backup")
	return cmd
}

// writeFileAtomic writes data to file (mode 0600) through a synced
// temporary file in the same directory, renamed over it at the end: a
// failed write never leaves a truncated backup (which could still decode,
// without its last fields) in place of a good one.
func writeFileAtomic(file string, data []byte) error {
	if st, err := os.Stat(file); err == nil && st.IsDir() {
		return fmt.Errorf("%s is a directory", file)
	}
	dir := filepath.Dir(file)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(file)+".*.tmp")
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("cannot write in %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename, there is nothing to remove
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}
