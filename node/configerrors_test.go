package node_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sildmesh/sild/node"
)

// TestConfigErrorsNameTheKey: every Validate error is a *node.FieldError
// naming the YAML key, which the CLI turns into the flag to use.
func TestConfigErrorsNameTheKey(t *testing.T) {
	base := node.DefaultConfig()
	base.Node, base.DataDir, base.Registry = "EE/GOV/1/ss1", t.TempDir(), "127.0.0.1:1"
	cases := []struct {
		key    string
		mutate func(*node.Config)
	}{
		{"node", func(c *node.Config) { c.Node = "" }},
		{"data_dir", func(c *node.Config) { c.DataDir = "" }},
		{"registry", func(c *node.Config) { c.Registry = "" }},
		{"admin_listen", func(c *node.Config) { c.AdminListen = "9443" }},
		{"subsystems[1].backend", func(c *node.Config) {
			c.Subsystems = []node.SubsystemConfig{{ID: "EE/GOV/1/a"}, {ID: "EE/GOV/1/b", Backend: "nope"}}
		}},
		{"subsystems[0].body", func(c *node.Config) { c.Subsystems = []node.SubsystemConfig{{ID: "EE/GOV/1/a", Body: "all"}} }},
		{"admin_keys[0].role", func(c *node.Config) {
			c.AdminKeys = []node.AdminKey{{Hash: "sha256:" + strings.Repeat("0", 64), Role: "root"}}
		}},
		{"consumer_tls", func(c *node.Config) { c.ConsumerTLS = &node.ConsumerTLS{KeyFile: "k"} }},
		{"max_unstamped", func(c *node.Config) { c.MaxUnstamped = -time.Second }},
		{"ledger_retention", func(c *node.Config) { c.LedgerRetention = -time.Second }},
		{"renew_before", func(c *node.Config) { c.RenewBefore = -time.Second }},
		{"batch_delay", func(c *node.Config) { c.BatchDelay = 2 * time.Second }},
	}
	for _, tc := range cases {
		t.Run(tc.key, func(t *testing.T) {
			cfg := base
			tc.mutate(&cfg)
			err := cfg.Validate()
			var fe *node.FieldError
			if !errors.As(err, &fe) || fe.Key != tc.key || !strings.HasPrefix(err.Error(), tc.key+": ") {
				t.Fatalf("got %v (%T), want a FieldError for %s", err, err, tc.key)
			}
		})
	}
}

// TestLoadEmptyConfig: an empty file (or one of comments only) is named as
// such, not as YAML's EOF.
func TestLoadEmptyConfig(t *testing.T) {
	for name, content := range map[string]string{"empty": "", "comments only": "# node: EE/GOV/1/ss1\n\n"} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "node.yaml")
			if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := node.LoadConfig(p)
			if err == nil || !strings.Contains(err.Error(), p+": the file is empty") || strings.Contains(err.Error(), "EOF") {
				t.Fatalf("got %v", err)
			}
		})
	}
}
