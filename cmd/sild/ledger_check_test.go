package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLedgerCheckCommand: check names a directory without a ledger instead
// of creating one, reports progress, and with --against names the file
// whose checkpoint the ledger does not hold.
func TestLedgerCheckCommand(t *testing.T) {
	dir := t.TempDir()
	trust, _ := makeLedger(t, dir)
	data := filepath.Join(dir, "ledger")
	bundle := filepath.Join(dir, "m-3.bundle")
	if out, err := run(t, "ledger", "export", "--data", data, "--message-id", "m-3", "-o", bundle); err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}

	missing := filepath.Join(dir, "typo")
	if out, err := run(t, "ledger", "check", "--data", missing); err == nil || !strings.Contains(err.Error(), "no ledger") {
		t.Fatalf("check of a missing directory: %v\n%s", err, out)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Fatal("check created the missing directory")
	}

	defer func(d time.Duration) { progressInterval = d }(progressInterval)
	progressInterval = 0
	out, err := run(t, "ledger", "check", "--data", data, "--trust", trust, "--against", bundle)
	if err != nil || !strings.Contains(out, "checked 3 of 3 entries") || !strings.Contains(out, "holds the tree of 1 earlier checkpoint") {
		t.Fatalf("check --against its own bundle: %v\n%s", err, out)
	}

	// Another ledger of the same origin (a rewritten history): its bundle's
	// checkpoint is not this ledger's tree.
	other := t.TempDir()
	makeLedger(t, other)
	foreign := filepath.Join(other, "m-3.bundle")
	if out, err := run(t, "ledger", "export", "--data", filepath.Join(other, "ledger"), "--message-id", "m-3", "-o", foreign); err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	_, err = run(t, "ledger", "check", "--data", data, "--against", foreign)
	if err == nil || !strings.Contains(err.Error(), "LEDGER_FORKED") || !strings.Contains(err.Error(), foreign) {
		t.Fatalf("check against a rewritten history: %v", err)
	}
	if _, err := run(t, "ledger", "check", "--data", data, "--against", trust); err == nil || !strings.Contains(err.Error(), "neither an evidence bundle nor an archive") {
		t.Fatalf("--against a PEM file: %v", err)
	}
}
