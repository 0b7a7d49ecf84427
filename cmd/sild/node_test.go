package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sildmesh/sild/node"
)

func TestNodeConfigFileAndFlags(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "node.yaml")
	os.WriteFile(file, []byte("node: EE/GOV/1/ss1\nregistry: 127.0.0.1:7400\ndata_dir: "+dir+"\nsubsystems:\n  - id: EE/GOV/1/a\n    backend: 127.0.0.1:9000\n"), 0o600)
	o := &nodeOptions{cfg: node.DefaultConfig()}
	cmd := nodeCmd(o)
	if err := cmd.ParseFlags([]string{"--config", file, "--registry", "127.0.0.1:7500", "--subsystem", "EE/GOV/1/b"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := o.config(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Registry != "127.0.0.1:7500" || cfg.Node != "EE/GOV/1/ss1" || len(cfg.Subsystems) != 2 || cfg.Subsystems[1].ID != "EE/GOV/1/b" {
		t.Fatalf("merged config: %+v", cfg)
	}
	o = &nodeOptions{cfg: node.DefaultConfig()}
	cmd = nodeCmd(o)
	cmd.ParseFlags([]string{"--config", file, "--node", "EE/GOV"})
	if _, err := o.config(cmd); err == nil || !strings.Contains(err.Error(), "node:") {
		t.Fatalf("bad --node: %v", err)
	}
}
