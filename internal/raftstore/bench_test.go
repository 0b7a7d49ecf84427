package raftstore

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// BenchmarkStoreLogs measures synced batches of 256-byte entries on Badger
// and, for comparison in the same run, on raft.InmemStore:
//
//	go test ./internal/raftstore -run '^$' -bench StoreLogs
//
// entries/s is the figure to compare; the ratio inmem/badger is the cost of
// durability.
func BenchmarkStoreLogs(b *testing.B) {
	for _, batch := range []int{1, 16, 64, 256} {
		for _, kind := range []string{"badger", "inmem"} {
			b.Run(fmt.Sprintf("%s/batch=%d", kind, batch), func(b *testing.B) {
				var st raft.LogStore
				if kind == "badger" {
					st = openT(b, b.TempDir())
				} else {
					st = raft.NewInmemStore()
				}
				data := make([]byte, 256)
				logs := make([]*raft.Log, batch)
				for i := range logs {
					logs[i] = &raft.Log{Type: raft.LogCommand, Term: 1, Data: data, AppendedAt: time.Now()}
				}
				next := uint64(1)
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					for _, l := range logs {
						l.Index = next
						next++
					}
					if err := st.StoreLogs(logs); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "entries/s")
			})
		}
	}
}

// BenchmarkGetLog reads back recent entries, as replication does.
func BenchmarkGetLog(b *testing.B) {
	st := openT(b, b.TempDir())
	const n = 4096
	if err := st.StoreLogs(entries(1, n)); err != nil {
		b.Fatal(err)
	}
	var l raft.Log
	i := uint64(0)
	for b.Loop() {
		if err := st.GetLog(i%n+1, &l); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
