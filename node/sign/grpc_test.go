package sign

import (
	"context"
	"crypto/x509"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/sildmesh/sild/pki"
)

// signingHealth answers health checks with a signature of the request's
// service name in the trailer, as a node signs what it sends.
type signingHealth struct {
	*health.Server
	s *Signer
}

func (h *signingHealth) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	sig, err := h.s.Sign(ctx, digestOf(req.GetService()))
	if err != nil {
		return nil, err
	}
	md := metadata.MD{}
	if err := SetMetadata(md, sig); err != nil {
		return nil, err
	}
	if err := grpc.SetTrailer(ctx, md); err != nil {
		return nil, err
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func digestOf(s string) []byte {
	d := digest(len(s))
	copy(d, s)
	return d
}

// TestSignatureInTrailer sends signatures with the full chain in gRPC
// trailers over a real connection, from concurrent calls that share batches.
func TestSignatureInTrailer(t *testing.T) {
	p := newTestPKI(t)
	key := newKey(t, AlgECDSAP256SHA256)
	cert := p.issue(t, pki.KindSigning, key)
	s := newSigner(t, Config{Key: key, Chain: []*x509.Certificate{cert}, IncludeChain: true})

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	healthpb.RegisterHealthServer(g, &signingHealth{Server: health.NewServer(), s: s})
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.Serve(lis) })
	t.Cleanup(func() { g.Stop(); wg.Wait() })
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := healthpb.NewHealthClient(cc)
	v := NewVerifier(0)
	var calls sync.WaitGroup
	for i := range 50 {
		calls.Go(func() {
			name := string(rune('a'+i%26)) + "svc"
			var tr metadata.MD
			if _, err := client.Check(context.Background(), &healthpb.HealthCheckRequest{Service: name}, grpc.Trailer(&tr)); err != nil {
				t.Error(err)
				return
			}
			sig, err := FromMetadata(tr)
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := v.Verify(sig, digestOf(name), nil, p.roots, t0); err != nil {
				t.Error(err)
			}
			if _, err := v.Verify(sig, digestOf(name+"x"), nil, p.roots, t0); err == nil {
				t.Error("signature verified for another message")
			}
		})
	}
	calls.Wait()
}
