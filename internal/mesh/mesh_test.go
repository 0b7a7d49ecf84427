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
)

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
