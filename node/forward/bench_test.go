package forward_test

import (
	"context"
	"io"
	"testing"

	testpb "google.golang.org/grpc/interop/grpc_testing"
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

func benchUnary(b *testing.B, proxied bool) {
	f := setup(b, nil)
	c := f.direct
	if proxied {
		c = f.client
	}
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 1024)}}
	ctx := context.Background()
	b.SetBytes(1024)
	b.ResetTimer()
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

func BenchmarkUnary1KiBDirect(b *testing.B)  { benchUnary(b, false) }
func BenchmarkUnary1KiBProxied(b *testing.B) { benchUnary(b, true) }
func BenchmarkStream1KiBDirect(b *testing.B) { benchStream(b, false) }
func BenchmarkStream1KiBProxied(b *testing.B) {
	benchStream(b, true)
}
