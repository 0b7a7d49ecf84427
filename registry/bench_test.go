package registry_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/registry/gconf"
	"github.com/sildmesh/sild/registry/registrytest"
)

// BenchmarkCommittedWrites measures acknowledged AddMember writes on a
// three-server loopback cluster with 32 concurrent clients (spread over all
// servers, so two thirds are forwarded to the leader).
func BenchmarkCommittedWrites(b *testing.B) {
	c := registrytest.Start(b, 3)
	ctx := c.Ctx(context.Background())
	var clients []registryv1.AdminServiceClient
	for _, m := range c.Servers {
		clients = append(clients, c.AdminClient(m))
	}
	var next atomic.Int64
	b.SetParallelism(16) // 2 cores x 16 = 32 writers
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1)
			cl := clients[int(i)%len(clients)]
			if _, err := cl.AddMember(ctx, &registryv1.AddMemberRequest{Id: memberID(fmt.Sprintf("b%d", i))}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
}

// BenchmarkConfigPropagation measures the time from an acknowledged write
// until 100 watching nodes (spread over the three servers) have received a
// verified configuration that contains it.
func BenchmarkConfigPropagation(b *testing.B) {
	c := registrytest.Start(b, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	token := joinTestNode(b, c, ctx)
	var watchers []registryv1.NodeService_WatchConfigClient
	for i := 0; i < 100; i++ {
		conn := nodeConn(b, c, c.Servers[i%3], token.key, token.chain)
		w, err := registryv1.NewNodeServiceClient(conn).WatchConfig(ctx, &registryv1.WatchConfigRequest{})
		if err != nil {
			b.Fatal(err)
		}
		watchers = append(watchers, w)
	}
	adm := c.AdminClient(c.Servers[0])
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		code := fmt.Sprintf("p%d", i)
		start := time.Now()
		if _, err := adm.AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: memberID(code)}); err != nil {
			b.Fatal(err)
		}
		acked := time.Now()
		var wg sync.WaitGroup
		for _, w := range watchers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					resp, err := w.Recv()
					if err != nil {
						b.Error(err)
						return
					}
					cfg, err := gconf.Verify(resp.GetConfig(), c.Roots, time.Now())
					if err != nil {
						b.Error(err)
						return
					}
					for _, m := range cfg.GetMembers() {
						if m.GetId().GetMemberCode() == code {
							return
						}
					}
				}
			}()
		}
		wg.Wait()
		total += time.Since(acked)
		_ = start
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "ms/commit-to-100-watchers")
}
