package sign

import (
	"bytes"
	"context"
	"crypto/x509"
	"testing"

	"github.com/sildmesh/sild/pki"
)

// FuzzUnmarshal checks that the decoder never panics, that whatever it accepts
// is canonical (re-encodes to the same bytes) and well formed.
func FuzzUnmarshal(f *testing.F) {
	p := newTestPKI(f)
	for _, alg := range []Algorithm{AlgECDSAP256SHA256, AlgEd25519} {
		key := newKey(f, alg)
		for _, include := range []bool{false, true} {
			s := newSigner(f, Config{Key: key, Chain: []*x509.Certificate{p.issue(f, pki.KindSigning, key)}, IncludeChain: include})
			sig, err := s.Sign(context.Background(), digest(0))
			if err != nil {
				f.Fatal(err)
			}
			sig.TreeSize, sig.LeafIndex = 6, 5
			sig.Path = make([][HashSize]byte, pathLen(5, 6))
			b, err := sig.Marshal()
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		sig, err := Unmarshal(b)
		if err != nil {
			return
		}
		again, err := sig.Marshal()
		if err != nil {
			t.Fatalf("accepted signature does not marshal: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("accepted a non-canonical encoding")
		}
		if _, err := sig.Root(digest(0)); err != nil {
			t.Fatalf("accepted signature has no root: %v", err)
		}
		_, _ = Verify(sig, digest(0), nil, p.roots, t0)
	})
}
