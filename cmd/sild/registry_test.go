package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/registry"
	"github.com/sildmesh/sild/registry/registrytest"
)

func TestRegistryFlagErrors(t *testing.T) {
	clearSildEnv(t)
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	boot := []string{"registry", "--bootstrap", "--id", "r1", "--instance", "EE", "--trust-domain", "ee.sild.test", "--data", dir}
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{"no id", []string{"registry", "--bootstrap", "--data", dir}, nil, []string{"ServerID", "--id"}},
		{"bad id", []string{"registry", "--id", "a/b", "--data", dir}, nil, []string{"ServerID", "--id"}},
		{"no data", []string{"registry", "--id", "r1"}, nil, []string{"DataDir", "--data"}},
		{"bootstrap without instance", []string{"registry", "--bootstrap", "--id", "r1", "--data", dir}, nil, []string{"Instance", "--instance"}},
		{"bad trust domain", append(boot[:7:7], "bad domain!", "--data", dir), nil, []string{"TrustDomain", "--trust-domain"}},
		{"bootstrap and join", append(boot, "--join", "127.0.0.1:1"), nil, []string{"--bootstrap", "--join"}},
		{"join without token", []string{"registry", "--id", "r2", "--data", dir, "--join", "127.0.0.1:1"}, nil, []string{"--token", "--trust"}},
		{"unreadable trust", []string{"registry", "--id", "r2", "--data", dir, "--join", "127.0.0.1:1", "--token", "t", "--trust", filepath.Join(dir, "nope.pem")}, nil, []string{"--trust"}},
		{"junk trust", []string{"registry", "--id", "r2", "--data", dir, "--join", "127.0.0.1:1", "--token", "t", "--trust", junk}, nil, []string{"--trust", junk}},
		{"refresh longer than ttl", append(boot, "--config-ttl", "10m", "--config-refresh", "20m"), nil, []string{"--config-ttl", "--config-refresh"}},
		{"short svid ttl", append(boot, "--node-svid-ttl", "1s"), nil, []string{"NodeSVIDTTL", "--node-svid-ttl"}},
		{"bad duration", append(boot, "--config-ttl", "soon"), nil, []string{"config-ttl"}},
		{"bad log format", append(boot, "--log-format", "xml"), nil, []string{"--log-format", "text or json"}},
		{"bad log level", append(boot, "--log-level", "loud"), nil, []string{"--log-level"}},
		{"bad env", []string{"registry"}, map[string]string{"SILD_BOOTSTRAP": "maybe"}, []string{"SILD_BOOTSTRAP"}},
		{"env fills flags", []string{"registry", "--data", dir}, map[string]string{"SILD_ID": "r1", "SILD_BOOTSTRAP": "true"}, []string{"Instance", "--instance"}},
		{"stray argument", append(boot, "extra"), nil, []string{"unknown command"}},
		{"wildcard without advertise", append(boot, "--raft-listen", ":7401"), nil, []string{"--raft-listen", "wildcard", "--advertise-raft"}},
		{"wildcard ip without advertise", append(boot, "--api-listen", "0.0.0.0:7400"), nil, []string{"--api-listen", "--advertise-api"}},
		{"bad listen address", append(boot, "--http-listen", "nope"), nil, []string{"--http-listen"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, _, err := runCmd(ctx, tc.args...)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, registry.FileAdminKey)); err == nil {
		t.Fatal("a refused configuration created keys")
	}
}

// apiAttr finds the API address in the ready line, in text or JSON logs.
var apiAttr = regexp.MustCompile(`registry ready.*?\bapi\W+([0-9.]+:[0-9]+)`)

// startRegistryCmd runs `sild registry args...` in-process until the test
// ends and returns its API address once it logs that it is ready.
func startRegistryCmd(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan error, 1)
	go func() { done <- execute(ctx, &out, &errOut, append([]string{"registry"}, args...)...) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("sild registry returned %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("sild registry did not stop")
		}
	})
	var addr string
	registrytest.WaitFor(t, 30*time.Second, "sild registry ready", func() bool {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("sild registry stopped: %v\n%s", err, errOut.String())
		default:
		}
		if m := apiAttr.FindStringSubmatch(errOut.String()); m != nil {
			addr = m[1]
			return true
		}
		return false
	})
	return addr
}

func TestRegistryCommandBootstrapAndJoin(t *testing.T) {
	clearSildEnv(t)
	base := t.TempDir()
	d1, d2 := filepath.Join(base, "r1"), filepath.Join(base, "r2")
	api1 := startRegistryCmd(t, "--bootstrap", "--id", "r1", "--instance", "EE", "--trust-domain", "ee.sild.test",
		"--data", d1, "--api-listen", "127.0.0.1:0", "--raft-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
		"--log-format", "text", "--config-ttl", "30m", "--config-refresh", "5m")
	key, err := os.ReadFile(filepath.Join(d1, registry.FileAdminKey))
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(d1, registry.FileBundle)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t.Setenv("SILD_TRUST", bundle)
	t.Setenv("SILD_API_KEY", strings.TrimSpace(string(key)))

	token, _, err := runCmd(ctx, "ctl", "--registry", api1, "server", "token", "r2", "--voter")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SILD_TOKEN", strings.TrimSpace(token)) // the token through the environment
	api2 := startRegistryCmd(t, "--id", "r2", "--data", d2, "--join", api1, "--trust", bundle,
		"--api-listen", "127.0.0.1:0", "--raft-listen", "127.0.0.1:0", "--http-listen", "", "--log-format", "json")

	out, _, err := runCmd(ctx, "ctl", "--registry", api2, "raft", "status", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var st registryv1.RaftStatusResponse
	if err := protojson.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if st.GetServerId() != "r2" || st.GetLeaderId() != "r1" || len(st.GetServers()) != 2 {
		t.Fatalf("raft status from r2: %v", &st)
	}
	var g registryv1.GlobalConfig
	// Each server signs the configuration with its own --config-ttl.
	out, _, err = runCmd(ctx, "ctl", "--registry", api1, "config", "show", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if err := protojson.Unmarshal([]byte(out), &g); err != nil {
		t.Fatal(err)
	}
	if got := g.GetExpiresAt().AsTime().Sub(g.GetIssuedAt().AsTime()); got != 30*time.Minute {
		t.Fatalf("config lifetime %s, want the --config-ttl 30m", got)
	}
}
