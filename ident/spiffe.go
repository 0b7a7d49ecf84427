package ident

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// SPIFFE IDs of the mesh. Each instance is one trust domain (its registry's
// configuration names it, e.g. ee.sild.test). Within it:
//
//	node      spiffe://<td>/node/<class>/<member>/<node>
//	registry  spiffe://<td>/registry/<server>
//
// SPIFFE path segments allow only A-Z a-z 0-9 . - _, so the remaining code
// characters ' ( ) + , = ? are written as '_' and two upper-case hex digits; '_'
// never occurs in a code, so the escape is unambiguous. A segment made only of dots
// has its dots escaped too, since "." and ".." are not allowed as segments.

// NodeSPIFFEID returns the SPIFFE ID of node n in trust domain td.
func NodeSPIFFEID(td spiffeid.TrustDomain, n Node) (spiffeid.ID, error) {
	if err := n.Validate(); err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromSegments(td, "node", escape(n.Member.Class), escape(n.Member.Code), escape(n.Code))
}

// NodeFromSPIFFEID returns the node named by id. instance is the instance whose
// trust domain id belongs to; the caller knows it from the trust bundle that
// verified id.
func NodeFromSPIFFEID(id spiffeid.ID, instance string) (Node, error) {
	seg, err := segments(id, "node", 3)
	if err != nil {
		return Node{}, err
	}
	n := Node{Member{Instance: instance, Class: seg[0], Code: seg[1]}, seg[2]}
	if err := n.Validate(); err != nil {
		return Node{}, err
	}
	return n, nil
}

// RegistrySPIFFEID returns the SPIFFE ID of registry server server in td.
func RegistrySPIFFEID(td spiffeid.TrustDomain, server string) (spiffeid.ID, error) {
	if err := checkCode("registry server", server); err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromSegments(td, "registry", escape(server))
}

// RegistryFromSPIFFEID returns the registry server name in id.
func RegistryFromSPIFFEID(id spiffeid.ID) (string, error) {
	seg, err := segments(id, "registry", 1)
	if err != nil {
		return "", err
	}
	if err := checkCode("registry server", seg[0]); err != nil {
		return "", err
	}
	return seg[0], nil
}

// IsNodeSPIFFEID reports whether id has the shape of a node's SPIFFE ID.
func IsNodeSPIFFEID(id spiffeid.ID) bool { return strings.HasPrefix(id.Path(), "/node/") }

// IsRegistrySPIFFEID reports whether id has the shape of a registry server's ID.
func IsRegistrySPIFFEID(id spiffeid.ID) bool { return strings.HasPrefix(id.Path(), "/registry/") }

func segments(id spiffeid.ID, kind string, n int) ([]string, error) {
	if id.IsZero() {
		return nil, fmt.Errorf("%w: spiffe id: empty", ErrInvalid)
	}
	p := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(p) != n+1 || p[0] != kind {
		return nil, fmt.Errorf("%w: spiffe id %q: not a %s id", ErrInvalid, clip(id.String()), kind)
	}
	out := make([]string, n)
	for i, s := range p[1:] {
		u, err := unescape(s)
		if err != nil {
			return nil, fmt.Errorf("%w: spiffe id %q: %v", ErrInvalid, clip(id.String()), err)
		}
		out[i] = u
	}
	return out, nil
}

const hexDigits = "0123456789ABCDEF"

func escape(s string) string {
	allDots := strings.Trim(s, ".") == ""
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c == '.' && !allDots) || c == '-' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('_')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&0xf])
	}
	return b.String()
}

func unescape(s string) (string, error) {
	if !strings.Contains(s, "_") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '_' {
			b.WriteByte(s[i])
			continue
		}
		if i+3 > len(s) {
			return "", fmt.Errorf("truncated escape")
		}
		hi, lo := strings.IndexByte(hexDigits, s[i+1]), strings.IndexByte(hexDigits, s[i+2])
		if hi < 0 || lo < 0 {
			return "", fmt.Errorf("bad escape")
		}
		b.WriteByte(byte(hi<<4 | lo))
		i += 2
	}
	out := b.String()
	if escape(out) != s {
		return "", fmt.Errorf("non-canonical escape")
	}
	return out, nil
}
