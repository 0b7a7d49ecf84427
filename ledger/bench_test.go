package ledger

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/proto"
)

// BenchmarkAppendDurable measures durable appends per second with many
// concurrent writers (group commit); compare with
// BenchmarkBadgerSyncedSingle, one synced Badger commit per entry, in the
// same run.
func BenchmarkAppendDurable(b *testing.B) {
	p := newTestPKI(b)
	cfg := testConfig(p, b.TempDir())
	cfg.CheckpointInterval = time.Second
	l := startLedger(b, cfg)
	var n atomic.Int64
	ctx := context.Background()
	b.SetParallelism(64)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(n.Add(1))
			if _, err := l.Append(ctx, testRecord(i, "EE/GOV/1/off", "EE38001010000"), nil).Wait(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "appends/s")
}

func BenchmarkBadgerSyncedSingle(b *testing.B) {
	db, err := badger.Open(badger.DefaultOptions(b.TempDir()).WithSyncWrites(true).WithLogger(nil))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	val, _ := proto.Marshal(testRecord(1, "EE/GOV/1/off", "EE38001010000"))
	var n atomic.Int64
	b.SetParallelism(64)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			k := []byte(fmt.Sprintf("k%012d", n.Add(1)))
			if err := db.Update(func(txn *badger.Txn) error { return txn.Set(k, val) }); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "commits/s")
}

// BenchmarkVerifyBundle measures offline verification of a one-record
// bundle (token, checkpoint signature and chain, inclusion proof, body and
// two record signatures).
func BenchmarkVerifyBundle(b *testing.B) {
	p := newTestPKI(b)
	bundle, l := exportBundle(b, p, p)
	l.stop(b)
	data, _ := proto.Marshal(bundle)
	roots := p.roots()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := VerifyBundle(data, roots); err != nil {
			b.Fatal(err)
		}
	}
}
