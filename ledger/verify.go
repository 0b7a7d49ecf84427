package ledger

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/ledger/merkle"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/tsa"
)

// Reason names what failed when a bundle does not verify. Reasons are
// stable: scripts branch on them.
type Reason string

// Reasons of VerifyError.
const (
	ReasonBundleMalformed      Reason = "BUNDLE_MALFORMED"
	ReasonCheckpointMalformed  Reason = "CHECKPOINT_MALFORMED"
	ReasonCheckpointSignature  Reason = "CHECKPOINT_SIGNATURE_INVALID"
	ReasonSignerUntrusted      Reason = "SIGNER_UNTRUSTED"
	ReasonTimestampMissing     Reason = "TIMESTAMP_MISSING"
	ReasonTimestampInvalid     Reason = "TIMESTAMP_INVALID"
	ReasonTimestampMismatch    Reason = "TIMESTAMP_MISMATCH"
	ReasonEntryMalformed       Reason = "ENTRY_MALFORMED"
	ReasonInclusionProof       Reason = "INCLUSION_PROOF_INVALID"
	ReasonBodyMismatch         Reason = "BODY_DIGEST_MISMATCH"
	ReasonBodyMalformed        Reason = "BODY_MALFORMED"
	ReasonRecordSignature      Reason = "RECORD_SIGNATURE_INVALID"
	ReasonConsistencyProof     Reason = "CONSISTENCY_PROOF_INVALID"
	ReasonTreeMismatch         Reason = "TREE_MISMATCH"
	ReasonIndexMismatch        Reason = "INDEX_MISMATCH"
	ReasonStoreCorrupt         Reason = "STORE_CORRUPT"
	ReasonCheckpointUnverified Reason = "CHECKPOINT_UNVERIFIED"
	// ReasonTruncated: Check found checkpoints over records the ledger no
	// longer holds.
	ReasonTruncated Reason = "LEDGER_TRUNCATED"
	// ReasonRolledBack: the ledger holds fewer records than a checkpoint it
	// signed earlier (CheckOptions.Against).
	ReasonRolledBack Reason = "LEDGER_ROLLED_BACK"
	// ReasonForked: the ledger's tree differs from a checkpoint it signed
	// earlier at that checkpoint's size (CheckOptions.Against).
	ReasonForked Reason = "LEDGER_FORKED"
	// ReasonOriginMismatch: checkpoints of different nodes.
	ReasonOriginMismatch Reason = "ORIGIN_MISMATCH"
)

// VerifyError is a verification failure: what failed, for which item of the
// bundle (-1: not item-specific), and why.
type VerifyError struct {
	Reason Reason
	Item   int
	Err    error
}

func (e *VerifyError) Error() string {
	if e.Item >= 0 {
		return fmt.Sprintf("%s: item %d: %v", e.Reason, e.Item, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Reason, e.Err)
}

func (e *VerifyError) Unwrap() error { return e.Err }

func fail(r Reason, item int, format string, args ...any) *VerifyError {
	return &VerifyError{Reason: r, Item: item, Err: fmt.Errorf(format, args...)}
}

// ReasonOf returns the Reason of a *VerifyError in err's chain, or "".
func ReasonOf(err error) Reason {
	var ve *VerifyError
	if errors.As(err, &ve) {
		return ve.Reason
	}
	return ""
}

// Verified is what a valid bundle proves.
type Verified struct {
	Origin         string
	TreeSize       uint64
	Root           []byte
	CheckpointTime time.Time
	// StampTime is the time-stamp authority's time: the checkpoint, and so
	// every record in the bundle, existed then.
	StampTime time.Time
	// StampDigest is what the token stamps (for openssl ts -verify -digest).
	StampDigest []byte
	Signer      string // SPIFFE ID of the checkpoint signer
	Records     []*Stored
	// Bodies is the number of bodies checked against their records.
	Bodies int
	// RecordSignatures is the number of consumer and provider signatures
	// checked; UncheckedSignatures counts those without a certificate chain.
	RecordSignatures    int
	UncheckedSignatures int
}

// VerifyBundle checks a serialized EvidenceBundle offline against the trust
// bundle roots: the time-stamp token (RFC 3161, TSA certificate chaining to
// roots), the checkpoint signature and its signer's certificate (pki
// KindSigning, valid at the stamp time), every record's inclusion in the
// checkpoint, every body against its record, and the consumer and provider
// signatures that carry a certificate chain. The error is a *VerifyError.
func VerifyBundle(data []byte, roots []*x509.Certificate) (*Verified, error) {
	b := &ledgerv1.EvidenceBundle{}
	if err := proto.Unmarshal(data, b); err != nil {
		return nil, fail(ReasonBundleMalformed, -1, "decode: %v", err)
	}
	if b.GetVersion() != 1 {
		return nil, fail(ReasonBundleMalformed, -1, "version %d, want 1", b.GetVersion())
	}
	if len(b.GetItems()) == 0 || b.GetCheckpoint() == nil {
		return nil, fail(ReasonBundleMalformed, -1, "no records or no checkpoint")
	}
	sc := b.GetCheckpoint()
	cp, signer, err := checkCheckpointSignature(sc)
	if err != nil {
		return nil, err
	}
	v := &Verified{Origin: cp.GetOrigin(), TreeSize: cp.GetTreeSize(), Root: cp.GetRootHash(),
		CheckpointTime: cp.GetTime().AsTime(), StampDigest: StampDigest(sc)}
	if len(sc.GetTimestampToken()) == 0 {
		return nil, fail(ReasonTimestampMissing, -1, "checkpoint %d is not time-stamped", cp.GetTreeSize())
	}
	tok, err := tsa.VerifyToken(sc.GetTimestampToken(), v.StampDigest, roots)
	switch {
	case errors.Is(err, tsa.ErrImprint):
		return nil, fail(ReasonTimestampMismatch, -1, "token does not stamp this checkpoint: %v", err)
	case err != nil:
		return nil, fail(ReasonTimestampInvalid, -1, "%v", err)
	}
	v.StampTime = tok.GenTime
	id, err := pki.Verify(signer, roots, pki.KindSigning, v.StampTime)
	if err != nil {
		return nil, fail(ReasonSignerUntrusted, -1, "checkpoint signer: %v", err)
	}
	v.Signer = id.String()
	if err := originSignedBy(v.Origin, id); err != nil {
		return nil, fail(ReasonOriginMismatch, -1, "%v", err)
	}
	var root merkle.Hash
	copy(root[:], cp.GetRootHash())
	for i, item := range b.GetItems() {
		s := &Stored{Raw: item.GetEntry(), Entry: &ledgerv1.Entry{}, Record: &ledgerv1.Record{}}
		if err := proto.Unmarshal(item.GetEntry(), s.Entry); err != nil {
			return nil, fail(ReasonEntryMalformed, i, "entry: %v", err)
		}
		if err := proto.Unmarshal(s.Entry.GetRecord(), s.Record); err != nil {
			return nil, fail(ReasonEntryMalformed, i, "record: %v", err)
		}
		s.Index = s.Entry.GetIndex()
		path, err := toHashes(item.GetInclusionPath())
		if err != nil {
			return nil, fail(ReasonInclusionProof, i, "%v", err)
		}
		if err := merkle.VerifyInclusion(s.Index, cp.GetTreeSize(), merkle.HashLeaf(item.GetEntry()), path, root); err != nil {
			return nil, fail(ReasonInclusionProof, i, "record %d is not in the checkpoint's tree: %v", s.Index, err)
		}
		if len(item.GetBody()) > 0 {
			if sum := sha256.Sum256(item.GetBody()); !bytes.Equal(sum[:], s.Entry.GetBodyDigest()) {
				return nil, fail(ReasonBodyMismatch, i, "body does not match the record's body digest")
			}
			if err := proto.Unmarshal(item.GetBody(), &ledgerv1.Body{}); err != nil {
				return nil, fail(ReasonBodyMalformed, i, "%v", err)
			}
			v.Bodies++
		}
		for _, rs := range []struct {
			sig    *nodev1.BatchSignature
			digest []byte
			who    string
		}{
			{s.Record.GetConsumerSignature(), s.Record.GetRequestDigest(), "consumer"},
			{s.Record.GetProviderSignature(), s.Record.GetResponseDigest(), "provider"},
		} {
			if rs.sig == nil {
				continue
			}
			if len(rs.sig.GetSignerChain()) == 0 {
				v.UncheckedSignatures++
				continue
			}
			if err := verifyBatchSignature(rs.sig, rs.digest, roots, v.StampTime); err != nil {
				return nil, fail(ReasonRecordSignature, i, "%s signature: %v", rs.who, err)
			}
			v.RecordSignatures++
		}
		v.Records = append(v.Records, s)
	}
	return v, nil
}

// originSignedBy checks that the node a checkpoint names as its origin is
// the node whose certificate signed it (their SPIFFE paths agree; the
// trust domain is the one the roots certified): a node cannot pass off a
// checkpoint as another's ledger.
func originSignedBy(origin string, signer spiffeid.ID) error {
	n, err := ident.ParseNode(origin)
	if err != nil {
		return fmt.Errorf("checkpoint origin %q is not a node: %v", origin, err)
	}
	want, err := ident.NodeSPIFFEID(signer.TrustDomain(), n)
	if err != nil {
		return fmt.Errorf("checkpoint origin %q: %v", origin, err)
	}
	if want != signer {
		return fmt.Errorf("the checkpoint says it is the ledger of %s, but %s signed it", origin, signer)
	}
	return nil
}

func toHashes(raw [][]byte) ([]merkle.Hash, error) {
	out := make([]merkle.Hash, len(raw))
	for i, r := range raw {
		if len(r) != merkle.HashSize {
			return nil, fmt.Errorf("proof hash %d has %d bytes", i, len(r))
		}
		copy(out[i][:], r)
	}
	return out, nil
}

// checkCheckpointSignature decodes a signed checkpoint and checks its
// signature with the key of its first certificate (trust is checked later).
func checkCheckpointSignature(sc *ledgerv1.SignedCheckpoint) (*ledgerv1.Checkpoint, *x509.Certificate, error) {
	cp := &ledgerv1.Checkpoint{}
	if err := proto.Unmarshal(sc.GetCheckpoint(), cp); err != nil {
		return nil, nil, fail(ReasonCheckpointMalformed, -1, "decode: %v", err)
	}
	if len(cp.GetRootHash()) != merkle.HashSize || cp.GetTreeSize() == 0 || cp.GetTime() == nil {
		return nil, nil, fail(ReasonCheckpointMalformed, -1, "missing size, root or time")
	}
	if len(sc.GetSignerChain()) == 0 {
		return nil, nil, fail(ReasonSignerUntrusted, -1, "no signer certificate")
	}
	cert, err := x509.ParseCertificate(sc.GetSignerChain()[0])
	if err != nil {
		return nil, nil, fail(ReasonSignerUntrusted, -1, "signer certificate: %v", err)
	}
	msg := append([]byte(checkpointPrefix), sc.GetCheckpoint()...)
	if err := verifySig(sc.GetAlgorithm(), cert.PublicKey, msg, sc.GetSignature()); err != nil {
		return nil, nil, fail(ReasonCheckpointSignature, -1, "%v", err)
	}
	return cp, cert, nil
}

func verifySig(alg nodev1.SignatureAlgorithm, pub crypto.PublicKey, msg, sig []byte) error {
	switch alg {
	case nodev1.SignatureAlgorithm_SIGNATURE_ALGORITHM_ECDSA_P256_SHA256:
		k, ok := pub.(*ecdsa.PublicKey)
		if !ok {
			return fmt.Errorf("algorithm %v but key %T", alg, pub)
		}
		h := sha256.Sum256(msg)
		if !ecdsa.VerifyASN1(k, h[:], sig) {
			return errors.New("signature does not verify")
		}
	case nodev1.SignatureAlgorithm_SIGNATURE_ALGORITHM_ED25519:
		k, ok := pub.(ed25519.PublicKey)
		if !ok {
			return fmt.Errorf("algorithm %v but key %T", alg, pub)
		}
		if !ed25519.Verify(k, msg, sig) {
			return errors.New("signature does not verify")
		}
	default:
		return fmt.Errorf("unknown signature algorithm %v", alg)
	}
	return nil
}

// verifyBatchSignature checks a node's batch signature over digest, as
// defined in sild/node/v1/signature.proto.
func verifyBatchSignature(s *nodev1.BatchSignature, digest []byte, roots []*x509.Certificate, at time.Time) error {
	cert, err := x509.ParseCertificate(s.GetSignerChain()[0])
	if err != nil {
		return fmt.Errorf("signer certificate: %w", err)
	}
	path, err := toHashes(s.GetInclusionPath())
	if err != nil {
		return err
	}
	root, err := merkle.RootFromInclusionProof(s.GetLeafIndex(), s.GetTreeSize(), merkle.HashLeaf(digest), path)
	if err != nil {
		return err
	}
	msg := append([]byte("sild-batch-v1"), binary.BigEndian.AppendUint64(nil, s.GetTreeSize())...)
	msg = append(msg, root[:]...)
	if err := verifySig(s.GetAlgorithm(), cert.PublicKey, msg, s.GetRootSignature()); err != nil {
		return err
	}
	if _, err := pki.Verify(cert, roots, pki.KindSigning, at); err != nil {
		return err
	}
	return nil
}
