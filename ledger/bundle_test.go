package ledger

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"testing"

	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	"github.com/sildmesh/sild/ledger/merkle"
)

// batchSign makes a one-leaf node batch signature over digest, as node/sign
// would.
func batchSign(t testing.TB, p *testPKI, digest []byte) *nodev1.BatchSignature {
	t.Helper()
	root := merkle.HashLeaf(digest)
	msg := binary.BigEndian.AppendUint64([]byte("sild-batch-v1"), 1)
	msg = append(msg, root[:]...)
	h := sha256.Sum256(msg)
	sig, err := p.key.Sign(rand.Reader, h[:], cryptoSHA256)
	if err != nil {
		t.Fatal(err)
	}
	return &nodev1.BatchSignature{
		Algorithm:     nodev1.SignatureAlgorithm_SIGNATURE_ALGORITHM_ECDSA_P256_SHA256,
		RootSignature: sig,
		SignerChain:   [][]byte{p.chain[0].Raw},
		TreeSize:      1,
	}
}

// exportBundle runs a ledger with a few records and returns the bundle of
// msg-000002 (signed by both sides, with a full body) and the ledger.
func exportBundle(t testing.TB, p *testPKI, signer *testPKI) (*ledgerv1.EvidenceBundle, *running) {
	t.Helper()
	cfg := testConfig(p, t.TempDir())
	cfg.Signer, cfg.SignerChain = signer.key, signer.chain
	l := startLedger(t, cfg)
	for i := 0; i < 5; i++ {
		r := testRecord(i, "EE/GOV/1/full", "EE38001010000")
		r.ConsumerSignature = batchSign(t, p, r.RequestDigest)
		r.ProviderSignature = batchSign(t, p, r.ResponseDigest)
		appendWait(t, l.Ledger, r, testBody(i))
	}
	waitStamped(t, l.Ledger)
	b, err := l.Export("msg-000002")
	if err != nil {
		t.Fatal(err)
	}
	return b, l
}

func flip(b []byte, i int) []byte {
	b = bytes.Clone(b)
	b[i%len(b)] ^= 0x01
	return b
}

func TestBundleTamper(t *testing.T) {
	p := newTestPKI(t)
	good, l := exportBundle(t, p, p)
	data, _ := proto.Marshal(good)
	v, err := VerifyBundle(data, p.roots())
	if err != nil {
		t.Fatal(err)
	}
	// The earliest stamped checkpoint covering msg-000002 (index 2): of 3 to 5
	// records, as the checkpointer ticked while they were appended.
	if v.RecordSignatures != 2 || v.Bodies != 1 || v.TreeSize < 3 || v.TreeSize > 5 {
		t.Fatalf("verified %+v", v)
	}
	// A later checkpoint, for a token over another checkpoint.
	appendWait(t, l.Ledger, testRecord(9, "EE/GOV/1/off", ""), nil)
	waitStamped(t, l.Ledger)
	later, err := l.Checkpoint(6)
	if err != nil {
		t.Fatal(err)
	}
	other := newTestPKI(t)

	tests := []struct {
		name   string
		mod    func(b *ledgerv1.EvidenceBundle)
		roots  *testPKI
		reason Reason
	}{
		{"record byte", func(b *ledgerv1.EvidenceBundle) {
			e := b.Items[0].Entry
			i := bytes.Index(e, []byte("msg-000002"))
			b.Items[0].Entry = flip(e, i+5)
		}, p, ReasonInclusionProof},
		{"record signature byte", func(b *ledgerv1.EvidenceBundle) {
			e := &ledgerv1.Entry{}
			_ = proto.Unmarshal(b.Items[0].Entry, e)
			r := &ledgerv1.Record{}
			_ = proto.Unmarshal(e.Record, r)
			r.ConsumerSignature.RootSignature = flip(r.ConsumerSignature.RootSignature, 9)
			e.Record, _ = marshal(r)
			b.Items[0].Entry, _ = marshal(e)
		}, p, ReasonInclusionProof},
		{"entry garbage", func(b *ledgerv1.EvidenceBundle) { b.Items[0].Entry = []byte{0xff, 0xff} }, p, ReasonEntryMalformed},
		{"body byte", func(b *ledgerv1.EvidenceBundle) { b.Items[0].Body = flip(b.Items[0].Body, 7) }, p, ReasonBodyMismatch},
		{"proof byte", func(b *ledgerv1.EvidenceBundle) {
			b.Items[0].InclusionPath[1] = flip(b.Items[0].InclusionPath[1], 3)
		}, p, ReasonInclusionProof},
		{"proof short", func(b *ledgerv1.EvidenceBundle) {
			b.Items[0].InclusionPath = b.Items[0].InclusionPath[:1]
		}, p, ReasonInclusionProof},
		{"proof hash length", func(b *ledgerv1.EvidenceBundle) {
			b.Items[0].InclusionPath[0] = b.Items[0].InclusionPath[0][:31]
		}, p, ReasonInclusionProof},
		{"checkpoint root byte", func(b *ledgerv1.EvidenceBundle) {
			cp := b.Checkpoint.Checkpoint
			c := &ledgerv1.Checkpoint{}
			_ = proto.Unmarshal(cp, c)
			j := bytes.Index(cp, c.RootHash)
			b.Checkpoint.Checkpoint = flip(cp, j+4)
		}, p, ReasonCheckpointSignature},
		{"checkpoint size", func(b *ledgerv1.EvidenceBundle) {
			c := &ledgerv1.Checkpoint{}
			_ = proto.Unmarshal(b.Checkpoint.Checkpoint, c)
			c.TreeSize = 6
			b.Checkpoint.Checkpoint, _ = marshal(c)
		}, p, ReasonCheckpointSignature},
		{"checkpoint signature byte", func(b *ledgerv1.EvidenceBundle) {
			b.Checkpoint.Signature = flip(b.Checkpoint.Signature, 20)
		}, p, ReasonCheckpointSignature},
		{"checkpoint garbage", func(b *ledgerv1.EvidenceBundle) { b.Checkpoint.Checkpoint = []byte{0xff} }, p, ReasonCheckpointMalformed},
		{"token byte", func(b *ledgerv1.EvidenceBundle) {
			b.Checkpoint.TimestampToken = flip(b.Checkpoint.TimestampToken, len(b.Checkpoint.TimestampToken)/2)
		}, p, ReasonTimestampInvalid},
		{"token last byte", func(b *ledgerv1.EvidenceBundle) {
			b.Checkpoint.TimestampToken = flip(b.Checkpoint.TimestampToken, len(b.Checkpoint.TimestampToken)-1)
		}, p, ReasonTimestampInvalid},
		{"token missing", func(b *ledgerv1.EvidenceBundle) { b.Checkpoint.TimestampToken = nil }, p, ReasonTimestampMissing},
		{"token of another checkpoint", func(b *ledgerv1.EvidenceBundle) {
			b.Checkpoint.TimestampToken = later.TimestampToken
		}, p, ReasonTimestampMismatch},
		{"other trust bundle", func(*ledgerv1.EvidenceBundle) {}, other, ReasonTimestampInvalid},
		{"version", func(b *ledgerv1.EvidenceBundle) { b.Version = 2 }, p, ReasonBundleMalformed},
		{"no items", func(b *ledgerv1.EvidenceBundle) { b.Items = nil }, p, ReasonBundleMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := proto.Clone(good).(*ledgerv1.EvidenceBundle)
			tt.mod(b)
			data, _ := proto.Marshal(b)
			_, err := VerifyBundle(data, tt.roots.roots())
			if ReasonOf(err) != tt.reason {
				t.Fatalf("got %v, want %s", err, tt.reason)
			}
		})
	}
	if _, err := VerifyBundle([]byte("not a bundle"), p.roots()); ReasonOf(err) != ReasonBundleMalformed {
		t.Fatalf("garbage: %v", err)
	}
}

func TestBundleUntrustedSigner(t *testing.T) {
	p := newTestPKI(t)
	stranger := newTestPKI(t)
	b, _ := exportBundle(t, p, stranger)
	data, _ := proto.Marshal(b)
	if _, err := VerifyBundle(data, p.roots()); ReasonOf(err) != ReasonSignerUntrusted {
		t.Fatalf("got %v, want %s", err, ReasonSignerUntrusted)
	}
}

func TestBundleBadRecordSignature(t *testing.T) {
	p := newTestPKI(t)
	l := startLedger(t, testConfig(p, t.TempDir()))
	r := testRecord(1, "EE/GOV/1/off", "")
	r.ConsumerSignature = batchSign(t, p, []byte("another digest"))
	appendWait(t, l.Ledger, r, nil)
	waitStamped(t, l.Ledger)
	b, err := l.Export(r.MessageId)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := proto.Marshal(b)
	if _, err := VerifyBundle(data, p.roots()); ReasonOf(err) != ReasonRecordSignature {
		t.Fatalf("got %v, want %s", err, ReasonRecordSignature)
	}
}

// FuzzVerifyBundle feeds arbitrary bundles (and so records, entries, bodies,
// proofs, checkpoints and tokens) to the verifier: no panics, and nothing
// but the real bundle's records ever verifies.
func FuzzVerifyBundle(f *testing.F) {
	p := newTestPKI(f)
	good, l := exportBundle(f, p, p)
	l.stop(f)
	data, _ := proto.Marshal(good)
	f.Add(data)
	f.Add([]byte{})
	f.Add([]byte{0x08, 0x01})
	roots := p.roots()
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := VerifyBundle(b, roots)
		if err != nil {
			if ReasonOf(err) == "" {
				t.Fatalf("error without reason: %v", err)
			}
			return
		}
		for _, r := range v.Records {
			if !bytes.Equal(r.Raw, good.Items[0].Entry) {
				t.Fatalf("a forged entry verified: %x", r.Raw)
			}
		}
	})
}

const cryptoSHA256 = crypto.SHA256
