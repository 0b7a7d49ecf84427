package ledger

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
)

// BenchmarkAppendDurable measures durable appends with 1 writer (latency
// bound: one record per synced commit), 32 writers (the mesh benchmark's
// regime: batches of a few dozen records) and 128 writers (large group
// commits). Records carry two batch signatures with a certificate chain, as
// the exchange's records do. Besides appends/s it reports the process's CPU
// time (user+system, every goroutine including Badger's) per append, the
// cost that matters when the node shares its CPUs with the exchange;
// compare with BenchmarkBadgerSyncedSingle, one synced Badger commit per
// entry, in the same run.
func BenchmarkAppendDurable(b *testing.B) {
	for _, writers := range []int{1, 32, 128} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) { benchAppend(b, writers) })
	}
}

func benchAppend(b *testing.B, writers int) {
	p := newTestPKI(b)
	cfg := testConfig(p, b.TempDir())
	cfg.CheckpointInterval = time.Second
	l := startLedger(b, cfg)
	var n atomic.Int64
	ctx := context.Background()
	var wg sync.WaitGroup
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime(b)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(n.Add(1)); i <= b.N; i = int(n.Add(1)) {
				if _, err := l.Append(ctx, signedRecord(i, p), nil).Wait(ctx); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	cpu, wall := cpuTime(b)-cpu0, time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/wall.Seconds(), "appends/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
}

// cpuTime is the user and system CPU time of the process so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// signedRecord is testRecord with a consumer and a provider signature the
// size of the exchange's (signature, one-certificate chain, key id, path),
// started and ended just now.
func signedRecord(i int, p *testPKI) *ledgerv1.Record {
	rec := testRecord(i, "EE/GOV/1/off", "EE38001010000")
	sig := func(d []byte) *nodev1.BatchSignature {
		return &nodev1.BatchSignature{
			Algorithm:     nodev1.SignatureAlgorithm_SIGNATURE_ALGORITHM_ECDSA_P256_SHA256,
			RootSignature: bytes.Repeat(d[:8], 9),
			SignerChain:   [][]byte{p.chain[0].Raw},
			KeyId:         fmt.Sprintf("sha256:%x", d),
			LeafIndex:     uint64(i % 4), TreeSize: 4,
			InclusionPath: [][]byte{d, d},
		}
	}
	// Calls start just before they are logged, as in the exchange (one
	// commit's records mostly started within the same second).
	now := time.Now()
	rec.StartTime, rec.EndTime = timestamppb.New(now.Add(-2*time.Millisecond)), timestamppb.New(now)
	rec.ConsumerSignature = sig(rec.RequestDigest)
	rec.ProviderSignature = sig(rec.ResponseDigest)
	return rec
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
