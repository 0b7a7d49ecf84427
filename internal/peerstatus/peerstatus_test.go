package peerstatus

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func dial(t *testing.T, addr string) healthpb.HealthClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), DialOption)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return healthpb.NewHealthClient(cc)
}

// A status the server sent sets the flag; one grpc made up (no server
// there) does not, though both are errors.
func TestWatch(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c := dial(t, lis.Addr().String())
	wctx, sent := Watch(ctx)
	if _, err := c.Check(wctx, &healthpb.HealthCheckRequest{Service: "unknown"}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown service: %v", err)
	}
	if !sent.Load() {
		t.Fatal("the server's NOT_FOUND was not seen as sent")
	}
	wctx, sent = Watch(ctx)
	if _, err := c.Check(wctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if !sent.Load() {
		t.Fatal("the server's OK was not seen as sent")
	}

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := closed.Addr().String()
	_ = closed.Close()
	wctx, sent = Watch(ctx)
	if _, err := dial(t, addr).Check(wctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("no server: %v", err)
	}
	if sent.Load() {
		t.Fatal("grpc's own UNAVAILABLE was seen as the server's")
	}
}
