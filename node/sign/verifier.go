package sign

import (
	"crypto/sha256"
	"crypto/x509"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultCacheSize is the number of entries a Verifier keeps per cache.
const DefaultCacheSize = 4096

// Verifier verifies signatures like Verify, remembering what it has checked:
// certificates already found acceptable under the same roots (their validity
// period is still checked against each call's time), and root signatures
// already verified for the same certificate. A receiving node sees many
// signatures of one batch, so most calls cost only the hashes of the
// inclusion path. A cached certificate is re-checked only against its own
// validity period (pki issues no certificate outliving its root). It is safe
// for concurrent use.
type Verifier struct {
	size int

	mu       sync.Mutex
	certs    map[[sha256.Size]byte]spiffeid.ID       // by certificate and roots
	roots    map[[sha256.Size]byte]struct{}          // verified root signatures
	parsed   map[[sha256.Size]byte]*x509.Certificate // sent certificates, by DER hash
	checking map[[sha256.Size]byte]*rootCheck        // root signatures being verified

	rootChecks atomic.Uint64
}

// rootCheck is one verification of a root signature that other callers
// with the same signature wait for: the signatures of one batch arrive
// together, and all but one would otherwise miss the cache.
type rootCheck struct {
	done chan struct{}
	err  error // set before done is closed
}

// NewVerifier returns a Verifier keeping at most size entries per cache
// (DefaultCacheSize if size <= 0). A full cache is emptied and starts over.
func NewVerifier(size int) *Verifier {
	if size <= 0 {
		size = DefaultCacheSize
	}
	return &Verifier{size: size, certs: map[[sha256.Size]byte]spiffeid.ID{}, roots: map[[sha256.Size]byte]struct{}{},
		parsed: map[[sha256.Size]byte]*x509.Certificate{}, checking: map[[sha256.Size]byte]*rootCheck{}}
}

// Verify has the contract of the package function Verify.
func (v *Verifier) Verify(s *Signature, digest []byte, cert *x509.Certificate, roots []*x509.Certificate, at time.Time) (spiffeid.ID, error) {
	if cert == nil && len(s.Chain) > 0 {
		cert = v.parse(s.Chain[0]) // nil if it does not parse: resolveCert reports it
	}
	cert, err := s.resolveCert(cert)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if at.Before(cert.NotBefore) || at.After(cert.NotAfter) {
		// Not cached: let the full check report it.
		return Verify(s, digest, cert, roots, at)
	}
	h := sha256.New()
	h.Write(cert.Raw)
	for _, r := range roots {
		h.Write(r.Raw)
	}
	var certKey [sha256.Size]byte
	h.Sum(certKey[:0])

	v.mu.Lock()
	id, certOK := v.certs[certKey]
	v.mu.Unlock()
	if !certOK {
		if id, err = CheckCertificate(cert, roots, at); err != nil {
			return spiffeid.ID{}, err
		}
		v.mu.Lock()
		if len(v.certs) >= v.size {
			clear(v.certs)
		}
		v.certs[certKey] = id
		v.mu.Unlock()
	}

	root, err := s.Root(digest)
	if err != nil {
		return spiffeid.ID{}, err
	}
	h.Reset()
	h.Write(cert.Raw)
	h.Write(signedBytes(s.TreeSize, &root))
	h.Write([]byte{byte(s.Algorithm)})
	h.Write(s.RootSignature)
	var sigKey [sha256.Size]byte
	h.Sum(sigKey[:0])
	v.mu.Lock()
	if _, ok := v.roots[sigKey]; ok {
		v.mu.Unlock()
		return id, nil
	}
	if c := v.checking[sigKey]; c != nil {
		// The same root signature, certificate and root: the same answer.
		v.mu.Unlock()
		<-c.done
		if c.err != nil {
			return spiffeid.ID{}, c.err
		}
		return id, nil
	}
	c := &rootCheck{done: make(chan struct{})}
	v.checking[sigKey] = c
	v.mu.Unlock()

	v.rootChecks.Add(1)
	c.err = verifyRoot(s, &root, cert.PublicKey)
	v.mu.Lock()
	delete(v.checking, sigKey)
	if c.err == nil {
		if len(v.roots) >= v.size {
			clear(v.roots)
		}
		v.roots[sigKey] = struct{}{}
	}
	v.mu.Unlock()
	close(c.done)
	if c.err != nil {
		return spiffeid.ID{}, c.err
	}
	return id, nil
}

// RootChecks returns how many root signatures v has verified (public-key
// operations; the signatures it was asked about that shared a verified root
// signature cost none).
func (v *Verifier) RootChecks() uint64 { return v.rootChecks.Load() }

// parse returns the parsed certificate of der from the cache, parsing it the
// first time; nil if it does not parse.
func (v *Verifier) parse(der []byte) *x509.Certificate {
	key := sha256.Sum256(der)
	v.mu.Lock()
	c := v.parsed[key]
	v.mu.Unlock()
	if c != nil {
		return c
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil
	}
	v.mu.Lock()
	if len(v.parsed) >= v.size {
		clear(v.parsed)
	}
	v.parsed[key] = c
	v.mu.Unlock()
	return c
}
