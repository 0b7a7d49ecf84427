package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/sildmesh/sild/registry"
	"github.com/sildmesh/sild/registry/registrytest"
)

// TestCtlReadsLargeAnswers: with a catalogue near its limit, the
// configuration (which carries the catalogue twice), the catalogue and a
// backup are each larger than gRPC's default 4 MiB; sild ctl reads them.
func TestCtlReadsLargeAnswers(t *testing.T) {
	clearSildEnv(t)
	c := registrytest.Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bundle := filepath.Join(c.Servers[0].Dir, registry.FileBundle)
	ctl := func(args ...string) string {
		t.Helper()
		base := []string{"ctl", "--registry", c.Followers()[0].Srv.APIAddr(), "--trust", bundle, "--api-key", c.Admin}
		out, errOut, err := runCmd(ctx, append(base, args...)...)
		if err != nil {
			t.Fatalf("sild ctl %s: %v (stderr %q)", strings.Join(args, " "), err, errOut)
		}
		return out
	}
	ctl("member", "add", "EE/GOV/70000310")
	ctl("subsystem", "add", "EE/GOV/70000310/big")
	fd := &descriptorpb.FileDescriptorProto{
		Name: proto.String("big.proto"), Package: proto.String("big"), Syntax: proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{Name: proto.String("Req")}},
		Service: []*descriptorpb.ServiceDescriptorProto{{Name: proto.String("S"), Method: []*descriptorpb.MethodDescriptorProto{{
			Name: proto.String("M"), InputType: proto.String(".big.Req"), OutputType: proto.String(".big.Req"),
		}}}},
		SourceCodeInfo: &descriptorpb.SourceCodeInfo{Location: []*descriptorpb.SourceCodeInfo_Location{{
			Path: []int32{6, 0}, Span: []int32{1, 0, 1}, LeadingComments: proto.String(strings.Repeat("x", 5<<19)),
		}}},
	}
	set, err := proto.Marshal(&descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{fd}})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "big.binpb")
	if err := os.WriteFile(file, set, 0o600); err != nil {
		t.Fatal(err)
	}
	ctl("service", "publish", "EE/GOV/70000310/big/big.S", "--descriptor-set", file, "--enabled")

	registrytest.WaitFor(t, 30*time.Second, "the configuration with the service", func() bool {
		return strings.Contains(ctl("config", "show", "-o", "json"), "big.S")
	})
	if out := ctl("service", "list"); !strings.Contains(out, "EE/GOV/70000310/big/big.S") {
		t.Fatalf("service list: %q", out)
	}
	backup := filepath.Join(t.TempDir(), "ee.backup")
	ctl("backup", "--file", backup)
	if st, err := os.Stat(backup); err != nil || st.Size() < int64(len(set)) {
		t.Fatalf("backup file: %v, %v", st, err)
	}
}
