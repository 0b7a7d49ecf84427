package mesh

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	demov1 "github.com/sildmesh/sild/gen/sild/demo/v1"
)

func TestDescriptorSetResolves(t *testing.T) {
	raw := DescriptorSet(demov1.File_sild_demo_v1_business_proto, demov1.File_sild_demo_v1_tax_proto)
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(raw, &set); err != nil {
		t.Fatal(err)
	}
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		t.Fatalf("descriptor set does not resolve: %v", err)
	}
	for _, name := range []string{"sild.demo.v1.BusinessRegistryService", "sild.demo.v1.TaxBoardService"} {
		if _, err := files.FindDescriptorByName(protoreflect.FullName(name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestWaitFor(t *testing.T) {
	ctx := context.Background()
	n := 0
	if err := WaitFor(ctx, 5*time.Second, "third poll", func() bool { n++; return n == 3 }); err != nil || n != 3 {
		t.Fatalf("WaitFor: %v after %d polls", err, n)
	}
	if err := WaitFor(ctx, 50*time.Millisecond, "never", func() bool { return false }); err == nil || !strings.Contains(err.Error(), "never") {
		t.Fatalf("timeout: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := WaitFor(cctx, time.Minute, "cancelled", func() bool { return false }); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

func TestBackendAndCloseOrder(t *testing.T) {
	m := New(t.TempDir(), nil)
	var order []string
	m.OnClose(func() error { order = append(order, "first"); return nil })
	addr, err := m.StartBackend(func(s *grpc.Server) { healthpb.RegisterHealthServer(s, health.NewServer()) })
	if err != nil {
		t.Fatal(err)
	}
	m.OnClose(func() error { order = append(order, "last"); return errors.New("boom") })
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("backend: %v", err)
	}
	if err := m.Close(); err == nil || err.Error() != "boom" {
		t.Fatalf("Close: %v", err)
	}
	if strings.Join(order, " ") != "last first" {
		t.Fatalf("close order %v", order)
	}
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false)); err == nil {
		t.Fatal("backend still serving after Close")
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
