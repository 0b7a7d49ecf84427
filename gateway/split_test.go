package gateway_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sildmesh/sild/gateway"
)

// TestSplitListener serves gRPC and HTTP/1.1 on one port; a client that
// sends nothing does not hold up the others.
func TestSplitListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	grpcLn, httpLn := gateway.SplitListener(ln)
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(grpcLn)
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "rest "+r.URL.Path) })}
	go hs.Serve(httpLn)

	idle, err := net.Dial("tcp", ln.Addr().String()) // sends nothing
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	short, err := net.Dial("tcp", ln.Addr().String()) // a request shorter than the preface
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	io.WriteString(short, "GET / HTTP/1.0\r\n\r\n")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(dialInsecure(t, ln.Addr().String())).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC through the split listener: %v %v", resp, err)
	}
	a := call(t, "GET", "http://"+ln.Addr().String()+"/r1/x", "", "")
	if a.code != 200 || string(a.raw) != "rest /r1/x" {
		t.Fatalf("HTTP through the split listener: %d %s", a.code, a.raw)
	}
	b, err := io.ReadAll(short)
	if err != nil || len(b) < 12 || string(b[:12]) != "HTTP/1.0 200" {
		t.Fatalf("short request: %q %v", b, err)
	}

	// The REST side stops; gRPC goes on until it stops too, then ln is closed.
	hs.Close()
	if _, err := healthpb.NewHealthClient(dialInsecure(t, ln.Addr().String())).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("gRPC after the REST side closed: %v", err)
	}
	gs.Stop()
	if _, err := ln.Accept(); err == nil {
		t.Fatal("underlying listener still open")
	}
}
