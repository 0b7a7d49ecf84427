package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/registry/registrytest"
)

// TestNodeCommandErrors: sild node names what is wrong and where to set it:
// the flag of a key that has one, the --config file for one that has not.
func TestNodeCommandErrors(t *testing.T) {
	clearSildEnv(t)
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const base = "node: EE/GOV/1/ss1\nregistry: 127.0.0.1:1\n"
	data := filepath.Join(dir, "data")
	loopback := []string{"--consumer-listen", "127.0.0.1:0", "--exchange-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}
	firstStart := slices.Concat([]string{"node", "--node", "EE/GOV/1/ss1", "--registry", "127.0.0.1:1", "--data", data}, loopback)
	cases := []struct {
		name      string
		args      []string
		want, not []string
	}{
		{"empty file", []string{"node", "--config", file("empty.yaml", "")}, []string{"empty.yaml", "the file is empty"}, []string{"EOF"}},
		{"no data_dir", []string{"node", "--config", file("nodata.yaml", base)},
			[]string{"data_dir: required", "--data", "SILD_NODE_DATA"}, []string{"flag of that name"}},
		{"bad node flag", []string{"node", "--config", file("ok.yaml", base+"data_dir: "+data+"\n"), "--node", "EE/GOV"},
			[]string{"node: ", "--node"}, nil},
		{"bad subsystem flag", []string{"node", "--config", file("ok.yaml", base+"data_dir: "+data+"\n"), "--subsystem", "EE/GOV/1/a=nope"},
			[]string{"subsystems[0].backend", "--subsystem"}, nil},
		{"bad admin key", []string{"node", "--config", file("key.yaml", base+"data_dir: "+data+"\nadmin_keys:\n  - hash: abc\n    role: admin\n")},
			[]string{"admin_keys[0].hash", "it has no flag: set admin_keys[0].hash in the --config file"}, []string{"flag of that name", "--admin"}},
		{"negative renew_before", []string{"node", "--config", file("renew.yaml", base+"data_dir: "+data+"\nrenew_before: -1h\n")},
			[]string{"renew_before: must not be negative", "it has no flag"}, nil},
		{"first start without trust bundle", slices.Concat(firstStart, []string{"--token", "t"}),
			[]string{"trust_bundle: required on the first start", "--trust", "SILD_NODE_TRUST"}, []string{"open :"}},
		{"first start without token", slices.Concat(firstStart, []string{"--trust", filepath.Join(dir, "bundle.pem")}),
			[]string{"join_token: required on the first start", "sild ctl node token EE/GOV/1/ss1", "--token", "SILD_NODE_TOKEN"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, _, err := runCmd(ctx, tc.args...)
			if err == nil {
				t.Fatal("accepted")
			}
			t.Log(err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			for _, w := range tc.not {
				if strings.Contains(err.Error(), w) {
					t.Errorf("error %q has %q", err, w)
				}
			}
		})
	}
	if _, err := os.Stat(filepath.Join(data, "svid.key")); err == nil {
		t.Fatal("a refused start left keys behind")
	}
}

var nodeAdminAttr = regexp.MustCompile(`node running.*\badmin=([0-9.]+:[0-9]+)`)

// TestNodeCommandEnvironment: every flag of sild node can be given as
// SILD_NODE_<FLAG> (a flag on the command line wins), and the SILD_ variables
// of sild ctl do not steer a node.
func TestNodeCommandEnvironment(t *testing.T) {
	clearSildEnv(t)
	c := registrytest.Start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	self, _ := ident.ParseNode("EE/GOV/70000310/ss1")
	data := t.TempDir()
	for k, v := range map[string]string{
		"SILD_NODE_NODE":            self.String(),
		"SILD_NODE_REGISTRY":        c.Live()[0].Srv.APIAddr(),
		"SILD_NODE_TRUST":           c.BundleFile(),
		"SILD_NODE_TOKEN":           c.NodeToken(ctx, self),
		"SILD_NODE_DATA":            data,
		"SILD_NODE_CONSUMER_LISTEN": "127.0.0.1:0",
		"SILD_NODE_EXCHANGE_LISTEN": "127.0.0.1:0",
		"SILD_NODE_ADMIN_LISTEN":    "127.0.0.1:0",
		"SILD_NODE_SUBSYSTEM":       "EE/GOV/70000310/licensing",
		"SILD_NODE_LOG_FORMAT":      "xml", // overridden by the flag below
		"SILD_REGISTRY":             "127.0.0.1:1",
		"SILD_TRUST":                filepath.Join(data, "none.pem"),
	} {
		t.Setenv(k, v)
	}
	runCtx, stop := context.WithCancel(ctx)
	var out, errOut syncBuffer
	done := make(chan error, 1)
	go func() { done <- execute(runCtx, &out, &errOut, "node", "--log-format", "text") }()
	defer func() {
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("sild node: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("sild node did not stop")
		}
	}()
	var admin string
	registrytest.WaitFor(t, 30*time.Second, "node running", func() bool {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("sild node stopped: %v\n%s", err, errOut.String())
		default:
		}
		if m := nodeAdminAttr.FindStringSubmatch(errOut.String()); m != nil {
			admin = m[1]
			return true
		}
		return false
	})
	registrytest.WaitFor(t, 30*time.Second, "node ready", func() bool {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if _, err := os.Stat(filepath.Join(data, "svid.crt")); err != nil {
		t.Fatalf("identity not in SILD_NODE_DATA: %v", err)
	}
}
