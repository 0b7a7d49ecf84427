package sign

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sildmesh/sild/pki"
)

// BenchmarkSign compares, in one run, plain sequential signing (one
// signature per digest) with the batch Signer under 1 and 64 concurrent
// callers. The metric sigs/s is digests signed per second; compare the
// ratios, not the absolute numbers.
func BenchmarkSign(b *testing.B) {
	p := newTestPKI(b)
	for _, alg := range []Algorithm{AlgECDSAP256SHA256, AlgEd25519} {
		key := newKey(b, alg)
		cert := p.issue(b, pki.KindSigning, key)
		id, err := newIdentity(key, []*x509.Certificate{cert}, false)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("%s/sequential", alg), func(b *testing.B) {
			var root [HashSize]byte
			for i := 0; b.Loop(); i++ {
				root[0] = byte(i)
				if _, err := id.sign(signedBytes(1, &root)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sigs/s")
		})
		for _, callers := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/batch/callers=%d", alg, callers), func(b *testing.B) {
				s, err := New(Config{Key: key, Chain: []*x509.Certificate{cert}})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				var next atomic.Int64
				n := int64(b.N)
				b.ResetTimer()
				var wg sync.WaitGroup
				for range callers {
					wg.Go(func() {
						d := make([]byte, HashSize)
						for i := next.Add(1); i <= n; i = next.Add(1) {
							_, _ = rand.Read(d[:8])
							if _, err := s.Sign(context.Background(), d); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				st := s.Stats()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sigs/s")
				b.ReportMetric(float64(st.Digests)/float64(max(st.Batches, 1)), "digests/batch")
			})
		}
	}
}

// BenchmarkVerify is the cost of verifying one signature of a batch of 64
// (certificate check included).
func BenchmarkVerify(b *testing.B) {
	p := newTestPKI(b)
	key := newKey(b, AlgECDSAP256SHA256)
	cert := p.issue(b, pki.KindSigning, key)
	var root [HashSize]byte
	leaves := make([][HashSize]byte, 64)
	for i := range leaves {
		leaves[i] = leafHash(digest(i))
	}
	paths := make([][][HashSize]byte, 64)
	root = buildTree(leaves, paths)
	id, _ := newIdentity(key, nil, false)
	rs, err := id.sign(signedBytes(64, &root))
	if err != nil {
		b.Fatal(err)
	}
	sig := &Signature{Algorithm: AlgECDSAP256SHA256, RootSignature: rs, KeyID: id.keyID, LeafIndex: 7, TreeSize: 64, Path: paths[7]}
	var _ crypto.Signer = key
	b.Run("func", func(b *testing.B) {
		for b.Loop() {
			if _, err := Verify(sig, digest(7), cert, p.roots, t0); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The Verifier sees the 64 signatures of the batch in turn: one full
	// check, 63 cache hits.
	b.Run("verifier/batch=64", func(b *testing.B) {
		sigs := make([]*Signature, 64)
		for i := range sigs {
			c := *sig
			c.LeafIndex, c.Path = uint64(i), paths[i]
			sigs[i] = &c
		}
		i := 0
		for b.Loop() {
			if i%64 == 0 {
				b.StopTimer()
				v := NewVerifier(0)
				b.StartTimer()
				vs = v
			}
			if _, err := vs.Verify(sigs[i%64], digest(i%64), cert, p.roots, t0); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

var vs *Verifier
