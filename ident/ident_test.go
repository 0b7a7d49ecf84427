package ident

import (
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
)

func TestParseValid(t *testing.T) {
	for _, s := range []string{
		"EE/GOV/70000310/licensing",
		"FI/COM/1234567-8/pop(reg)",
		"EE/GOV/a'b+c,d-e.f=g?h/x",
		"ee/gov/x/y", // case is kept, not folded
		strings.Repeat("A", 255) + "/B/C/D",
	} {
		t.Run(s[:min(len(s), 30)], func(t *testing.T) {
			sub, err := ParseSubsystem(s)
			if err != nil {
				t.Fatalf("ParseSubsystem(%q): %v", s, err)
			}
			if sub.String() != s {
				t.Fatalf("String() = %q, want %q", sub.String(), s)
			}
			node, err := ParseNode(s)
			if err != nil || node.String() != s {
				t.Fatalf("ParseNode(%q) = %v, %v", s, node, err)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, in string
		parse    func(string) error
		want     string
	}{
		{"empty member code", "EE/GOV/", member, "member code: empty"},
		{"empty instance", "/GOV/1", member, "instance: empty"},
		{"too few parts", "EE/GOV", member, "want 3 parts"},
		{"too many parts", "EE/GOV/1/x", member, "want 3 parts"},
		{"slash in subsystem", "EE/GOV/1/a/b", subsystem, "want 4 parts"},
		{"bad char", "EE/GOV/1/a b", subsystem, "subsystem code: character ' ' not allowed"},
		{"bad class char", "EE/G*V/1/a", subsystem, "member class: character '*' not allowed"},
		{"non ascii", "EE/GOV/1/ä", subsystem, "subsystem code: byte 0xc3 not allowed"},
		{"underscore", "EE/GOV/1/a_b", node, "node code: character '_' not allowed"},
		{"too long", "EE/GOV/" + strings.Repeat("1", 256) + "/x", node, "member code: longer than 255 bytes"},
		{"service empty", "EE/GOV/1/a/", service, "service name: empty"},
		{"service leading dot", "EE/GOV/1/a/.x.Y", service, "service name: empty component"},
		{"service dash", "EE/GOV/1/a/x-y.Z", service, "service name: character '-' not allowed"},
		{"service digit first", "EE/GOV/1/a/1x.Z", service, "service name: character '1' not allowed"},
		{"method dot", "EE/GOV/1/a/x.Y/Get.X", method, "method name: character '.' not allowed"},
		{"method empty", "EE/GOV/1/a/x.Y/", method, "method name: empty"},
		{"method dotdot", "EE/GOV/1/a/x.Y/..", method, "method name: character '.' not allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.parse(tc.in)
			if err == nil {
				t.Fatalf("parse(%q) succeeded", tc.in)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func member(s string) error    { _, err := ParseMember(s); return err }
func subsystem(s string) error { _, err := ParseSubsystem(s); return err }
func node(s string) error      { _, err := ParseNode(s); return err }
func service(s string) error   { _, err := ParseService(s); return err }
func method(s string) error    { _, err := ParseMethod(s); return err }

func TestParseFullMethod(t *testing.T) {
	svc, m, err := ParseFullMethod("/business.v1.Registry/GetCompany")
	if err != nil || svc != "business.v1.Registry" || m != "GetCompany" {
		t.Fatalf("got %q %q %v", svc, m, err)
	}
	for _, bad := range []string{
		"", "/", "business.v1.Registry/GetCompany", "/business.v1.Registry/", "/business.v1.Registry/Get/X",
		"/business.v1.Registry/../GetCompany", "/business.v1.Registry/%47etCompany", "//GetCompany",
		"/business.v1.Registry/GetCompany/", "/business.v1.Registry/Get\u0421ompany", "/a..b/C",
	} {
		if _, _, err := ParseFullMethod(bad); err == nil {
			t.Errorf("ParseFullMethod(%q) succeeded", bad)
		}
	}
}

func TestMethodParts(t *testing.T) {
	m, err := ParseMethod("EE/GOV/70000311/business-registry/business.v1.Registry/GetCompany")
	if err != nil {
		t.Fatal(err)
	}
	want := Method{Service{Subsystem{Member{"EE", "GOV", "70000311"}, "business-registry"}, "business.v1.Registry"}, "GetCompany"}
	if m != want {
		t.Fatalf("got %+v", m)
	}
	if m.FullMethod() != "/business.v1.Registry/GetCompany" {
		t.Fatalf("FullMethod = %q", m.FullMethod())
	}
}

func TestProtoRoundTrip(t *testing.T) {
	m, _ := ParseMethod("EE/GOV/1/sub/a.b.C/D")
	back, err := MethodFromProto(m.Proto())
	if err != nil || back != m {
		t.Fatalf("MethodFromProto = %v, %v", back, err)
	}
	p := m.Proto()
	p.Service.Subsystem.Member.MemberCode = "a/b"
	if _, err := MethodFromProto(p); err == nil {
		t.Fatal("invalid member code accepted from proto")
	}
	if _, err := NodeFromProto(nil); err == nil {
		t.Fatal("nil node accepted")
	}
	if !proto.Equal(m.Service.Proto(), m.Proto().GetService()) {
		t.Fatal("service proto differs")
	}
}

func TestSPIFFE(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	for _, s := range []string{"EE/GOV/70000310/ss1", "EE/CO(M)/a'b+c,d=e?/..", "EE/GOV/./x.y", "EE/GOV/...-/Z"} {
		n, err := ParseNode(s)
		if err != nil {
			t.Fatal(err)
		}
		id, err := NodeSPIFFEID(td, n)
		if err != nil {
			t.Fatalf("NodeSPIFFEID(%s): %v", s, err)
		}
		if !IsNodeSPIFFEID(id) {
			t.Fatalf("%s not recognised as node id", id)
		}
		back, err := NodeFromSPIFFEID(id, "EE")
		if err != nil || back != n {
			t.Fatalf("NodeFromSPIFFEID(%s) = %v, %v; want %v", id, back, err, n)
		}
	}
	n, _ := ParseNode("EE/GOV/70000310/ss1")
	id, _ := NodeSPIFFEID(td, n)
	if id.String() != "spiffe://ee.sild.test/node/GOV/70000310/ss1" {
		t.Fatalf("id = %s", id)
	}
	for _, bad := range []string{
		"spiffe://ee.sild.test/node/GOV/1",
		"spiffe://ee.sild.test/registry/r1",
		"spiffe://ee.sild.test/node/GOV/1/a_2",
		"spiffe://ee.sild.test/node/GOV/1/a_2G",
		"spiffe://ee.sild.test/node/GOV/1/a_2d", // lower-case hex is not canonical
		"spiffe://ee.sild.test/node/GOV/1/_41",  // escaped letter is not canonical
	} {
		if _, err := NodeFromSPIFFEID(spiffeid.RequireFromString(bad), "EE"); err == nil {
			t.Errorf("NodeFromSPIFFEID(%s) succeeded", bad)
		}
	}
	rid, err := RegistrySPIFFEID(td, "r1")
	if err != nil || rid.String() != "spiffe://ee.sild.test/registry/r1" || !IsRegistrySPIFFEID(rid) {
		t.Fatalf("RegistrySPIFFEID = %v, %v", rid, err)
	}
	if name, err := RegistryFromSPIFFEID(rid); err != nil || name != "r1" {
		t.Fatalf("RegistryFromSPIFFEID = %q, %v", name, err)
	}
}
