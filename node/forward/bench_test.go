package forward_test

import (
	"context"
	"io"
	"testing"

	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/sildmesh/sild/internal/cpustat"
	"github.com/sildmesh/sild/node/forward"
)

// The benchmarks run the same call directly and through one proxy hop so
// their ratio is measured in the same run. Per-call bookkeeping (calls and
// hooks channels) is drained so it does not fill up.

func drain(f *fixture) {
	for {
		select {
		case <-f.be.calls:
		case h := <-f.hooks:
			<-h.done
		default:
			return
		}
	}
}

func benchUnary(b *testing.B, proxied bool, extraHops ...int) {
	f := setup(b, nil)
	c := f.direct
	if proxied {
		c = f.client
	}
	if len(extraHops) > 0 {
		c = testpb.NewTestServiceClient(chain(b, f, extraHops[0]))
	}
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 1024)}}
	ctx := context.Background()
	b.SetBytes(1024)
	b.SetParallelism(16) // as node/exchange's benchmarks, to compare with them
	b.ResetTimer()
	defer cpustat.PerOp(b, &b.N)()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.UnaryCall(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	drain(f)
}

func benchStream(b *testing.B, proxied bool) {
	f := setup(b, nil)
	c := f.direct
	if proxied {
		c = f.client
	}
	s, err := c.FullDuplexCall(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	req := &testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: make([]byte, 1024)}}
	b.SetBytes(1024)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.Send(req); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	_ = s.CloseSend()
	if _, err := s.Recv(); err != io.EOF {
		b.Fatal(err)
	}
	drain(f)
}

// chain puts n more plain proxies in front of f's proxy and returns a
// connection to the first.
func chain(b *testing.B, f *fixture, n int) *grpc.ClientConn {
	conn := f.proxyConn
	for range n {
		next := conn
		p := &forward.Proxy{Director: func(ctx context.Context, _ string) (forward.Route, error) {
			return forward.Route{Ctx: forward.CopyIncoming(ctx), Conn: next}, nil
		}}
		conn = dial(b, serve(b, p.ServerOptions(), nil))
	}
	return conn
}

func BenchmarkUnary1KiBDirect(b *testing.B) { benchUnary(b, false) }

// Two plain proxies in the path, as a mesh exchange has two nodes (but
// without TLS, signatures or evidence): the ceiling of the mesh's
// throughput relative to a direct call on one machine.
func BenchmarkUnary1KiBTwoProxies(b *testing.B) { benchUnary(b, true, 1) }
func BenchmarkUnary1KiBProxied(b *testing.B)    { benchUnary(b, true) }
func BenchmarkStream1KiBDirect(b *testing.B)    { benchStream(b, false) }
func BenchmarkStream1KiBProxied(b *testing.B) {
	benchStream(b, true)
}
