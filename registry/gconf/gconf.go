// Package gconf signs and verifies the global configuration, the versioned
// snapshot of an ecosystem that the registry publishes and every node uses.
//
// A SignedConfig holds the deterministic protobuf encoding of a GlobalConfig,
// an ECDSA or Ed25519 signature over it by the registry's configuration
// signing key, and that key's certificate chain (leaf first). Verify checks the
// chain against the ecosystem's root (pinned by the node when it joined), that
// the leaf is a signing certificate of a registry, the signature, and the
// expiry, and only then returns the configuration.
package gconf

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/pki"
)

// MaxMessageBytes bounds a message that carries a global configuration or
// a federated ecosystem's export directory (each with its catalogue of
// descriptor sets): what a node or a peer registry accepts. It leaves room
// for this ecosystem's catalogue (fsm.MaxCatalogueBytes) and a federated
// one's, far above gRPC's default of 4 MiB.
const MaxMessageBytes = 128 << 20

// DialOption lets a connection receive messages of up to MaxMessageBytes;
// every client that receives configurations or directories dials with it.
var DialOption = grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes))

// Errors of Verify.
var (
	ErrSignature = errors.New("global configuration: bad signature")
	ErrExpired   = errors.New("global configuration: expired")
	ErrSigner    = errors.New("global configuration: signer not trusted")
	ErrMalformed = errors.New("global configuration: malformed")
)

// Sign encodes c and signs it with key, whose certificate chain is chain.
func Sign(c *registryv1.GlobalConfig, key crypto.Signer, chain ...*x509.Certificate) (*registryv1.SignedConfig, error) {
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("sign config: %w", err)
	}
	sig, err := signBytes(key, data)
	if err != nil {
		return nil, fmt.Errorf("sign config: %w", err)
	}
	sc := &registryv1.SignedConfig{Config: data, Signature: sig}
	for _, c := range chain {
		sc.SignerChain = append(sc.SignerChain, c.Raw)
	}
	return sc, nil
}

func signBytes(key crypto.Signer, data []byte) ([]byte, error) {
	if _, ok := key.Public().(ed25519.PublicKey); ok {
		return key.Sign(rand.Reader, data, crypto.Hash(0))
	}
	d := sha256.Sum256(data)
	return key.Sign(rand.Reader, d[:], crypto.SHA256)
}

// Verify checks sc against the trusted roots at time now and returns the
// configuration. It fails if the signer is not a registry signing
// certificate chaining to roots, if the signature does not match, or if the
// configuration has expired.
func Verify(sc *registryv1.SignedConfig, roots []*x509.Certificate, now time.Time) (*registryv1.GlobalConfig, error) {
	if len(sc.GetSignerChain()) == 0 || len(sc.GetSignature()) == 0 {
		return nil, fmt.Errorf("%w: no signature", ErrMalformed)
	}
	leaf, err := x509.ParseCertificate(sc.GetSignerChain()[0])
	if err != nil {
		return nil, fmt.Errorf("%w: signer certificate: %v", ErrMalformed, err)
	}
	id, err := pki.Verify(leaf, roots, pki.KindSigning, now)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSigner, err)
	}
	if !ident.IsRegistrySPIFFEID(id) {
		return nil, fmt.Errorf("%w: %s is not a registry", ErrSigner, id)
	}
	if err := verifyBytes(leaf.PublicKey, sc.GetConfig(), sc.GetSignature()); err != nil {
		return nil, err
	}
	var c registryv1.GlobalConfig
	if err := proto.Unmarshal(sc.GetConfig(), &c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if c.GetTrustDomain() != id.TrustDomain().Name() {
		return nil, fmt.Errorf("%w: signed by %s for trust domain %q", ErrSigner, id, c.GetTrustDomain())
	}
	if !now.Before(c.GetExpiresAt().AsTime()) {
		return nil, fmt.Errorf("%w: at %s", ErrExpired, c.GetExpiresAt().AsTime().UTC().Format(time.RFC3339))
	}
	return &c, nil
}

func verifyBytes(pub crypto.PublicKey, data, sig []byte) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		d := sha256.Sum256(data)
		if ecdsa.VerifyASN1(k, d[:], sig) {
			return nil
		}
	case ed25519.PublicKey:
		if ed25519.Verify(k, data, sig) {
			return nil
		}
	}
	return ErrSignature
}
