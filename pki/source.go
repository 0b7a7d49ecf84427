package pki

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Rotating sources for go-spiffe's tlsconfig. tlsconfig asks its sources for
// the SVID and the bundle on every handshake, so swapping what a source holds
// with Set takes effect for the next connection, without rebuilding any
// tls.Config or restarting a listener:
//
//	svids := pki.NewSVIDSource(svid)
//	bundles := pki.NewBundleSource(x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.Cert}))
//	cfg := tlsconfig.MTLSServerConfig(svids, bundles, authorizer)
//	...
//	svids.Set(renewed) // on renewal
//	bundles.Set(eeBundle, fiBundle) // on a new configuration

// ErrNoSVID is returned by an SVIDSource that holds no SVID.
var ErrNoSVID = errors.New("no x509-svid")

// SVIDSource is an x509svid.Source whose SVID can be replaced at run time. The
// zero value holds no SVID. It is safe for concurrent use.
type SVIDSource struct {
	mu   sync.RWMutex
	svid *x509svid.SVID
}

var _ x509svid.Source = (*SVIDSource)(nil)

// NewSVIDSource returns a source holding svid (which may be nil).
func NewSVIDSource(svid *x509svid.SVID) *SVIDSource {
	return &SVIDSource{svid: svid}
}

// Set replaces the SVID; handshakes from now on present svid.
func (s *SVIDSource) Set(svid *x509svid.SVID) {
	s.mu.Lock()
	s.svid = svid
	s.mu.Unlock()
}

// GetX509SVID returns the current SVID, or ErrNoSVID.
func (s *SVIDSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.svid == nil {
		return nil, ErrNoSVID
	}
	return s.svid, nil
}

// NewSVID makes an X.509-SVID of a key and its certificate chain (leaf first,
// without the root), checking what go-spiffe checks: one SPIFFE ID URI SAN, a
// leaf that is not a CA, digitalSignature usage, and a key matching the leaf.
func NewSVID(key crypto.Signer, chain ...*x509.Certificate) (*x509svid.SVID, error) {
	if len(chain) == 0 {
		return nil, errors.New("new svid: no certificate")
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("new svid: %w", err)
	}
	var certDER []byte
	for _, c := range chain {
		certDER = append(certDER, c.Raw...)
	}
	svid, err := x509svid.ParseRaw(certDER, keyDER)
	if err != nil {
		return nil, fmt.Errorf("new svid: %w", err)
	}
	return svid, nil
}

// BundleSource is an x509bundle.Source whose bundles (one per trust domain)
// can be replaced at run time. It is safe for concurrent use.
type BundleSource struct {
	mu  sync.RWMutex
	set *x509bundle.Set
}

var _ x509bundle.Source = (*BundleSource)(nil)

// NewBundleSource returns a source holding bundles (for distinct trust domains;
// a later one for the same trust domain wins).
func NewBundleSource(bundles ...*x509bundle.Bundle) *BundleSource {
	s := &BundleSource{}
	s.Set(bundles...)
	return s
}

// Set replaces all bundles with bundles: trust domains not named any more are
// no longer trusted for new handshakes. The bundles are cloned, so the caller
// may keep changing its own.
func (s *BundleSource) Set(bundles ...*x509bundle.Bundle) {
	set := x509bundle.NewSet()
	for _, b := range bundles {
		if b != nil {
			set.Add(b.Clone())
		}
	}
	s.mu.Lock()
	s.set = set
	s.mu.Unlock()
}

// Bundles returns copies of the bundles held, sorted by trust domain.
func (s *BundleSource) Bundles() []*x509bundle.Bundle {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*x509bundle.Bundle
	for _, b := range s.set.Bundles() {
		out = append(out, b.Clone())
	}
	return out
}

// GetX509BundleForTrustDomain returns the bundle of td, or an error if td is
// not trusted.
func (s *BundleSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	set := s.set
	s.mu.RUnlock()
	return set.GetX509BundleForTrustDomain(td)
}
