package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/internal/atomicfile"
)

func newCtlBackupCmd(opts *ctlOptions) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "backup --file FILE",
		Short: "Write the registry's whole state (keys included) to a file",
		Long: `Writes a consistent copy of the replicated state — members, nodes, catalogue,
API keys, and the CA, configuration-signing and time-stamping keys — to FILE
(mode 0600), with a checksum that a restore checks. Keep it as secret as the
CA itself. A new cluster starts from it with:
sild registry --bootstrap --restore FILE --id ... --data ...`,
		Args: cobra.NoArgs,
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, _ []string) error {
			if file == "" {
				return fmt.Errorf("--file: required")
			}
			resp, err := c.client.Backup(ctx, &registryv1.BackupRequest{})
			if err != nil {
				return callError("backup", err)
			}
			data := encodeBackup(resp.GetState())
			if err := writeFileAtomic(file, data); err != nil {
				return fmt.Errorf("backup file: %w", err)
			}
			fmt.Fprintf(c.out, "backup of log index %d written to %s (%d bytes)\n", resp.GetIndex(), file, len(data))
			return nil
		}),
	}
	cmd.Flags().StringVar(&file, "file", "", "where to write the backup")
	return cmd
}

// writeFileAtomic writes data to file (mode 0600) through a synced
// temporary file renamed over it (atomicfile): a failed write never leaves
// a truncated backup in place of a good one.
func writeFileAtomic(file string, data []byte) error {
	if st, err := os.Stat(file); err == nil && st.IsDir() {
		return fmt.Errorf("%s is a directory", file)
	}
	dir := filepath.Dir(file)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("cannot write in %s: no such directory", dir)
	}
	return atomicfile.Write(dir, filepath.Base(file), data)
}

// A backup file is backupMagic, the SHA-256 of the state, then the state
// (a serialized registryv1.State): a file changed or cut short after it was
// written is refused at restore instead of restoring part of an ecosystem.
const backupMagic = "sild-registry-backup-v1\n"

// encodeBackup frames a serialized state as a backup file.
func encodeBackup(state []byte) []byte {
	sum := sha256.Sum256(state)
	return append(append([]byte(backupMagic), sum[:]...), state...)
}

// decodeBackup checks a backup file and returns the state it holds.
func decodeBackup(data []byte) (*registryv1.State, error) {
	rest, ok := bytes.CutPrefix(data, []byte(backupMagic))
	if !ok {
		return nil, errors.New("not a registry backup (sild ctl backup writes one)")
	}
	if len(rest) < sha256.Size {
		return nil, errors.New("damaged backup: cut short")
	}
	if sum := sha256.Sum256(rest[sha256.Size:]); !bytes.Equal(sum[:], rest[:sha256.Size]) {
		return nil, errors.New("damaged backup: its checksum does not match (the file was changed or cut short)")
	}
	var st registryv1.State
	if err := proto.Unmarshal(rest[sha256.Size:], &st); err != nil || st.GetCa() == nil {
		return nil, errors.New("damaged backup: it holds no registry state")
	}
	return &st, nil
}
