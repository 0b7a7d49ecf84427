package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/descset"
	"github.com/sildmesh/sild/internal/mesh"
	"github.com/sildmesh/sild/node/envelope"
)

type unaryEcho struct {
	testpb.UnimplementedTestServiceServer
}

func (unaryEcho) UnaryCall(_ context.Context, r *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Payload: r.GetPayload()}, nil
}

// echoPair is a registry and a consumer and provider node pair serving
// unaryEcho, granted to the pair's client; startEchoPair returns once a call
// goes through.
type echoPair struct {
	m *mesh.Mesh
	r *mesh.Registry
	p *mesh.Pair
	// call makes a unary call through the pair with message id msgID (none
	// if empty) and the metadata pairs kv.
	call func(msgID string, kv ...string) error
}

func startEchoPair(t *testing.T, ctx context.Context) *echoPair {
	t.Helper()
	m := mesh.New(t.TempDir(), nil)
	t.Cleanup(func() { _ = m.Close() })
	r, err := m.StartRegistry(ctx, mesh.RegistryOptions{Instance: "EE", TrustDomain: "ee.sild.test"})
	if err != nil {
		t.Fatal(err)
	}
	member, _ := ident.ParseMember("EE/GOV/70000310")
	p, err := m.StartPair(ctx, r, mesh.PairOptions{Member: member, Service: "grpc.testing.TestService",
		DescriptorSet: descset.Of(testpb.File_grpc_testing_test_proto),
		Register:      func(s *grpc.Server) { testpb.RegisterTestServiceServer(s, unaryEcho{}) }})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := p.Consumer.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	call := func(msgID string, kv ...string) error {
		kv = append([]string{envelope.HeaderClient, p.Client.String(), envelope.HeaderTarget, p.Target.String()}, kv...)
		if msgID != "" {
			kv = append(kv, envelope.HeaderMessageID, msgID)
		}
		_, err := testpb.NewTestServiceClient(conn).UnaryCall(metadata.AppendToOutgoingContext(ctx, kv...), &testpb.SimpleRequest{})
		return err
	}
	if err := mesh.WaitFor(ctx, 20*time.Second, "the grant in force", func() bool { return call("") == nil }); err != nil {
		t.Fatal(err)
	}
	return &echoPair{m: m, r: r, p: p, call: call}
}

// An operator exports evidence from a running node with the CLI and
// verifies it offline.
func TestLedgerExportFromRunningNode(t *testing.T) {
	clearSildEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := startEchoPair(t, ctx)
	r, p := e.r, e.p
	if err := e.call("cli-export-1"); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	keyFile, bundle := filepath.Join(dir, "admin.key"), filepath.Join(dir, "cli-export-1.bundle")
	if err := os.WriteFile(keyFile, []byte(p.Consumer.AdminKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	export := []string{"ledger", "export", "--node-admin", p.Consumer.AdminAddr(), "--api-key-file", keyFile,
		"--message-id", "cli-export-1", "-o", bundle}
	if err := mesh.WaitFor(ctx, 30*time.Second, "a time-stamped export", func() bool {
		_, errOut, err := runCmd(ctx, export...)
		return err == nil && !strings.Contains(errOut, "not time-stamped")
	}); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := runCmd(ctx, "ledger", "verify", bundle, "--trust", r.BundleFile)
	if err != nil || !strings.HasPrefix(out, "OK: 1 record(s)") {
		t.Fatalf("verify: %v\n%s%s", err, out, errOut)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ledger", "export", "--message-id", "x", "-o", bundle}, "give one of --data"},
		{[]string{"ledger", "export", "--data", dir, "--node-admin", "127.0.0.1:1", "--message-id", "x", "-o", bundle}, "give one of --data"},
		{[]string{"ledger", "export", "--data", dir, "--bodies", "--message-id", "x", "-o", bundle}, "--bodies goes with --node-admin"},
		{[]string{"ledger", "export", "--node-admin", p.Consumer.AdminAddr(), "--message-id", "x", "-o", bundle}, "no API key"},
		{append(export[:len(export)-4:len(export)-4], "--message-id", "no-such-id", "-o", bundle), "NOT_FOUND"},
		{[]string{"ledger", "export", "--node-admin", p.Consumer.AdminAddr(), "--api-key", "wrong", "--message-id", "x", "-o", bundle}, "UNAUTHENTICATED"},
	} {
		if _, _, err := runCmd(ctx, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}
