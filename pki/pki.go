// Package pki is the certificate logic of an ecosystem's CA: creating the root,
// issuing X.509-SVIDs (mTLS identity), message-signing certificates and the
// time-stamping authority's certificate, and checking certificates against a
// trust bundle. go-spiffe has no CA, so certificates are made here with
// crypto/x509 and are valid X.509-SVIDs (x509svid.ParseRaw accepts them).
//
// Keys are ECDSA P-256. Every issued certificate carries exactly one URI SAN, the
// SPIFFE ID of its holder, so the holder of a signing or time-stamping key is as
// well identified as the holder of an SVID.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Kind is what a certificate issued by the CA may be used for.
type Kind int

const (
	// KindSVID is an X.509-SVID for mTLS (server and client auth).
	KindSVID Kind = iota + 1
	// KindSigning certifies a message- and checkpoint-signing key.
	KindSigning
	// KindTSA certifies the RFC 3161 time-stamping key (critical EKU timeStamping).
	KindTSA
)

func (k Kind) String() string {
	switch k {
	case KindSVID:
		return "svid"
	case KindSigning:
		return "signing"
	case KindTSA:
		return "tsa"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// ErrInvalidCSR is returned for a certificate request that does not parse or
// whose signature does not verify.
var ErrInvalidCSR = errors.New("invalid certificate request")

// clockSkew back-dates NotBefore so that peers with slightly slow clocks accept
// a fresh certificate.
const clockSkew = 5 * time.Minute

// CA is an ecosystem's certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// TrustDomain is the trust domain the CA is the root of.
	TrustDomain spiffeid.TrustDomain
}

// NewKey returns a fresh ECDSA P-256 key.
func NewKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// NewCA creates a self-signed root for td, valid for validity from now. name is
// the subject common name (e.g. "EE sild root").
func NewCA(td spiffeid.TrustDomain, name string, validity time.Duration, now time.Time) (*CA, error) {
	if td.IsZero() {
		return nil, errors.New("new ca: empty trust domain")
	}
	key, err := NewKey()
	if err != nil {
		return nil, fmt.Errorf("new ca: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"sild"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("new ca: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new ca: %w", err)
	}
	return &CA{Cert: cert, Key: key, TrustDomain: td}, nil
}

// Issue certifies pub as a certificate of kind k for id, valid for ttl from now
// (never beyond the CA's own expiry).
func (ca *CA) Issue(k Kind, pub crypto.PublicKey, id spiffeid.ID, ttl time.Duration, now time.Time) (*x509.Certificate, error) {
	if id.TrustDomain() != ca.TrustDomain {
		return nil, fmt.Errorf("issue %s: %s is not in trust domain %s", k, id, ca.TrustDomain)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("issue %s: ttl must be positive", k)
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"sild"}, CommonName: id.String()},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{id.URL()},
	}
	switch k {
	case KindSVID:
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	case KindSigning:
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment
	case KindTSA:
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment
		// RFC 3161 requires the timeStamping EKU to be critical; crypto/x509
		// writes ExtKeyUsage non-critical, and ExtraExtensions take precedence.
		eku, err := asn1.Marshal([]asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 8}})
		if err != nil {
			return nil, fmt.Errorf("issue %s: %w", k, err)
		}
		tmpl.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 37}, Critical: true, Value: eku}}
	default:
		return nil, fmt.Errorf("issue: unknown kind %d", int(k))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("issue %s: %w", k, err)
	}
	return x509.ParseCertificate(der)
}

// ParseCSR parses a DER certificate request and checks its self-signature. Only
// the public key is used: the CA decides the identity, not the requester.
func ParseCSR(der []byte) (crypto.PublicKey, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%w: ECDSA curve %s not accepted, want P-256", ErrInvalidCSR, k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return nil, fmt.Errorf("%w: key type %T not accepted, want ECDSA P-256 or Ed25519", ErrInvalidCSR, csr.PublicKey)
	}
	return csr.PublicKey, nil
}

// NewCSR returns a DER certificate request for key.
func NewCSR(key crypto.Signer) ([]byte, error) {
	return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
}

// KeyHash returns "sha256:<hex>" of the DER SubjectPublicKeyInfo of pub; it is
// how the configuration names a node's keys.
func KeyHash(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("key hash: %w", err)
	}
	return sha256Name(der), nil
}

// CertKeyHash is KeyHash of cert's key computed from the certificate's own
// encoding of it, without re-encoding the key: the same string for every
// certificate whose SubjectPublicKeyInfo is in canonical form, as all that
// pki issues are. It is cheap enough to run on every signature received.
func CertKeyHash(cert *x509.Certificate) string { return sha256Name(cert.RawSubjectPublicKeyInfo) }

// Fingerprint returns "sha256:<hex>" of a certificate's DER.
func Fingerprint(cert *x509.Certificate) string { return sha256Name(cert.Raw) }

// sha256Name is the "sha256:<hex>" form every hash name here takes.
func sha256Name(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Verify checks that cert chains to one of roots at time at, is fit for kind k,
// and names a SPIFFE ID in one of the roots' trust domain; it returns that ID.
func Verify(cert *x509.Certificate, roots []*x509.Certificate, k Kind, at time.Time) (spiffeid.ID, error) {
	if len(cert.URIs) != 1 {
		return spiffeid.ID{}, fmt.Errorf("verify %s certificate: want exactly one URI SAN, got %d", k, len(cert.URIs))
	}
	id, err := spiffeid.FromURI(cert.URIs[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("verify %s certificate: %w", k, err)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	opts := x509.VerifyOptions{Roots: pool, CurrentTime: at}
	switch k {
	case KindSVID:
		opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
	case KindSigning:
		// A signing certificate has contentCommitment and no extended key
		// usage: an SVID (TLS) or a TSA certificate is not one.
		if cert.KeyUsage&x509.KeyUsageDigitalSignature == 0 || cert.KeyUsage&x509.KeyUsageContentCommitment == 0 {
			return spiffeid.ID{}, fmt.Errorf("verify %s certificate: needs digitalSignature and contentCommitment key usage", k)
		}
		if len(cert.ExtKeyUsage) > 0 || len(cert.UnknownExtKeyUsage) > 0 {
			return spiffeid.ID{}, fmt.Errorf("verify %s certificate: has an extended key usage (TLS or time-stamping)", k)
		}
		opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
	case KindTSA:
		if len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageTimeStamping {
			return spiffeid.ID{}, fmt.Errorf("verify %s certificate: extended key usage must be timeStamping only", k)
		}
		opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageTimeStamping}
	}
	chains, err := cert.Verify(opts)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("verify %s certificate: %w", k, err)
	}
	root := chains[0][len(chains[0])-1]
	if len(root.URIs) == 1 {
		if rtd, err := spiffeid.TrustDomainFromURI(root.URIs[0]); err == nil && rtd != id.TrustDomain() {
			return spiffeid.ID{}, fmt.Errorf("verify %s certificate: %s is not in the trust domain %s of its root", k, id, rtd)
		}
	}
	return id, nil
}

// EncodeCerts returns certs as concatenated PEM blocks.
func EncodeCerts(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// ReadCerts reads a PEM file of certificates (at least one, and nothing
// else, as DecodeCerts); its errors name the file.
func ReadCerts(file string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	certs, err := DecodeCerts(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return certs, nil
}

// DecodeCerts parses concatenated PEM certificates; it fails on anything else.
func DecodeCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("decode certificates: unexpected PEM block %q", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("decode certificates: %w", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("decode certificates: no certificate found")
	}
	return out, nil
}

// EncodeKey returns key as a PKCS #8 PEM block.
func EncodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// DecodeKey parses a PKCS #8 PEM private key.
func DecodeKey(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, errors.New("decode key: no PKCS #8 PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("decode key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("decode key: %T is not a signer", k)
	}
	return s, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return n.Add(n, big.NewInt(1))
}
