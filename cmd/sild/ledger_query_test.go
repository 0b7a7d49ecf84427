package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An auditor asks a node's ledger who called on behalf of a user, what a
// client called and who called a service, from the running node and from
// its directory once stopped.
func TestLedgerQuery(t *testing.T) {
	clearSildEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := startEchoPair(t, ctx)
	for _, c := range []struct{ id, user string }{{"q-1", "EE38001085718"}, {"q-2", "EE49002124277"}, {"q-3", "EE38001085718"}} {
		if err := e.call(c.id, "sild-user-id", c.user, "sild-purpose", "audit "+c.id); err != nil {
			t.Fatal(err)
		}
	}
	keyFile := filepath.Join(t.TempDir(), "reader.key")
	if err := os.WriteFile(keyFile, []byte(e.p.Provider.AdminKey), 0o600); err != nil {
		t.Fatal(err)
	}
	query := func(args ...string) (string, error) {
		out, errOut, err := runCmd(ctx, append([]string{"ledger", "query"}, args...)...)
		return out + errOut, err
	}
	live := []string{"--node-admin", e.p.Provider.AdminAddr(), "--api-key-file", keyFile}

	out, err := query(append(live, "--user", "EE38001085718")...)
	if err != nil || strings.Count(out, "\n") != 3 || !strings.Contains(out, "q-1") || !strings.Contains(out, "q-3") ||
		strings.Contains(out, "q-2") || !strings.Contains(out, "audit q-1") || !strings.Contains(out, "provider") {
		t.Fatalf("by user: %v\n%s", err, out)
	}
	if strings.Index(out, "q-1") > strings.Index(out, "q-3") {
		t.Errorf("not oldest first:\n%s", out)
	}
	if out, err := query(append(live, "--client", e.p.Client.String())...); err != nil || !strings.Contains(out, "q-2") || strings.Count(out, "\n") < 5 {
		t.Fatalf("by client: %v\n%s", err, out)
	}
	out, err = query(append(live, "--service", e.p.Service.String(), "-o", "json")...)
	if err != nil || !strings.Contains(out, `"@type": "type.googleapis.com/sild.ledger.v1.Record"`) || !strings.Contains(out, `"messageId": "q-2"`) {
		t.Fatalf("by service, JSON: %v\n%s", err, out)
	}
	if out, err := query(append(live, "--user", "EE38001085718", "--limit", "1")...); err != nil || !strings.Contains(out, "q-1") || strings.Contains(out, "q-3") || !strings.Contains(out, "more records matched") {
		t.Fatalf("limit 1: %v\n%s", err, out)
	}
	if out, err := query(append(live, "--user", "EE38001085718", "--from", time.Now().Add(time.Hour).Format(time.RFC3339))...); err != nil || strings.Contains(out, "q-") {
		t.Fatalf("from the future: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{live, "give one of --client, --service and --user"},
		{append(live, "--user", "u", "--client", e.p.Client.String()), "give one of --client"},
		{append(live, "--user", "u", "--from", "yesterday"), "--from: want an RFC 3339 time"},
		{append(live, "--user", "u", "--limit", "5000"), "limit: at most 1000"},
		{append(live, "--user", "u", "--from", "2026-11-23T10:00:00Z", "--to", "2026-11-23T09:00:00Z"), "from: must be before to"},
		{[]string{"--user", "u"}, "give one of --data"},
		{append(live, "--user", "u", "-o", "xml"), "must be table or json"},
	} {
		if out, err := query(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q\n%s", tc.args, err, tc.want, out)
		}
	}

	// The same from the directory of the stopped node.
	if err := e.m.Close(); err != nil {
		t.Fatal(err)
	}
	out, err = query("--data", filepath.Join(e.p.Provider.Dir, "ledger"), "--user", "EE38001085718")
	if err != nil || strings.Count(out, "\n") != 3 || !strings.Contains(out, "q-3") {
		t.Fatalf("from the directory: %v\n%s", err, out)
	}
}
