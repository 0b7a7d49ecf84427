package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sildmesh/sild/internal/rpcerr"
)

// The provider's operator manages its node's access rights with
// `sild ctl access`, and the mesh obeys them.
func TestCtlAccessOnRunningNode(t *testing.T) {
	clearSildEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := startEchoPair(t, ctx)
	p := e.p
	call := func() error { return e.call("") }

	keyFile := filepath.Join(t.TempDir(), "admin.key")
	if err := os.WriteFile(keyFile, []byte(p.Provider.AdminKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SILD_NODE_ADMIN", p.Provider.AdminAddr()) // the environment works as the flag
	access := func(args ...string) (string, error) {
		out, errOut, err := runCmd(ctx, append([]string{"ctl", "access", "--api-key-file", keyFile}, args...)...)
		if err != nil {
			return out + errOut, err
		}
		return out, nil
	}
	client, svc := p.Client.String(), p.Service.String()

	out, err := access("list")
	if err != nil || !strings.Contains(out, client) || !strings.Contains(out, svc) || !strings.Contains(out, "*") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if out, err := access("revoke", client, svc); err != nil || !strings.Contains(out, "revoked") {
		t.Fatalf("revoke: %v\n%s", err, out)
	}
	if err := call(); rpcerr.Reason(err) != rpcerr.ReasonAccessDenied {
		t.Fatalf("call after revoke: %v", err)
	}
	if out, err := access("grant", client, svc, "--method", "UnaryCall"); err != nil || !strings.Contains(out, "granted") {
		t.Fatalf("grant one method: %v\n%s", err, out)
	}
	if out, err := access("grant", client, svc, "--method", "UnaryCall"); err != nil || !strings.Contains(out, "granted already") {
		t.Fatalf("grant again: %v\n%s", err, out)
	}
	if err := call(); err != nil {
		t.Fatalf("call after grant: %v", err)
	}
	out, err = access("list", "--client", client, "-o", "json")
	if err != nil || !strings.Contains(out, `"methodName": "UnaryCall"`) {
		t.Fatalf("list json: %v\n%s", err, out)
	}
	if out, err := access("list", "--service", "EE/GOV/70000310/service/other.Service"); err != nil || strings.Contains(out, client) {
		t.Fatalf("list filtered to another service: %v\n%s", err, out)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"grant", "not-a-client", svc}, "client \"not-a-client\""},
		{[]string{"grant", client, "EE/GOV/1"}, "service \"EE/GOV/1\""},
		{[]string{"revoke", client, svc}, "NOT_FOUND"}, // only the per-method right exists
		{[]string{"list", "--api-key", "wrong", "--api-key-file", ""}, "UNAUTHENTICATED"},
		{[]string{"list", "-o", "yaml"}, "must be table or json"},
	} {
		if out, err := access(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q\n%s", tc.args, err, tc.want, out)
		}
	}
	t.Setenv("SILD_NODE_ADMIN", "")
	if _, err := access("list"); err == nil || !strings.Contains(err.Error(), "--node-admin: required") {
		t.Errorf("without --node-admin: %v", err)
	}
}
