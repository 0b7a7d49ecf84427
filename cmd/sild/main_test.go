package main

import (
	"bytes"
	"strings"
	"testing"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestVersion(t *testing.T) {
	out, err := run(t, "version")
	if err != nil || !strings.HasPrefix(out, "sild ") {
		t.Fatalf("version: %q, %v", out, err)
	}
	if _, err := run(t, "version", "extra"); err == nil {
		t.Fatal("version accepted an argument")
	}
}

func TestHelpListsCommands(t *testing.T) {
	out, err := run(t, "--help")
	if err != nil || !strings.Contains(out, "version") {
		t.Fatalf("--help: %q, %v", out, err)
	}
}
