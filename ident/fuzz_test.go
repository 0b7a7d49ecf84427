package ident

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var seeds = []string{
	"EE/GOV/70000310", "EE/GOV/70000310/licensing", "EE/GOV/70000311/business-registry/business.v1.Registry",
	"EE/GOV/70000311/business-registry/business.v1.Registry/GetCompany", "", "/", "//", "EE/GOV/1/a b",
	"EE/GOV/1/..", "EE/GOV/1/x/_a.B/c", "EE/GOV/\xff/x",
}

// FuzzParse checks that no input panics any parser and that every accepted
// input prints back to itself and parses to the same value.
func FuzzParse(f *testing.F) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if m, err := ParseMember(s); err == nil {
			roundTrip(t, s, m.String(), func() bool { m2, err := ParseMember(m.String()); return err == nil && m2 == m })
		}
		if v, err := ParseSubsystem(s); err == nil {
			roundTrip(t, s, v.String(), func() bool { v2, err := ParseSubsystem(v.String()); return err == nil && v2 == v })
			back, err := SubsystemFromProto(v.Proto())
			if err != nil || back != v {
				t.Fatalf("proto round trip of %q: %v %v", s, back, err)
			}
		}
		if v, err := ParseNode(s); err == nil {
			roundTrip(t, s, v.String(), func() bool { v2, err := ParseNode(v.String()); return err == nil && v2 == v })
		}
		if v, err := ParseService(s); err == nil {
			roundTrip(t, s, v.String(), func() bool { v2, err := ParseService(v.String()); return err == nil && v2 == v })
		}
		if v, err := ParseMethod(s); err == nil {
			roundTrip(t, s, v.String(), func() bool { v2, err := ParseMethod(v.String()); return err == nil && v2 == v })
			back, err := MethodFromProto(v.Proto())
			if err != nil || back != v {
				t.Fatalf("proto round trip of %q: %v %v", s, back, err)
			}
			svc, name, err := ParseFullMethod(v.FullMethod())
			if err != nil || svc != v.Service.Name || name != v.Name {
				t.Fatalf("ParseFullMethod(%q) = %q %q %v", v.FullMethod(), svc, name, err)
			}
		}
		_, _, _ = ParseFullMethod(s)
	})
}

func roundTrip(t *testing.T, in, out string, same func() bool) {
	t.Helper()
	if in != out {
		t.Fatalf("String() of parsed %q = %q", in, out)
	}
	if !same() {
		t.Fatalf("Parse(String()) of %q differs", in)
	}
}

// FuzzSPIFFE checks that every valid node maps to a SPIFFE ID and back, and that
// no SPIFFE ID path makes NodeFromSPIFFEID panic or accept a non-canonical form.
func FuzzSPIFFE(f *testing.F) {
	f.Add("EE/GOV/1/ss1", "/node/GOV/1/ss1")
	f.Add("EE/C(1)/a?/..", "/node/C_281_29/a_3F/_2E_2E")
	td := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	f.Fuzz(func(t *testing.T, nodeStr, path string) {
		if n, err := ParseNode(nodeStr); err == nil {
			id, err := NodeSPIFFEID(td, n)
			if err != nil {
				t.Fatalf("NodeSPIFFEID(%q): %v", nodeStr, err)
			}
			back, err := NodeFromSPIFFEID(id, n.Member.Instance)
			if err != nil || back != n {
				t.Fatalf("SPIFFE round trip of %q via %s: %v %v", nodeStr, id, back, err)
			}
		}
		id, err := spiffeid.FromPath(td, path)
		if err != nil {
			return
		}
		if n, err := NodeFromSPIFFEID(id, "EE"); err == nil {
			again, err := NodeSPIFFEID(td, n)
			if err != nil || again != id {
				t.Fatalf("accepted non-canonical %s (canonical %s, %v)", id, again, err)
			}
		}
	})
}
