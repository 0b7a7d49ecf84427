package descset

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/reflection"
)

type backend struct {
	testpb.UnimplementedTestServiceServer
}

func TestFromReflection(t *testing.T) {
	s := grpc.NewServer()
	testpb.RegisterTestServiceServer(s, backend{})
	reflection.Register(s)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go s.Serve(ln)
	defer s.Stop()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	raw, err := FromReflection(ctx, conn, "grpc.testing.TestService")
	if err != nil {
		t.Fatal(err)
	}
	sd, err := Service(raw, "grpc.testing.TestService")
	if err != nil {
		t.Fatal(err)
	}
	if sd.Methods().ByName("UnaryCall") == nil {
		t.Fatal("UnaryCall missing")
	}
	if _, err := FromReflection(ctx, conn, "no.such.Service"); err == nil {
		t.Fatal("unknown service reflected")
	}
	if _, err := Service(raw, "grpc.testing.SimpleRequest"); err == nil {
		t.Fatal("a message accepted as a service")
	}
	if _, err := Parse([]byte("garbage")); err == nil {
		t.Fatal("garbage parsed")
	}
}

func FuzzService(f *testing.F) {
	f.Add([]byte{}, "a.B")
	f.Fuzz(func(t *testing.T, raw []byte, name string) {
		_, _ = Service(raw, name) // must not panic
	})
}
