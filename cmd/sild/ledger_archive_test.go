package main

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLedgerArchiveCommands(t *testing.T) {
	dir := t.TempDir()
	trust, keyFile := makeLedger(t, dir)
	data := filepath.Join(dir, "ledger")
	adir := filepath.Join(dir, "archive")

	out, err := run(t, "ledger", "archive", "--data", data, "--older-than", "720h", "--out", adir)
	if err != nil || !strings.Contains(out, "nothing to archive") {
		t.Fatalf("archive of young records: %v\n%s", err, out)
	}
	if _, err := run(t, "ledger", "archive", "--data", data, "--out", adir); err == nil {
		t.Fatal("archive without an age succeeded")
	}
	out, err = run(t, "ledger", "archive", "--data", data, "--before", "2100-01-01T00:00:00Z", "--out", adir)
	file := filepath.Join(adir, "ledger-00000000000000000000.archive")
	if err != nil || !strings.Contains(out, "archived records 0 to 2 into "+file) {
		t.Fatalf("archive: %v\n%s", err, out)
	}
	if !strings.Contains(out, "ledger archived") || !strings.Contains(out, "file="+file) {
		t.Fatalf("no progress line for the archive file written:\n%s", out)
	}
	out, err = run(t, "ledger", "check", "--data", data, "--trust", trust, "--body-key-file", keyFile)
	if err != nil || !strings.Contains(out, "OK: 3 entries, 0 bodies") || !strings.Contains(out, "3 archived") {
		t.Fatalf("check after archiving: %v\n%s", err, out)
	}
	_, err = run(t, "ledger", "export", "--data", data, "--message-id", "m-2", "-o", filepath.Join(dir, "x.bundle"))
	if err == nil || !strings.Contains(err.Error(), "archived to ledger-00000000000000000000.archive") {
		t.Fatalf("export of an archived record: %v", err)
	}
	out, err = run(t, "ledger", "verify-archive", file, "--trust", trust)
	if err != nil || !strings.Contains(out, "OK: "+file+": records 0 to 2 of EE/GOV/1/ss1") {
		t.Fatalf("verify-archive: %v\n%s", err, out)
	}

	sum := sha256.Sum256(mustRead(t, file))
	if !strings.Contains(out, hex.EncodeToString(sum[:])) {
		t.Fatalf("no sha256 in\n%s", out)
	}
	if _, err := run(t, "ledger", "verify-archive", file, "--trust", trust, "--last-sha256", hex.EncodeToString(sum[:])); err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, "ledger", "verify-archive", file, "--trust", trust, "--last-sha256", strings.Repeat("00", 32)); err == nil || !strings.Contains(err.Error(), "ARCHIVE_LINK_BROKEN") {
		t.Fatalf("wrong last hash: %v", err)
	}

	// The evidence of an archived message, from its archive.
	bundle := filepath.Join(dir, "m-2.bundle")
	out, err = run(t, "ledger", "export-archived", "--archive", file, "--message-id", "m-2", "-o", bundle, "--body-key-file", keyFile)
	if err != nil || !strings.Contains(out, "1 record(s)") {
		t.Fatalf("export-archived: %v\n%s", err, out)
	}
	out, err = run(t, "ledger", "verify", bundle, "--trust", trust, "-v")
	if err != nil || !strings.Contains(out, "message m-2") || !strings.Contains(out, "bodies checked: 1") {
		t.Fatalf("verify of the archived bundle: %v\n%s", err, out)
	}

	raw, _ := os.ReadFile(file)
	i := strings.Index(string(raw), "m-2")
	raw[i] ^= 1
	bad := filepath.Join(dir, "bad.archive")
	_ = os.WriteFile(bad, raw, 0o600)
	if _, err := run(t, "ledger", "verify-archive", bad, "--trust", trust); err == nil || !strings.Contains(err.Error(), "INCLUSION_PROOF_INVALID") {
		t.Fatalf("tampered archive: %v", err)
	}
	if _, err := run(t, "ledger", "verify-archive", file, "--trust", trust, "--prev-sha256", strings.Repeat("ab", 32)); err == nil || !strings.Contains(err.Error(), "ARCHIVE_LINK_BROKEN") {
		t.Fatalf("wrong previous hash: %v", err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
