package pki

import (
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/sildmesh/sild/ident"
)

// ParseDERs parses DER certificates, as trust bundles and chains travel in
// sild's protos.
func ParseDERs(ders [][]byte) ([]*x509.Certificate, error) {
	out := make([]*x509.Certificate, 0, len(ders))
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// TrustDomainOf returns the trust domain named by the URI SAN of the first
// root that has one (a sild root certifies spiffe://<td>).
func TrustDomainOf(roots []*x509.Certificate) (spiffeid.TrustDomain, error) {
	for _, r := range roots {
		if len(r.URIs) == 1 {
			if td, err := spiffeid.TrustDomainFromURI(r.URIs[0]); err == nil {
				return td, nil
			}
		}
	}
	return spiffeid.TrustDomain{}, errors.New("trust bundle: no root names a SPIFFE trust domain (URI SAN)")
}

// AuthorizeRegistry accepts the registry servers of td
// (spiffe://<td>/registry/...) and nobody else: what a node, an operator's
// client or another registry server expects at the other end.
func AuthorizeRegistry(td spiffeid.TrustDomain) tlsconfig.Authorizer {
	return tlsconfig.AdaptMatcher(func(id spiffeid.ID) error {
		if id.TrustDomain() != td || !ident.IsRegistrySPIFFEID(id) {
			return fmt.Errorf("%s is not a registry server of %s", id, td)
		}
		return nil
	})
}
