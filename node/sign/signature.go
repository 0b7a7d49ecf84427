package sign

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	"github.com/sildmesh/sild/pki"
)

// Limits of a decodable signature.
const (
	MaxTreeSize = 1 << 16 // largest batch
	maxChain    = 3       // certificates in a chain
	maxCertLen  = 4096    // bytes of one DER certificate
	maxSigLen   = 72      // bytes of an ASN.1 ECDSA P-256 signature
	// MaxEncodedLen bounds the encoded size of a signature.
	MaxEncodedLen = 15 << 10
)

// Algorithm is the algorithm of a root signature.
type Algorithm int32

// Algorithms, numbered as sild.node.v1.SignatureAlgorithm.
const (
	AlgECDSAP256SHA256 = Algorithm(nodev1.SignatureAlgorithm_SIGNATURE_ALGORITHM_ECDSA_P256_SHA256)
	AlgEd25519         = Algorithm(nodev1.SignatureAlgorithm_SIGNATURE_ALGORITHM_ED25519)
)

func (a Algorithm) String() string {
	switch a {
	case AlgECDSAP256SHA256:
		return "ecdsa-p256-sha256"
	case AlgEd25519:
		return "ed25519"
	}
	return fmt.Sprintf("algorithm(%d)", int32(a))
}

// Signature proves that a signer signed one digest: the root signature of
// its batch, who signed it, and the digest's place in the batch's tree.
// Signatures of one batch share RootSignature and Chain; treat them as
// read-only.
type Signature struct {
	Algorithm     Algorithm
	RootSignature []byte
	// Chain holds DER certificates, leaf first; empty when the signer sends
	// its key id only.
	Chain     [][]byte
	KeyID     string // "sha256:<hex>" of the signer's SubjectPublicKeyInfo
	LeafIndex uint64
	TreeSize  uint64
	Path      [][HashSize]byte // leaf to root
}

// Errors of decoding and verification, checked with errors.Is.
var (
	// ErrMalformed is wrapped by every Unmarshal and structural error.
	ErrMalformed = errors.New("malformed signature")
	// ErrInvalid is wrapped when a signature does not verify.
	ErrInvalid = errors.New("invalid signature")
	// ErrCertificate is wrapped when the signer's certificate is not
	// acceptable (wrong kind, untrusted, expired, not the signing key).
	ErrCertificate = errors.New("unacceptable signing certificate")
)

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// check validates the structure of s (not the signature itself).
func (s *Signature) check() error {
	switch s.Algorithm {
	case AlgECDSAP256SHA256:
		if len(s.RootSignature) == 0 || len(s.RootSignature) > maxSigLen {
			return malformed("ECDSA root signature of %d bytes", len(s.RootSignature))
		}
	case AlgEd25519:
		if len(s.RootSignature) != ed25519.SignatureSize {
			return malformed("Ed25519 root signature of %d bytes", len(s.RootSignature))
		}
	default:
		return malformed("unknown algorithm %d", int32(s.Algorithm))
	}
	if len(s.Chain) > maxChain {
		return malformed("chain of %d certificates", len(s.Chain))
	}
	for i, c := range s.Chain {
		if len(c) == 0 || len(c) > maxCertLen {
			return malformed("certificate %d of %d bytes", i, len(c))
		}
	}
	if s.KeyID == "" && len(s.Chain) == 0 {
		return malformed("neither key id nor certificate chain")
	}
	if s.KeyID != "" && !validKeyID(s.KeyID) {
		return malformed("key id is not sha256:<hex>")
	}
	if s.TreeSize == 0 || s.TreeSize > MaxTreeSize {
		return malformed("tree size %d", s.TreeSize)
	}
	if s.LeafIndex >= s.TreeSize {
		return malformed("leaf index %d not below tree size %d", s.LeafIndex, s.TreeSize)
	}
	if want := pathLen(s.LeafIndex, s.TreeSize); len(s.Path) != want {
		return malformed("inclusion path of %d hashes, want %d", len(s.Path), want)
	}
	return nil
}

func validKeyID(s string) bool {
	if len(s) != len("sha256:")+2*sha256.Size || s[:7] != "sha256:" {
		return false
	}
	for i := 7; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Proto returns s as a wire message.
func (s *Signature) Proto() *nodev1.BatchSignature {
	p := &nodev1.BatchSignature{
		Algorithm:     nodev1.SignatureAlgorithm(s.Algorithm),
		RootSignature: s.RootSignature,
		SignerChain:   s.Chain,
		KeyId:         s.KeyID,
		LeafIndex:     s.LeafIndex,
		TreeSize:      s.TreeSize,
	}
	if len(s.Path) > 0 {
		p.InclusionPath = make([][]byte, len(s.Path))
		for i := range s.Path {
			p.InclusionPath[i] = s.Path[i][:]
		}
	}
	return p
}

// FromProto validates and converts p.
func FromProto(p *nodev1.BatchSignature) (*Signature, error) {
	if p == nil {
		return nil, malformed("missing")
	}
	if len(p.ProtoReflect().GetUnknown()) > 0 {
		return nil, malformed("unknown fields")
	}
	s := &Signature{
		Algorithm:     Algorithm(p.GetAlgorithm()),
		RootSignature: p.GetRootSignature(),
		Chain:         p.GetSignerChain(),
		KeyID:         p.GetKeyId(),
		LeafIndex:     p.GetLeafIndex(),
		TreeSize:      p.GetTreeSize(),
	}
	if len(p.GetInclusionPath()) > 64 {
		return nil, malformed("inclusion path of %d hashes", len(p.GetInclusionPath()))
	}
	if len(p.GetInclusionPath()) > 0 {
		s.Path = make([][HashSize]byte, len(p.GetInclusionPath()))
		for i, h := range p.GetInclusionPath() {
			if len(h) != HashSize {
				return nil, malformed("inclusion path hash %d of %d bytes", i, len(h))
			}
			copy(s.Path[i][:], h)
		}
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	return s, nil
}

// Marshal returns the canonical (deterministic) encoding of s.
func (s *Signature) Marshal() ([]byte, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(s.Proto())
}

// Unmarshal decodes a signature strictly: b must be at most MaxEncodedLen
// bytes, the canonical encoding of a well-formed signature (no unknown
// fields, no repeated or out-of-order fields, no default values written).
func Unmarshal(b []byte) (*Signature, error) {
	if len(b) > MaxEncodedLen {
		return nil, malformed("%d bytes, at most %d allowed", len(b), MaxEncodedLen)
	}
	var p nodev1.BatchSignature
	if err := (proto.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(b, &p); err != nil {
		return nil, malformed("%v", err)
	}
	s, err := FromProto(&p)
	if err != nil {
		return nil, err
	}
	again, err := proto.MarshalOptions{Deterministic: true}.Marshal(&p)
	if err != nil || !bytes.Equal(again, b) {
		return nil, malformed("not the canonical encoding")
	}
	return s, nil
}

// Root recomputes the root of the batch tree from digest and s's path.
func (s *Signature) Root(digest []byte) ([HashSize]byte, error) {
	if len(digest) != HashSize {
		return [HashSize]byte{}, ErrDigestSize
	}
	if err := s.check(); err != nil {
		return [HashSize]byte{}, err
	}
	r, err := rootFromPath(leafHash(digest), s.LeafIndex, s.TreeSize, s.Path)
	if err != nil {
		return r, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return r, nil
}

// VerifyKey checks that s signs digest with the key pub. It checks neither a
// certificate nor the key id; Verify does.
func VerifyKey(s *Signature, digest []byte, pub crypto.PublicKey) error {
	root, err := s.Root(digest)
	if err != nil {
		return err
	}
	return verifyRoot(s, &root, pub)
}

// verifyRoot checks s.RootSignature over root (computed by s.Root) with pub.
func verifyRoot(s *Signature, root *[HashSize]byte, pub crypto.PublicKey) error {
	msg := signedBytes(s.TreeSize, root)
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if s.Algorithm != AlgECDSAP256SHA256 {
			return fmt.Errorf("%w: %s signature for an ECDSA key", ErrInvalid, s.Algorithm)
		}
		sum := sha256.Sum256(msg)
		if !ecdsa.VerifyASN1(k, sum[:], s.RootSignature) {
			return fmt.Errorf("%w: root signature does not verify", ErrInvalid)
		}
	case ed25519.PublicKey:
		if s.Algorithm != AlgEd25519 {
			return fmt.Errorf("%w: %s signature for an Ed25519 key", ErrInvalid, s.Algorithm)
		}
		if !ed25519.Verify(k, msg, s.RootSignature) {
			return fmt.Errorf("%w: root signature does not verify", ErrInvalid)
		}
	default:
		return fmt.Errorf("%w: key type %T", ErrCertificate, pub)
	}
	return nil
}

// Verify checks that s signs digest, that the signer's certificate is a
// message-signing certificate (pki.KindSigning: digitalSignature and
// contentCommitment, no extended key usage) issued under one of roots and valid
// at time at, and that it certifies the signing key. It returns the signer's
// SPIFFE ID.
//
// cert is the signer's certificate as the verifier knows it; if nil, the
// first certificate of s.Chain is used. If both are given they must be the
// same certificate.
func Verify(s *Signature, digest []byte, cert *x509.Certificate, roots []*x509.Certificate, at time.Time) (spiffeid.ID, error) {
	cert, err := s.resolveCert(cert)
	if err != nil {
		return spiffeid.ID{}, err
	}
	id, err := CheckCertificate(cert, roots, at)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if err := VerifyKey(s, digest, cert.PublicKey); err != nil {
		return spiffeid.ID{}, err
	}
	return id, nil
}

// resolveCert checks s's structure and returns the certificate to verify it
// with: cert, or the first of s.Chain; it checks that both agree and that the
// key id names the certificate's key.
func (s *Signature) resolveCert(cert *x509.Certificate) (*x509.Certificate, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	switch {
	case cert == nil && len(s.Chain) == 0:
		return nil, fmt.Errorf("%w: no certificate given or sent", ErrCertificate)
	case cert == nil:
		c, err := x509.ParseCertificate(s.Chain[0])
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		cert = c
	case len(s.Chain) > 0 && !bytes.Equal(s.Chain[0], cert.Raw):
		return nil, fmt.Errorf("%w: sent certificate is not the expected one", ErrCertificate)
	}
	if s.KeyID != "" && !keyIDNames(s.KeyID, cert) {
		return nil, fmt.Errorf("%w: key id does not match the certificate", ErrCertificate)
	}
	return cert, nil
}

// keyIDNames reports whether kid is pki.KeyHash of cert's key. It tries
// the certificate's own encoding of the key first (pki.CertKeyHash) and
// re-encodes the key only when that differs: this runs for every signature
// received.
func keyIDNames(kid string, cert *x509.Certificate) bool {
	if kid == pki.CertKeyHash(cert) {
		return true
	}
	h, err := pki.KeyHash(cert.PublicKey)
	return err == nil && h == kid
}

// CheckCertificate checks that cert is a message-signing certificate issued
// under one of roots and valid at time at, and returns its SPIFFE ID. Besides
// pki.Verify it insists on the contentCommitment usage and on no extended
// key usage, so that neither an SVID nor the TSA's certificate passes for a
// signing certificate.
func CheckCertificate(cert *x509.Certificate, roots []*x509.Certificate, at time.Time) (spiffeid.ID, error) {
	if cert.KeyUsage&x509.KeyUsageContentCommitment == 0 {
		return spiffeid.ID{}, fmt.Errorf("%w: no contentCommitment key usage", ErrCertificate)
	}
	if len(cert.ExtKeyUsage) > 0 || len(cert.UnknownExtKeyUsage) > 0 {
		return spiffeid.ID{}, fmt.Errorf("%w: certificate has an extended key usage (TLS or time-stamping), not a signing certificate", ErrCertificate)
	}
	if _, err := algorithmOf(cert.PublicKey); err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %v", ErrCertificate, err)
	}
	id, err := pki.Verify(cert, roots, pki.KindSigning, at)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %v", ErrCertificate, err)
	}
	return id, nil
}
