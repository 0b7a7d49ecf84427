package exchange

import (
	"context"
	"io"
	"testing"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/sildmesh/sild/internal/cpustat"
)

// The benchmarks run the same call straight to the backend and through
// consumer node A and provider node B (mTLS between them, both signing and
// verifying, records kept in memory), so the ratio is measured in one run.

func benchUnary(b *testing.B, mesh bool, parallel bool, ledgers ...bool) {
	m := newMeshWith(b, len(ledgers) > 0)
	c, ctx := m.direct, context.Background()
	if mesh {
		c, ctx = m.client, as(ctx, licensing, registry)
	}
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 1024)}}
	b.SetBytes(1024)
	b.ReportAllocs()
	b.ResetTimer()
	defer cpustat.PerOp(b, &b.N)()
	if !parallel {
		for b.Loop() {
			if _, err := c.UnaryCall(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.UnaryCall(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	if mesh {
		for _, n := range []*testNode{m.a, m.b} {
			if st := n.signer.Stats(); st.Batches > 0 {
				b.ReportMetric(float64(st.Digests)/float64(st.Batches), "digests/batch")
			}
		}
	}
}

func benchStream(b *testing.B, mesh bool) {
	m := newMesh(b)
	c, ctx := m.direct, context.Background()
	if mesh {
		c, ctx = m.client, as(ctx, licensing, registry)
	}
	s, err := c.FullDuplexCall(ctx)
	if err != nil {
		b.Fatal(err)
	}
	req := &testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: make([]byte, 1024)}}
	b.SetBytes(1024)
	b.ResetTimer()
	for b.Loop() {
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
}

func BenchmarkUnary1KiBDirect(b *testing.B)         { benchUnary(b, false, false) }
func BenchmarkUnary1KiBMesh(b *testing.B)           { benchUnary(b, true, false) }
func BenchmarkUnary1KiBDirectParallel(b *testing.B) { benchUnary(b, false, true) }
func BenchmarkUnary1KiBMeshParallel(b *testing.B)   { benchUnary(b, true, true) }
func BenchmarkBidi1KiBDirect(b *testing.B)          { benchStream(b, false) }
func BenchmarkBidi1KiBMesh(b *testing.B)            { benchStream(b, true) }

// With real ledgers (Badger, synced group commit, time-stamped checkpoints)
// on both nodes.
func BenchmarkUnary1KiBMeshLedgers(b *testing.B)         { benchUnary(b, true, false, true) }
func BenchmarkUnary1KiBMeshLedgersParallel(b *testing.B) { benchUnary(b, true, true, true) }
