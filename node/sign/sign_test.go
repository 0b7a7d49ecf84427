package sign

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sildmesh/sild/pki"
)

var (
	t0     = time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	td     = spiffeid.RequireTrustDomainFromString("ee.sild.test")
	nodeID = spiffeid.RequireFromString("spiffe://ee.sild.test/node/GOV/70000310/ss1")
)

type testPKI struct {
	ca    *pki.CA
	roots []*x509.Certificate
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	ca, err := pki.NewCA(td, "EE test root", 24*time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{ca: ca, roots: []*x509.Certificate{ca.Cert}}
}

func (p *testPKI) issue(t testing.TB, k pki.Kind, key crypto.Signer) *x509.Certificate {
	t.Helper()
	c, err := p.ca.Issue(k, key.Public(), nodeID, time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newKey(t testing.TB, alg Algorithm) crypto.Signer {
	t.Helper()
	if alg == AlgEd25519 {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newSigner(t testing.TB, cfg Config) *Signer {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func digest(i int) []byte {
	d := sha256.Sum256(fmt.Appendf(nil, "message %d", i))
	return d[:]
}

// mth is the RFC 6962 Merkle tree hash, written as the RFC states it.
func mth(leaves [][]byte) [HashSize]byte {
	if len(leaves) == 1 {
		return leafHash(leaves[0])
	}
	k := splitPoint(uint64(len(leaves)))
	l, r := mth(leaves[:k]), mth(leaves[k:])
	return nodeHash(&l, &r)
}

func TestMerkleTree(t *testing.T) {
	for n := 1; n <= 70; n++ {
		var ds [][]byte
		leaves := make([][HashSize]byte, n)
		for i := range n {
			ds = append(ds, digest(i))
			leaves[i] = leafHash(ds[i])
		}
		paths := make([][][HashSize]byte, n)
		root := buildTree(leaves, paths)
		if root != mth(ds) {
			t.Fatalf("n=%d: root differs from RFC 6962 MTH", n)
		}
		for i := range n {
			if len(paths[i]) != pathLen(uint64(i), uint64(n)) {
				t.Fatalf("n=%d i=%d: path of %d, pathLen %d", n, i, len(paths[i]), pathLen(uint64(i), uint64(n)))
			}
			got, err := rootFromPath(leaves[i], uint64(i), uint64(n), paths[i])
			if err != nil || got != root {
				t.Fatalf("n=%d i=%d: path does not give the root (%v)", n, i, err)
			}
			if n > 1 {
				other := (i + 1) % n
				if got, err := rootFromPath(leaves[i], uint64(other), uint64(n), paths[i]); err == nil && got == root {
					t.Fatalf("n=%d: leaf %d verified at index %d", n, i, other)
				}
			}
		}
	}
}

func TestSignVerify(t *testing.T) {
	for _, alg := range []Algorithm{AlgECDSAP256SHA256, AlgEd25519} {
		for _, include := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/chain=%v", alg, include), func(t *testing.T) {
				p := newTestPKI(t)
				key := newKey(t, alg)
				cert := p.issue(t, pki.KindSigning, key)
				s := newSigner(t, Config{Key: key, Chain: []*x509.Certificate{cert}, IncludeChain: include})
				const n = 100
				sigs := make([]*Signature, n)
				var wg sync.WaitGroup
				for i := range n {
					wg.Go(func() {
						sig, err := s.Sign(context.Background(), digest(i))
						if err != nil {
							t.Error(err)
						}
						sigs[i] = sig
					})
				}
				wg.Wait()
				if t.Failed() {
					return
				}
				for i, sig := range sigs {
					if sig.Algorithm != alg || sig.KeyID != s.KeyID() || (len(sig.Chain) > 0) != include {
						t.Fatalf("signature %d: %+v", i, sig)
					}
					id, err := Verify(sig, digest(i), cert, p.roots, t0.Add(time.Minute))
					if err != nil || id != nodeID {
						t.Fatalf("verify %d: %v, %v", i, id, err)
					}
					b, err := sig.Marshal()
					if err != nil {
						t.Fatal(err)
					}
					back, err := Unmarshal(b)
					if err != nil {
						t.Fatalf("unmarshal %d: %v", i, err)
					}
					vc := cert
					if include {
						vc = nil // the chain in the signature suffices
					}
					if _, err := Verify(back, digest(i), vc, p.roots, t0.Add(time.Minute)); err != nil {
						t.Fatalf("verify decoded %d: %v", i, err)
					}
				}
				st := s.Stats()
				if st.Digests != n || st.Batches == 0 || st.Batches > n {
					t.Fatalf("stats %+v", st)
				}
				t.Logf("%d digests in %d batches, largest %d", st.Digests, st.Batches, st.Largest)
			})
		}
	}
}

// gatedKey blocks its first signature until released, so that a test can
// queue digests behind a batch being signed.
type gatedKey struct {
	crypto.Signer
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (g *gatedKey) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	first := false
	g.once.Do(func() { first = true })
	if first {
		close(g.entered)
		<-g.release
	}
	return g.Signer.Sign(r, d, o)
}

// waitQueued polls until n digests wait in s's queue.
func waitQueued(t *testing.T, s *Signer, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for s.queued() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d digests queued, want %d", s.queued(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestBatching checks that everything queued while a signature is being
// computed goes into the next batch, up to MaxBatch.
func TestBatching(t *testing.T) {
	p := newTestPKI(t)
	inner := newKey(t, AlgECDSAP256SHA256)
	cert := p.issue(t, pki.KindSigning, inner)
	key := &gatedKey{Signer: inner, entered: make(chan struct{}), release: make(chan struct{})}
	s := newSigner(t, Config{Key: key, Chain: []*x509.Certificate{cert}, MaxBatch: 64})

	type res struct {
		i   int
		sig *Signature
		err error
	}
	out := make(chan res, 200)
	sign := func(i int) {
		sig, err := s.Sign(context.Background(), digest(i))
		out <- res{i, sig, err}
	}
	go sign(0)
	<-key.entered // batch {0} is being signed
	const queued = 100
	for i := 1; i <= queued; i++ {
		go sign(i)
	}
	waitQueued(t, s, queued)
	close(key.release)
	sizes := map[uint64]int{}
	for range queued + 1 {
		r := <-out
		if r.err != nil {
			t.Fatal(r.err)
		}
		if _, err := Verify(r.sig, digest(r.i), cert, p.roots, t0); err != nil {
			t.Fatalf("verify %d: %v", r.i, err)
		}
		sizes[r.sig.TreeSize]++
	}
	// 1 alone, then 64 (MaxBatch), then the remaining 36.
	if sizes[1] != 1 || sizes[64] != 64 || sizes[36] != 36 || len(sizes) != 3 {
		t.Fatalf("batch sizes %v, want {1:1 64:64 36:36}", sizes)
	}
	if st := s.Stats(); st.Batches != 3 || st.Largest != 64 {
		t.Fatalf("stats %+v", st)
	}
}

// signBatchOf returns the signature of digest(0), made alone, and those of
// digest(1) to digest(n), made in one batch by s (whose key is key,
// certified by cert).
func signBatchOf(t *testing.T, s *Signer, key crypto.Signer, cert *x509.Certificate, n int) []*Signature {
	t.Helper()
	gk := &gatedKey{Signer: key, entered: make(chan struct{}), release: make(chan struct{})}
	if err := s.SetIdentity(gk, []*x509.Certificate{cert}); err != nil {
		t.Fatal(err)
	}
	sigs := make([]*Signature, n+1)
	var wg sync.WaitGroup
	wg.Go(func() { sigs[0], _ = s.Sign(context.Background(), digest(0)) })
	<-gk.entered
	for i := 1; i <= n; i++ {
		wg.Go(func() { sigs[i], _ = s.Sign(context.Background(), digest(i)) })
	}
	waitQueued(t, s, n)
	close(gk.release)
	wg.Wait()
	return sigs
}

// The signatures of one batch arrive together: verified at once, they cost
// one public-key operation, and a bad one is refused to every caller.
func TestVerifierChecksABatchOnce(t *testing.T) {
	p := newTestPKI(t)
	key := newKey(t, AlgECDSAP256SHA256)
	cert := p.issue(t, pki.KindSigning, key)
	s := newSigner(t, Config{Key: key, Chain: []*x509.Certificate{cert}, IncludeChain: true})
	sigs := signBatchOf(t, s, key, cert, 8)[1:]
	at := t0.Add(time.Minute)
	verifyAll := func(v *Verifier, sigs []*Signature) (ok, failed int) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 4 {
			for i, sig := range sigs {
				wg.Go(func() {
					<-start
					_, err := v.Verify(sig, digest(i+1), nil, p.roots, at)
					mu.Lock()
					defer mu.Unlock()
					if err == nil {
						ok++
					} else {
						failed++
					}
				})
			}
		}
		close(start)
		wg.Wait()
		return ok, failed
	}
	v := NewVerifier(0)
	if ok, failed := verifyAll(v, sigs); ok != 32 || failed != 0 {
		t.Fatalf("%d verified, %d refused; want 32 verified", ok, failed)
	}
	if n := v.RootChecks(); n != 1 {
		t.Fatalf("%d root signature checks for one batch, want 1", n)
	}

	bad := make([]*Signature, len(sigs))
	for i, sig := range sigs {
		c := *sig
		c.RootSignature = bytes.Clone(sig.RootSignature)
		c.RootSignature[len(c.RootSignature)-1] ^= 1
		bad[i] = &c
	}
	v = NewVerifier(0)
	if ok, failed := verifyAll(v, bad); ok != 0 || failed != 32 {
		t.Fatalf("tampered batch: %d verified, %d refused; want all refused", ok, failed)
	}
}

func TestVerifyRefuses(t *testing.T) {
	p := newTestPKI(t)
	key := newKey(t, AlgECDSAP256SHA256)
	cert := p.issue(t, pki.KindSigning, key)
	s := newSigner(t, Config{Key: key, Chain: []*x509.Certificate{cert}, IncludeChain: true})

	// A batch of several digests, so that paths are not empty.
	sigs := signBatchOf(t, s, key, cert, 5)
	// The batch order is the queue order: find who got leaf 3 of 5.
	var good *Signature
	var gd, od []byte
	for j, sg := range sigs[1:] {
		if sg == nil || sg.TreeSize != 5 {
			t.Fatalf("unexpected signature %+v", sg)
		}
		if sg.LeafIndex == 3 {
			good, gd = sg, digest(j+1)
		} else {
			od = digest(j + 1)
		}
	}
	at := t0.Add(time.Minute)
	if _, err := Verify(good, gd, cert, p.roots, at); err != nil {
		t.Fatal(err)
	}
	// A Verifier that has seen the good signature (and its batch) must refuse
	// the same as Verify.
	v := NewVerifier(0)
	for i, sig := range sigs[1:] {
		if id, err := v.Verify(sig, digest(i+1), nil, p.roots, at); err != nil || id != nodeID {
			t.Fatalf("verifier %d: %v %v", i+1, id, err)
		}
	}

	other := newTestPKI(t)
	otherKey := newKey(t, AlgECDSAP256SHA256)
	otherCert := p.issue(t, pki.KindSigning, otherKey)
	svid := p.issue(t, pki.KindSVID, key)
	tsaCert := p.issue(t, pki.KindTSA, key)
	edCert := p.issue(t, pki.KindSigning, newKey(t, AlgEd25519))
	keyID := func(c *x509.Certificate) string {
		id, err := pki.KeyHash(c.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}

	clone := func(f func(*Signature)) *Signature {
		c := *good
		c.RootSignature = bytes.Clone(good.RootSignature)
		c.Path = append([][HashSize]byte(nil), good.Path...)
		c.Chain = append([][]byte(nil), good.Chain...)
		f(&c)
		return &c
	}
	for _, tc := range []struct {
		name   string
		sig    *Signature
		digest []byte
		cert   *x509.Certificate
		roots  []*x509.Certificate
		at     time.Time
		want   error
	}{
		{"other digest", good, od, cert, p.roots, at, ErrInvalid},
		{"short digest", good, gd[:31], cert, p.roots, at, ErrDigestSize},
		{"flipped root signature", clone(func(s *Signature) { s.RootSignature[10] ^= 1 }), gd, cert, p.roots, at, ErrInvalid},
		{"flipped path", clone(func(s *Signature) { s.Path[0][0] ^= 1 }), gd, cert, p.roots, at, ErrInvalid},
		{"other leaf index", clone(func(s *Signature) { s.LeafIndex = 2 }), gd, cert, p.roots, at, ErrInvalid},
		{"other tree size", clone(func(s *Signature) { s.TreeSize = 6 }), gd, cert, p.roots, at, ErrInvalid},
		{"index out of tree", clone(func(s *Signature) { s.LeafIndex = 5 }), gd, cert, p.roots, at, ErrMalformed},
		{"path too short", clone(func(s *Signature) { s.Path = s.Path[1:] }), gd, cert, p.roots, at, ErrMalformed},
		{"ed25519 algorithm claimed", clone(func(s *Signature) { s.Algorithm = AlgEd25519; s.RootSignature = make([]byte, 64) }), gd, cert, p.roots, at, ErrInvalid},
		{"unknown algorithm", clone(func(s *Signature) { s.Algorithm = 7 }), gd, cert, p.roots, at, ErrMalformed},
		{"other signer's certificate", clone(func(s *Signature) { s.Chain = nil; s.KeyID = keyID(otherCert) }), gd, otherCert, p.roots, at, ErrInvalid},
		{"key id of other key", clone(func(s *Signature) { s.Chain = nil }), gd, otherCert, p.roots, at, ErrCertificate},
		{"sent chain differs from expected", good, gd, otherCert, p.roots, at, ErrCertificate},
		{"ed25519 certificate", clone(func(s *Signature) { s.Chain = nil; s.KeyID = keyID(edCert) }), gd, edCert, p.roots, at, ErrInvalid},
		{"svid as signing certificate", clone(func(s *Signature) { s.Chain = nil }), gd, svid, p.roots, at, ErrCertificate},
		{"tsa certificate", clone(func(s *Signature) { s.Chain = nil }), gd, tsaCert, p.roots, at, ErrCertificate},
		{"untrusted root", good, gd, cert, other.roots, at, ErrCertificate},
		{"expired", good, gd, cert, p.roots, t0.Add(2 * time.Hour), ErrCertificate},
		{"not yet valid", good, gd, cert, p.roots, t0.Add(-time.Hour), ErrCertificate},
		{"no certificate at all", clone(func(s *Signature) { s.Chain = nil }), gd, nil, p.roots, at, ErrCertificate},
		{"garbage chain", clone(func(s *Signature) { s.Chain = [][]byte{{1, 2, 3}} }), gd, nil, p.roots, at, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Verify(tc.sig, tc.digest, tc.cert, tc.roots, tc.at)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			_, err = v.Verify(tc.sig, tc.digest, tc.cert, tc.roots, tc.at)
			if !errors.Is(err, tc.want) {
				t.Fatalf("verifier: got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestUnmarshalStrict(t *testing.T) {
	p := newTestPKI(t)
	key := newKey(t, AlgEd25519)
	s := newSigner(t, Config{Key: key, Chain: []*x509.Certificate{p.issue(t, pki.KindSigning, key)}, IncludeChain: true})
	sig, err := s.Sign(context.Background(), digest(1))
	if err != nil {
		t.Fatal(err)
	}
	good, err := sig.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Unmarshal(good); err != nil {
		t.Fatal(err)
	}
	// The same fields in another order: key id (4) first.
	var reordered []byte
	for b := good; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if num == 4 {
			reordered = append(append([]byte(nil), b[:n+m]...), reordered...)
		} else {
			reordered = append(reordered, b[:n+m]...)
		}
		b = b[n+m:]
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"truncated", good[:len(good)-1]},
		{"unknown field", protowire.AppendVarint(protowire.AppendTag(bytes.Clone(good), 99, protowire.VarintType), 1)},
		{"field repeated", protowire.AppendVarint(protowire.AppendTag(bytes.Clone(good), 6, protowire.VarintType), 1)},
		{"reordered", reordered},
		{"explicit zero leaf index", append(protowire.AppendVarint(protowire.AppendTag(nil, 5, protowire.VarintType), 0), good...)},
		{"too long", make([]byte, MaxEncodedLen+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Unmarshal(tc.b); !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
}

func TestCloseAndCancel(t *testing.T) {
	p := newTestPKI(t)
	inner := newKey(t, AlgECDSAP256SHA256)
	cert := p.issue(t, pki.KindSigning, inner)
	key := &gatedKey{Signer: inner, entered: make(chan struct{}), release: make(chan struct{})}
	s, err := New(Config{Key: key, Chain: []*x509.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 3)
	go func() { _, err := s.Sign(context.Background(), digest(0)); errs <- err }()
	<-key.entered
	// Queued behind the batch being signed: one caller gives up, one waits.
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _, err := s.Sign(ctx, digest(1)); errs <- err }()
	go func() { _, err := s.Sign(context.Background(), digest(2)); errs <- err }()
	waitQueued(t, s, 2)
	cancel()
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	close(key.release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	var got []error
	for range 3 {
		got = append(got, <-errs)
	}
	var nilErrs, canceled, closedErrs int
	for _, e := range got {
		switch {
		case e == nil:
			nilErrs++
		case errors.Is(e, context.Canceled):
			canceled++
		case errors.Is(e, ErrClosed):
			closedErrs++
		}
	}
	// The first batch completes; the canceled caller sees its cancellation;
	// the third is either signed (if a worker took it before Close) or closed.
	if nilErrs < 1 || canceled != 1 || nilErrs+closedErrs != 2 {
		t.Fatalf("results %v", got)
	}
	if _, err := s.Sign(context.Background(), digest(3)); !errors.Is(err, ErrClosed) {
		t.Fatalf("sign after close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestNewRefuses(t *testing.T) {
	p := newTestPKI(t)
	key := newKey(t, AlgECDSAP256SHA256)
	otherCert := p.issue(t, pki.KindSigning, newKey(t, AlgECDSAP256SHA256))
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no key", Config{}},
		{"certificate of another key", Config{Key: key, Chain: []*x509.Certificate{otherCert}}},
		{"chain wanted but none", Config{Key: key, IncludeChain: true}},
		{"batch too big", Config{Key: key, MaxBatch: MaxTreeSize + 1}},
		{"negative workers", Config{Key: key, Workers: -1}},
		{"linger over a second", Config{Key: key, Linger: 2 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if s, err := New(tc.cfg); err == nil {
				s.Close()
				t.Fatal("accepted")
			}
		})
	}
}

func TestSetIdentity(t *testing.T) {
	p := newTestPKI(t)
	k1, k2 := newKey(t, AlgECDSAP256SHA256), newKey(t, AlgEd25519)
	c1, c2 := p.issue(t, pki.KindSigning, k1), p.issue(t, pki.KindSigning, k2)
	s := newSigner(t, Config{Key: k1, Chain: []*x509.Certificate{c1}})
	sig1, err := s.Sign(context.Background(), digest(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetIdentity(k2, []*x509.Certificate{c1}); err == nil {
		t.Fatal("identity with a certificate of another key accepted")
	}
	if err := s.SetIdentity(k2, []*x509.Certificate{c2}); err != nil {
		t.Fatal(err)
	}
	sig2, err := s.Sign(context.Background(), digest(2))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(sig1, digest(1), c1, p.roots, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(sig2, digest(2), c2, p.roots, t0); err != nil || sig2.Algorithm != AlgEd25519 {
		t.Fatal(err, sig2.Algorithm)
	}
	if _, err := Verify(sig2, digest(2), c1, p.roots, t0); !errors.Is(err, ErrCertificate) {
		t.Fatalf("old certificate for new key: %v", err)
	}
}

// TestWorkers signs with two batches in flight at a time and a small
// MaxBatch, from many callers.
func TestWorkers(t *testing.T) {
	p := newTestPKI(t)
	key := newKey(t, AlgEd25519)
	cert := p.issue(t, pki.KindSigning, key)
	s := newSigner(t, Config{Key: key, Chain: []*x509.Certificate{cert}, Workers: 2, MaxBatch: 3})
	v := NewVerifier(0)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			sig, err := s.Sign(context.Background(), digest(i))
			if err != nil {
				t.Error(err)
				return
			}
			if sig.TreeSize > 3 {
				t.Errorf("batch of %d above MaxBatch", sig.TreeSize)
			}
			if _, err := v.Verify(sig, digest(i), cert, p.roots, t0); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if st := s.Stats(); st.Digests != 200 || st.Largest > 3 {
		t.Fatalf("stats %+v", st)
	}
}

// keyIDNames must accept exactly pki.KeyHash of the certificate's key.
func TestKeyIDNames(t *testing.T) {
	p := newTestPKI(t)
	for _, alg := range []Algorithm{AlgECDSAP256SHA256, AlgEd25519} {
		cert := p.issue(t, pki.KindSigning, newKey(t, alg))
		other := p.issue(t, pki.KindSigning, newKey(t, alg))
		kid, err := pki.KeyHash(cert.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if !keyIDNames(kid, cert) {
			t.Errorf("%v: KeyHash %s not accepted for its own certificate", alg, kid)
		}
		otherID, err := pki.KeyHash(other.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{otherID, "", "sha256:", kid[:len(kid)-1], strings.ToUpper(kid), "sha256:" + strings.ToUpper(kid[len("sha256:"):]), "sha512:" + kid[len("sha256:"):]} {
			if keyIDNames(bad, cert) {
				t.Errorf("%v: key id %q accepted", alg, bad)
			}
		}
	}
}

// Under load (the CPU busy, digests coming fast) a batch waits for more
// digests; a lone caller never waits, however long Linger.
func TestLinger(t *testing.T) {
	p := newTestPKI(t)
	key := newKey(t, AlgEd25519)
	cert := p.issue(t, pki.KindSigning, key)
	busy := func(time.Time) bool { return true }
	s := newSigner(t, Config{Key: key, Chain: []*x509.Certificate{cert}, IncludeChain: true, Linger: 100 * time.Millisecond, busy: busy})
	// Groups of four digests, 3 ms apart.
	var wg sync.WaitGroup
	groups := make([]chan struct{}, 8)
	for g := range groups {
		groups[g] = make(chan struct{})
		time.AfterFunc(time.Duration(g)*3*time.Millisecond, func() { close(groups[g]) })
	}
	for i := range 32 {
		wg.Go(func() {
			<-groups[i/4]
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := s.Sign(ctx, digest(i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if st := s.Stats(); st.Digests != 32 || st.Largest < 8 {
		t.Fatalf("stats %+v: digests arriving together did not wait for one another", st)
	}

	// A wait of the lone caller's batch would outlast its deadline.
	lone := newSigner(t, Config{Key: key, Chain: []*x509.Certificate{cert}, IncludeChain: true, Linger: time.Second, busy: busy})
	for i := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 900*time.Millisecond)
		if _, err := lone.Sign(ctx, digest(i)); err != nil {
			t.Fatalf("lone caller, digest %d: %v", i, err)
		}
		cancel()
	}
	if st := lone.Stats(); st.Batches != 20 {
		t.Fatalf("lone caller: stats %+v", st)
	}
}
