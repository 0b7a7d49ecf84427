package descset

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/reflection"
	v1alphagrpc "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
)

type backend struct {
	testpb.UnimplementedTestServiceServer
}

// startBackend serves the test service on loopback with register's kind
// of server reflection and returns a connection to it.
func startBackend(t *testing.T, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	s := grpc.NewServer()
	testpb.RegisterTestServiceServer(s, backend{})
	register(s)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestFromReflection(t *testing.T) {
	// What the backend was compiled with.
	wantSet := &descriptorpb.FileDescriptorSet{}
	if err := proto.Unmarshal(Of(testpb.File_grpc_testing_test_proto), wantSet); err != nil {
		t.Fatal(err)
	}
	want := wantSet.GetFile()
	if len(want) < 2 {
		t.Fatalf("test.proto has no imports? %v", want)
	}
	for name, register := range map[string]func(*grpc.Server){
		"v1 and v1alpha": func(s *grpc.Server) { reflection.Register(s) },
		"v1 only":        func(s *grpc.Server) { reflection.RegisterV1(s) },
		"v1alpha only": func(s *grpc.Server) {
			v1alphagrpc.RegisterServerReflectionServer(s, reflection.NewServer(reflection.ServerOptions{Services: s}))
		},
	} {
		t.Run(name, func(t *testing.T) {
			conn := startBackend(t, register)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			raw, err := FromReflection(ctx, conn, "grpc.testing.TestService")
			if err != nil {
				t.Fatal(err)
			}
			got := &descriptorpb.FileDescriptorSet{}
			if err := proto.Unmarshal(raw, got); err != nil {
				t.Fatal(err)
			}
			// Every file the service needs, as compiled, each once, imports first.
			byName := map[string]*descriptorpb.FileDescriptorProto{}
			for _, f := range want {
				byName[f.GetName()] = f
			}
			seen := map[string]bool{}
			for _, f := range got.GetFile() {
				if seen[f.GetName()] || !proto.Equal(f, byName[f.GetName()]) {
					t.Fatalf("reflected file %s differs from the compiled one or comes twice", f.GetName())
				}
				for _, dep := range f.GetDependency() {
					if !seen[dep] {
						t.Fatalf("%s comes before its import %s", f.GetName(), dep)
					}
				}
				seen[f.GetName()] = true
			}
			if len(seen) != len(want) {
				t.Fatalf("reflected %d files, want %d", len(seen), len(want))
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
		})
	}
	t.Run("no reflection", func(t *testing.T) {
		conn := startBackend(t, func(*grpc.Server) {})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := FromReflection(ctx, conn, "grpc.testing.TestService"); err == nil || !strings.Contains(err.Error(), "no gRPC server reflection") {
			t.Fatalf("backend without reflection: %v", err)
		}
	})
}

func TestService(t *testing.T) {
	raw := Of(testpb.File_grpc_testing_test_proto)
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
