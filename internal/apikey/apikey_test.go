package apikey

import (
	"context"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sildmesh/sild/internal/rpcerr"
)

func TestHashCheck(t *testing.T) {
	k, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := Generate()
	if !strings.HasPrefix(k, "sild_") || k == k2 {
		t.Fatalf("generate: %q %q", k, k2)
	}
	h := Hash(k)
	if !ValidHash(h) {
		t.Fatalf("ValidHash(%q) = false", h)
	}
	for _, tc := range []struct {
		name, hashed, key string
		want              bool
	}{
		{"right key", h, k, true},
		{"other key", h, k2, false},
		{"empty key", Hash(""), "", false},
		{"prefix of key", h, k[:len(k)-1], false},
		{"upper-case hash", strings.ToUpper(h), k, false},
		{"no prefix", strings.TrimPrefix(h, "sha256:"), k, false},
		{"short hash", h[:len(h)-2], k, false},
		{"too long key", Hash(strings.Repeat("a", 600)), strings.Repeat("a", 600), false},
		{"hash as key", h, h, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Check(tc.hashed, tc.key); got != tc.want {
				t.Fatalf("Check = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestBearer(t *testing.T) {
	for _, tc := range []struct {
		name string
		md   metadata.MD
		want string
		ok   bool
	}{
		{"bearer", metadata.Pairs("authorization", "Bearer abc"), "abc", true},
		{"lower-case scheme", metadata.Pairs("authorization", "bearer abc"), "abc", true},
		{"none", metadata.MD{}, "", false},
		{"basic", metadata.Pairs("authorization", "Basic abc"), "", false},
		{"no key", metadata.Pairs("authorization", "Bearer "), "", false},
		{"no space", metadata.Pairs("authorization", "Bearerabc"), "", false},
		{"twice", metadata.Pairs("authorization", "Bearer a", "authorization", "Bearer b"), "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := Bearer(metadata.NewIncomingContext(context.Background(), tc.md))
			if got != tc.want || ok != tc.ok {
				t.Fatalf("Bearer = %q, %v; want %q, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

// roleHealth is a health server that records the role it was called with.
type roleHealth struct {
	*health.Server
	roles chan string
}

func (h *roleHealth) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	r, _ := Role(ctx)
	h.roles <- r
	return h.Server.Check(ctx, req)
}

func (h *roleHealth) Watch(req *healthpb.HealthCheckRequest, ss healthpb.Health_WatchServer) error {
	r, _ := Role(ss.Context())
	h.roles <- r
	return status.Error(codes.Unimplemented, "test")
}

func TestInterceptors(t *testing.T) {
	admin, _ := Generate()
	reader, _ := Generate()
	lookup := Static(map[string]string{Hash(admin): "admin", Hash(reader): "reader"})

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.UnaryInterceptor(UnaryServerInterceptor(lookup, "node.admin")),
		grpc.StreamInterceptor(StreamServerInterceptor(lookup, "node.admin")),
	)
	h := &roleHealth{Server: health.NewServer(), roles: make(chan string, 10)}
	healthpb.RegisterHealthServer(srv, h)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	dial := func(t *testing.T, opts ...grpc.DialOption) healthpb.HealthClient {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
		cc, err := grpc.NewClient(lis.Addr().String(), opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return healthpb.NewHealthClient(cc)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		opts []grpc.DialOption
		role string // "" = refused
	}{
		{"admin key", []grpc.DialOption{grpc.WithPerRPCCredentials(Credentials(admin, false))}, "admin"},
		{"reader key", []grpc.DialOption{grpc.WithPerRPCCredentials(Credentials(reader, false))}, "reader"},
		{"no key", nil, ""},
		{"wrong key", []grpc.DialOption{grpc.WithPerRPCCredentials(Credentials(admin+"x", false))}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, tc.opts...)
			_, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
			st, err2 := c.Watch(ctx, &healthpb.HealthCheckRequest{})
			if err2 == nil {
				_, err2 = st.Recv()
			}
			if tc.role == "" {
				for _, e := range []error{err, err2} {
					if status.Code(e) != codes.Unauthenticated || rpcerr.Reason(e) != rpcerr.ReasonUnauthenticated || rpcerr.Component(e) != "node.admin" {
						t.Fatalf("got %v (reason %q), want Unauthenticated/UNAUTHENTICATED", e, rpcerr.Reason(e))
					}
				}
				select {
				case r := <-h.roles:
					t.Fatalf("handler reached with role %q", r)
				default:
				}
				return
			}
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if status.Code(err2) != codes.Unimplemented {
				t.Fatalf("Watch: %v", err2)
			}
			for i := 0; i < 2; i++ {
				if r := <-h.roles; r != tc.role {
					t.Fatalf("role %q, want %q", r, tc.role)
				}
			}
		})
	}
}

func TestCredentialsRequireTLS(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	cc, err := grpc.NewClient(lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(Credentials("k", true)))
	if err == nil {
		cc.Close()
		t.Fatal("a key that requires TLS was accepted for a plaintext connection")
	}
}

func TestStatic(t *testing.T) {
	k, _ := Generate()
	lookup := Static(map[string]string{Hash(k): "admin", "sha256:xyz": "broken", "": "empty"})
	ctx := context.Background()
	for _, tc := range []struct {
		key, role string
		ok        bool
	}{
		{k, "admin", true},
		{"", "", false},
		{"sha256:xyz", "", false},
		{k + k, "", false},
	} {
		if role, ok := lookup(ctx, tc.key); role != tc.role || ok != tc.ok {
			t.Errorf("lookup(%q) = %q, %v; want %q, %v", tc.key, role, ok, tc.role, tc.ok)
		}
	}
}
