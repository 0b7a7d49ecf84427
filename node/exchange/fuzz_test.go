package exchange

import (
	"bytes"
	"context"
	"crypto/sha256"
	"testing"
	"time"

	"google.golang.org/grpc/mem"

	"github.com/sildmesh/sild/node/forward"
	"github.com/sildmesh/sild/node/sign"
)

// FuzzRequestFrame feeds arbitrary frames from another node to the
// provider's decoding: the tag is stripped without panic, and a seal is
// accepted only if it is node C's genuine signature of the digest.
func FuzzRequestFrame(f *testing.F) {
	m := newMesh(f)
	digest := sha256.Sum256([]byte("request"))
	sig, err := m.c.signer.Sign(context.Background(), digest[:])
	if err != nil {
		f.Fatal(err)
	}
	good, err := sig.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(append([]byte{tagSeal}, good...))
	f.Add([]byte{tagData, 1, 2, 3})
	f.Add([]byte{})
	f.Add([]byte{tagSeal})
	topo := m.topoB.Load()
	cfg := &Config{Topology: m.topoB.Load, Verifier: sign.NewVerifier(0)}
	now := time.Now()
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := &forward.Frame{Data: mem.BufferSlice{mem.SliceBuffer(bytes.Clone(b))}}
		tag, rest, ok := stripTag(fr)
		if !ok {
			if len(b) != 0 {
				t.Fatal("non-empty frame refused")
			}
			return
		}
		if tag != b[0] || !bytes.Equal(rest, b[1:]) || !bytes.Equal(fr.Bytes(), b[1:]) {
			t.Fatal("tag not stripped exactly")
		}
		if tag != tagSeal {
			return
		}
		if _, err := openSeal(cfg, topo, nodeC, rest, digest[:], now); err == nil && !bytes.Equal(rest, good) {
			// Only re-encodings of the one genuine signature may pass.
			s2, uerr := sign.Unmarshal(rest)
			if uerr != nil || !bytes.Equal(s2.RootSignature, sig.RootSignature) {
				t.Fatalf("accepted a seal that is not C's signature: %x", rest)
			}
		}
		if _, err := openSeal(cfg, topo, nodeA, rest, digest[:], now); err == nil {
			t.Fatal("C's seal accepted as A's")
		}
	})
}
