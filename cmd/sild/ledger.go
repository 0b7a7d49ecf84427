package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	"github.com/sildmesh/sild/ledger"
	"github.com/sildmesh/sild/pki"
)

func newLedgerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ledger",
		Short: "Query, export, verify and check a node's evidence ledger",
		Long: `The ledger is a node's append-only evidence log: one record per exchange and
side, leaves of a Merkle tree whose signed checkpoints are time-stamped by the
ecosystem's RFC 3161 authority.

check, archive, export --data and query --data open the ledger directory, so
run them while the node is stopped (or on a copy); export --node-admin and
query --node-admin ask a running node instead. verify needs nothing but the bundle and the ecosystem's trust
bundle.`,
	}
	cmd.AddCommand(newLedgerExportCmd(), newLedgerQueryCmd(), newLedgerVerifyCmd(), newLedgerCheckCmd(),
		newLedgerArchiveCmd(), newLedgerVerifyArchiveCmd(), newLedgerExportArchivedCmd())
	return cmd
}

// readBodyKey reads a 32-byte AES key, raw or as 64 hex characters.
func readBodyKey(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("body key: %w", err)
	}
	if t := bytes.TrimSpace(b); len(t) == 64 {
		if k, err := hex.DecodeString(string(t)); err == nil {
			return k, nil
		}
	}
	if len(b) != 32 {
		return nil, fmt.Errorf("body key %s: want 32 bytes or 64 hex characters", path)
	}
	return b, nil
}

// openLedgerDir opens a stopped node's ledger directory for reading, with
// the body key in keyFile if one is given.
func openLedgerDir(dir, keyFile string) (*ledger.Ledger, error) {
	key, err := readBodyKey(keyFile)
	if err != nil {
		return nil, err
	}
	return ledger.OpenReader(dir, key, nil)
}

func readTrust(path string) ([]*x509.Certificate, error) {
	if path == "" {
		return nil, nil
	}
	certs, err := pki.ReadCerts(path)
	if err != nil {
		return nil, fmt.Errorf("trust bundle: %w", err)
	}
	return certs, nil
}

func newLedgerExportCmd() *cobra.Command {
	var (
		src                 ledgerSource
		msgID, out, keyFile string
	)
	var bodies bool
	cmd := &cobra.Command{
		Use:   "export (--data DIR | --node-admin HOST:PORT) --message-id ID -o FILE",
		Short: "Write the evidence bundle of one message",
		Long: `Write the evidence bundle of one message id: its records, the bodies kept
(when asked for), the inclusion proof of each record in the earliest
time-stamped checkpoint that covers them, that signed checkpoint with the
signer's certificate chain, and its time-stamp token. Check it with
'sild ledger verify'.

From a running node, ask its admin listener (--node-admin, with an API key of
the node's admin_keys: the reader role may export, --bodies needs admin). From
a stopped node (or a copy of its data), open the ledger directory (--data,
with --body-key-file to include the bodies).`,
		Example: `  sild ledger export --node-admin 127.0.0.1:9443 --api-key-file reader.key --message-id m-1 -o m-1.bundle
  sild ledger export --data /var/lib/sild/node/ledger --message-id m-1 -o m-1.bundle`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := bindEnv(cmd.Flags(), nil, "api-key", "api-key-file"); err != nil {
				return err
			}
			var (
				data    []byte
				records int
				stamped bool
			)
			switch {
			case src.check() != nil:
				return src.check()
			case src.admin != "" && keyFile != "":
				return errors.New("--body-key-file goes with --data; ask a running node for bodies with --bodies")
			case src.dataDir != "" && bodies:
				return errors.New("--bodies goes with --node-admin; with --data give --body-key-file")
			case src.admin != "":
				resp, err := exportFromNode(cmd.Context(), &src, msgID, bodies)
				if err != nil {
					return err
				}
				data, records, stamped = resp.GetBundle(), int(resp.GetRecords()), resp.GetStamped()
			default:
				l, err := openLedgerDir(src.dataDir, keyFile)
				if err != nil {
					return err
				}
				defer l.Close()
				b, err := l.Export(msgID)
				if err != nil {
					return err
				}
				if data, err = proto.Marshal(b); err != nil {
					return fmt.Errorf("export: %w", err)
				}
				records, stamped = len(b.GetItems()), len(b.GetCheckpoint().GetTimestampToken()) > 0
			}
			if err := os.WriteFile(out, data, 0o600); err != nil {
				return fmt.Errorf("export: %w", err)
			}
			if !stamped {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning: the checkpoint is not time-stamped yet; verify will fail with TIMESTAMP_MISSING (export again in a few seconds)")
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: %d record(s)\n", out, records)
			return nil
		},
	}
	f := cmd.Flags()
	src.flags(f)
	f.BoolVar(&bodies, "bodies", false, "with --node-admin: include the bodies the ledger keeps (admin role)")
	f.StringVar(&msgID, "message-id", "", "message id to export (required)")
	f.StringVarP(&out, "output", "o", "", "bundle file to write (required)")
	f.StringVar(&keyFile, "body-key-file", "", "with --data: AES-256 body key (32 bytes or 64 hex characters); without it bodies are left out")
	for _, name := range []string{"message-id", "output"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// ledgerSource is where a ledger command reads: the ledger directory of a
// stopped node (--data) or a running node's admin listener (--node-admin,
// with an API key of its admin_keys).
type ledgerSource struct{ dataDir, admin, apiKey, apiKeyFile string }

func (s *ledgerSource) flags(f *pflag.FlagSet) {
	f.StringVar(&s.dataDir, "data", "", "ledger directory of a stopped node")
	f.StringVar(&s.admin, "node-admin", "", "admin listener of a running node, host:port (its admin_listen)")
	f.StringVar(&s.apiKey, "api-key", "", "with --node-admin: API key of the node's admin_keys (env SILD_API_KEY)")
	f.StringVar(&s.apiKeyFile, "api-key-file", "", "with --node-admin: file holding that key (env SILD_API_KEY_FILE)")
}

// check refuses both sources or neither.
func (s *ledgerSource) check() error {
	if (s.dataDir == "") == (s.admin == "") {
		return errors.New("give one of --data (a stopped node's ledger directory) and --node-admin (a running node's admin listener)")
	}
	return nil
}

// dial connects to the admin listener with the API key.
func (s *ledgerSource) dial() (nodev1.AdminServiceClient, func(), error) {
	return dialNodeAdmin(s.admin, s.apiKey, s.apiKeyFile)
}

// exportFromNode asks a running node's admin listener for the evidence of
// msgID.
func exportFromNode(ctx context.Context, src *ledgerSource, msgID string, bodies bool) (*nodev1.ExportEvidenceResponse, error) {
	admin, closeConn, err := src.dial()
	if err != nil {
		return nil, err
	}
	defer closeConn()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := admin.ExportEvidence(ctx, &nodev1.ExportEvidenceRequest{MessageId: msgID, IncludeBodies: bodies})
	if err != nil {
		return nil, callError("export from "+src.admin, err)
	}
	return resp, nil
}

func newLedgerVerifyCmd() *cobra.Command {
	var trust, tokenOut string
	var verbose bool
	cmd := &cobra.Command{
		Use:   "verify FILE --trust BUNDLE.pem",
		Short: "Check an evidence bundle offline",
		Long: `Check an evidence bundle offline against the ecosystem's trust bundle (PEM CA
certificates): the RFC 3161 time-stamp token, the checkpoint signature and its
signer's certificate, every record's inclusion proof, every body against its
record, and the consumer's and provider's signatures. It exits non-zero and
names what failed (e.g. INCLUSION_PROOF_INVALID, TIMESTAMP_INVALID).

The token can also be checked on its own with OpenSSL:
  sild ledger verify FILE --trust ca.pem --token-out token.tsr -v
  openssl ts -verify -digest <stamp digest printed above> -in token.tsr -token_in -CAfile ca.pem`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			roots, err := readTrust(trust)
			if err != nil {
				return err
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return fmt.Errorf("verify: %w", err)
			}
			v, err := ledger.VerifyBundle(data, roots)
			if err != nil {
				return fmt.Errorf("verify %s: %w", args[0], err)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "OK: %d record(s) of %s in checkpoint %d (root %x), signed by %s, time-stamped %s\n",
				len(v.Records), v.Origin, v.TreeSize, v.Root, v.Signer, v.StampTime.UTC().Format(time.RFC3339))
			if verbose {
				fmt.Fprintf(w, "stamp digest (openssl ts -verify -digest): %x\n", v.StampDigest)
				for _, s := range v.Records {
					r := s.Record
					fmt.Fprintf(w, "record %d: message %s side %s client %s -> %s /%s/%s user %q purpose %q status %d start %s\n",
						s.Index, r.GetMessageId(), r.GetSide(), r.GetClient(), r.GetTarget(), r.GetService(), r.GetMethod(),
						r.GetUserId(), r.GetPurpose(), r.GetStatusCode(), r.GetStartTime().AsTime().UTC().Format(time.RFC3339Nano))
				}
				fmt.Fprintf(w, "bodies checked: %d, record signatures checked: %d, without chain: %d\n", v.Bodies, v.RecordSignatures, v.UncheckedSignatures)
			}
			if tokenOut != "" {
				b, err := tokenOf(data)
				if err != nil {
					return err
				}
				if err := os.WriteFile(tokenOut, b, 0o600); err != nil {
					return fmt.Errorf("token out: %w", err)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&trust, "trust", "", "PEM trust bundle of the ecosystem (required)")
	cmd.Flags().StringVar(&tokenOut, "token-out", "", "also write the DER time-stamp token to this file")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "print the records and the stamp digest")
	_ = cmd.MarkFlagRequired("trust")
	return cmd
}

func newLedgerCheckCmd() *cobra.Command {
	var dataDir, trust, keyFile string
	var against []string
	cmd := &cobra.Command{
		Use:   "check --data DIR [--trust BUNDLE.pem] [--against FILE]...",
		Short: "Check the consistency of a ledger directory (fsck)",
		Long: `Check a whole ledger: every entry, the Merkle tree recomputed from the entries
against the stored one, the indexes, the bodies (decrypted with
--body-key-file), every checkpoint's root and signature, the consistency of
successive checkpoints, that no checkpoint covers records the ledger lost
(LEDGER_TRUNCATED), and with --trust every time-stamp token and that every
checkpoint's signer is certified by the ecosystem (SIGNER_UNTRUSTED).

A ledger restored from an older copy, or rewritten and signed again with the
node's key, is consistent in itself: only a checkpoint the ledger signed
before, kept elsewhere, shows it. Give such checkpoints with --against: an
evidence bundle exported earlier, or an archive file. The ledger must still
hold each one's tree; if it holds fewer records the check fails with
LEDGER_ROLLED_BACK, if its records up to that size differ with LEDGER_FORKED.

The node must be stopped (or check a copy). On a large ledger the progress
goes to stderr every few seconds. It exits non-zero naming what failed.`,
		Example: `  sild ledger check --data /var/lib/sild/node/ledger --trust ca.pem --body-key-file ledger.key
  sild ledger check --data /var/lib/sild/node/ledger --trust ca.pem --against m-1.bundle --against /archive/ledger-00000000000000000000.archive`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			roots, err := readTrust(trust)
			if err != nil {
				return err
			}
			var cps []*ledgerv1.SignedCheckpoint
			for _, f := range against {
				sc, err := readCheckpointFile(f)
				if err != nil {
					return err
				}
				cps = append(cps, sc)
			}
			l, err := openLedgerDir(dataDir, keyFile)
			if err != nil {
				return err
			}
			defer l.Close()
			start := time.Now()
			last := start
			rep, err := l.CheckWith(cmd.Context(), ledger.CheckOptions{Roots: roots, Against: cps,
				Progress: func(done, total uint64) {
					if now := time.Now(); now.Sub(last) >= progressInterval && total > 0 {
						last = now
						fmt.Fprintf(cmd.ErrOrStderr(), "checked %d of %d entries (%d%%, %s)\n", done, total, done*100/total, now.Sub(start).Round(time.Second))
					}
				}})
			if err != nil {
				var ve *ledger.VerifyError
				if errors.As(err, &ve) && ve.Item >= 0 && ve.Item < len(against) {
					return fmt.Errorf("check %s against %s: %s: %v", dataDir, against[ve.Item], ve.Reason, ve.Err)
				}
				return fmt.Errorf("check %s: %w", dataDir, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "OK: %s\n", rep)
			if len(cps) > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "OK: holds the tree of %d earlier checkpoint(s) given with --against\n", len(cps))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data", "", "ledger directory (required)")
	cmd.Flags().StringVar(&trust, "trust", "", "PEM trust bundle; verifies every time-stamp token and checkpoint signer")
	cmd.Flags().StringVar(&keyFile, "body-key-file", "", "AES-256 body key, to decrypt and check bodies")
	cmd.Flags().StringArrayVar(&against, "against", nil, "evidence bundle or archive file of this ledger, kept elsewhere: the ledger must still hold its checkpoint's tree (repeatable)")
	_ = cmd.MarkFlagRequired("data")
	return cmd
}

// progressInterval is how often a long ledger command reports progress.
var progressInterval = 2 * time.Second

// readCheckpointFile reads the signed checkpoint of an evidence bundle or
// of an archive file.
func readCheckpointFile(path string) (*ledgerv1.SignedCheckpoint, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--against: %w", err)
	}
	b := &ledgerv1.EvidenceBundle{}
	if proto.Unmarshal(data, b) == nil && b.GetVersion() == 1 && len(b.GetItems()) > 0 && b.GetCheckpoint() != nil {
		return b.GetCheckpoint(), nil
	}
	a := &ledgerv1.Archive{}
	if proto.Unmarshal(data, a) == nil && a.GetHeader() != nil && a.GetCheckpoint() != nil {
		return a.GetCheckpoint(), nil
	}
	return nil, fmt.Errorf("--against %s: neither an evidence bundle nor an archive file", path)
}

func tokenOf(bundle []byte) ([]byte, error) {
	b := &ledgerv1.EvidenceBundle{}
	if err := proto.Unmarshal(bundle, b); err != nil {
		return nil, fmt.Errorf("token out: %w", err)
	}
	t := b.GetCheckpoint().GetTimestampToken()
	if len(t) == 0 {
		return nil, errors.New("bundle has no time-stamp token")
	}
	return t, nil
}

func newLedgerArchiveCmd() *cobra.Command {
	var dataDir, out, beforeStr string
	var olderThan time.Duration
	cmd := &cobra.Command{
		Use:   "archive --data DIR --older-than 720h --out DIR",
		Short: "Move old records to hash-linked archive files and prune them",
		Long: `Move the oldest records (those that ended before the age limit and are
covered by a time-stamped checkpoint) into archive files in --out, then prune
them from the ledger. Each file (ledger-<first index>.archive) holds the
records as stored (bodies still encrypted), the time-stamped signed
checkpoint that covers them and each record's inclusion proof in it, and the
SHA-256 of the previous archive file, so the files form a chain that
'sild ledger verify-archive' checks offline. The tree's hashes stay in the
ledger: its root, new checkpoints and the proofs of the kept records are
unchanged; export of an archived message names its archive file, and
'sild ledger export-archived' writes its evidence bundle from that file.

Keep the archive files: they are the only copy of the pruned records. Each
file is reported on stderr as it is written (up to 50,000 records a file).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			before := time.Now().Add(-olderThan)
			if beforeStr != "" {
				t, err := time.Parse(time.RFC3339, beforeStr)
				if err != nil {
					return fmt.Errorf("--before: %w", err)
				}
				before = t
			} else if olderThan <= 0 {
				return errors.New("give --older-than (a positive duration, e.g. 720h) or --before")
			}
			// Each archive file written is logged to stderr as it is done:
			// the progress of a long run.
			progress := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			l, err := ledger.OpenReader(dataDir, nil, progress)
			if err != nil {
				return err
			}
			defer l.Close()
			infos, err := l.Archive(cmd.Context(), before, out)
			w := cmd.OutOrStdout()
			for _, a := range infos {
				fmt.Fprintf(w, "archived records %d to %d into %s (sha256 %x, checkpoint %d)\n", a.First, a.End-1, a.File, a.SHA256, a.CheckpointSize)
			}
			if err != nil {
				return err
			}
			if len(infos) == 0 {
				fmt.Fprintf(w, "nothing to archive before %s\n", before.UTC().Format(time.RFC3339))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data", "", "ledger directory (required)")
	cmd.Flags().StringVar(&out, "out", "", "directory of the archive files (required)")
	cmd.Flags().DurationVar(&olderThan, "older-than", 0, "archive records that ended longer ago than this (e.g. 720h)")
	cmd.Flags().StringVar(&beforeStr, "before", "", "archive records that ended before this RFC 3339 time (instead of --older-than)")
	for _, f := range []string{"data", "out"} {
		_ = cmd.MarkFlagRequired(f)
	}
	return cmd
}

func newLedgerVerifyArchiveCmd() *cobra.Command {
	var trust, prevHex, lastHex string
	cmd := &cobra.Command{
		Use:   "verify-archive FILE... --trust BUNDLE.pem",
		Short: "Check a chain of archive files offline",
		Long: `Check archive files offline against the ecosystem's trust bundle, oldest
first (the names sort in order, so ledger-*.archive will do): each file's
time-stamp token, checkpoint signature and signer, every record's inclusion
proof and index, and that each file links to the one before by SHA-256 and
record range. The first file must start at record 0 or, with --prev-sha256,
link to that hash. With --last-sha256 (as printed by 'sild ledger archive' or
'sild ledger check') the last file must have that hash, which also pins its
header. It exits non-zero naming what failed (e.g.
ARCHIVE_LINK_BROKEN, INCLUSION_PROOF_INVALID).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			roots, err := readTrust(trust)
			if err != nil {
				return err
			}
			var prev []byte
			if prevHex != "" {
				if prev, err = hex.DecodeString(prevHex); err != nil || len(prev) != 32 {
					return errors.New("--prev-sha256: want 64 hex characters")
				}
			}
			files := make([][]byte, len(args))
			for i, a := range args {
				if files[i], err = os.ReadFile(a); err != nil {
					return fmt.Errorf("verify-archive: %w", err)
				}
			}
			w := cmd.OutOrStdout()
			var first *ledger.ArchiveVerified
			if first, err = ledger.VerifyArchive(files[0], prev, roots); err != nil {
				return fmt.Errorf("verify-archive %s: %w", args[0], err)
			}
			if prev == nil && first.Header.GetFirstIndex() != 0 {
				return fmt.Errorf("verify-archive %s: starts at record %d; give the earlier files or --prev-sha256", args[0], first.Header.GetFirstIndex())
			}
			vs, err := ledger.VerifyArchiveChain(files, roots)
			if err != nil {
				return fmt.Errorf("verify-archive: %w (files: %v)", err, args)
			}
			if lastHex != "" {
				if got := hex.EncodeToString(vs[len(vs)-1].SHA256); got != strings.ToLower(lastHex) {
					return fmt.Errorf("verify-archive %s: %s: sha256 %s, want %s", args[len(args)-1], ledger.ReasonArchiveLink, got, lastHex)
				}
			}
			for i, v := range vs {
				fmt.Fprintf(w, "OK: %s: records %d to %d of %s in checkpoint %d, signed by %s, time-stamped %s, sha256 %x\n",
					args[i], v.Header.GetFirstIndex(), v.Header.GetEndIndex()-1, v.Origin, v.TreeSize, v.Signer,
					v.StampTime.UTC().Format(time.RFC3339), v.SHA256)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&trust, "trust", "", "PEM trust bundle of the ecosystem (required)")
	cmd.Flags().StringVar(&prevHex, "prev-sha256", "", "SHA-256 (hex) of the archive before the first file given")
	cmd.Flags().StringVar(&lastHex, "last-sha256", "", "SHA-256 (hex) the last file given must have")
	_ = cmd.MarkFlagRequired("trust")
	return cmd
}

func newLedgerExportArchivedCmd() *cobra.Command {
	var archive, msgID, out, keyFile string
	cmd := &cobra.Command{
		Use:   "export-archived --archive FILE --message-id ID -o FILE",
		Short: "Write the evidence bundle of an archived message from its archive file",
		Long: `Write the evidence bundle of a message whose records were archived (export
names the archive file): the records from the archive with their inclusion
proofs in the archive's time-stamped checkpoint, and the bodies decrypted
with --body-key-file. Check it with 'sild ledger verify'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := readBodyKey(keyFile)
			if err != nil {
				return err
			}
			data, err := os.ReadFile(archive)
			if err != nil {
				return fmt.Errorf("export-archived: %w", err)
			}
			b, err := ledger.ExportArchived(data, msgID, key)
			if err != nil {
				return fmt.Errorf("%s: %w", archive, err)
			}
			raw, err := proto.Marshal(b)
			if err != nil {
				return fmt.Errorf("export-archived: %w", err)
			}
			if err := os.WriteFile(out, raw, 0o600); err != nil {
				return fmt.Errorf("export-archived: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: %d record(s)\n", out, len(b.GetItems()))
			return nil
		},
	}
	cmd.Flags().StringVar(&archive, "archive", "", "archive file (required)")
	cmd.Flags().StringVar(&msgID, "message-id", "", "message id to export (required)")
	cmd.Flags().StringVarP(&out, "output", "o", "", "bundle file to write (required)")
	cmd.Flags().StringVar(&keyFile, "body-key-file", "", "AES-256 body key (32 bytes or 64 hex characters); without it bodies are left out")
	for _, f := range []string{"archive", "message-id", "output"} {
		_ = cmd.MarkFlagRequired(f)
	}
	return cmd
}
