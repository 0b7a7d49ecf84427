// Package ident holds the identifiers of the sild mesh (instance, member,
// subsystem, node, service and method), their one canonical string form, the one
// parser for it, the conversion to and from the protobuf messages of
// sild.ident.v1, and the mapping to and from SPIFFE IDs.
//
// Canonical forms (parts separated by '/'):
//
//	member     INSTANCE/CLASS/CODE                   EE/GOV/70000310
//	subsystem  MEMBER/SUBSYSTEM                      EE/GOV/70000310/licensing
//	node       MEMBER/NODE                           EE/GOV/70000310/ss1
//	service    SUBSYSTEM/SERVICE                     EE/GOV/70000311/business-registry/business.v1.Registry
//	method     SERVICE/METHOD                        .../business.v1.Registry/GetCompany
//
// Instance, class, member, subsystem and node codes allow the X-Road character set
// A-Z a-z 0-9 ' ( ) + , - . = ? and are 1-255 bytes long. Identifiers are case
// sensitive: "ee" and "EE" are different instances. Service and method names are
// gRPC names and follow protobuf's rules instead: a service is a dotted sequence of
// protobuf identifiers ([A-Za-z_][A-Za-z0-9_]*), a method one identifier, each at
// most 255 bytes.
//
// A subsystem and a node have the same shape; the caller says which one it
// expects by calling ParseSubsystem or ParseNode.
//
// All values are comparable and may be used as map keys. The zero value of each
// type is invalid; values returned by the parsers are always valid.
package ident

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalid is wrapped by every parse and validation error of this package.
var ErrInvalid = errors.New("invalid identifier")

// MaxPartLen is the longest code or name allowed for one part, in bytes.
const MaxPartLen = 255

// Member names an organisation of an instance.
type Member struct {
	Instance string
	Class    string
	Code     string
}

// Subsystem names a member's system that calls or serves.
type Subsystem struct {
	Member Member
	Code   string
}

// Node names a security server owned by a member.
type Node struct {
	Member Member
	Code   string
}

// Service names a gRPC service offered by a subsystem.
type Service struct {
	Subsystem Subsystem
	Name      string // fully qualified gRPC service name, e.g. business.v1.Registry
}

// Method names one method of a service.
type Method struct {
	Service Service
	Name    string
}

func (m Member) String() string    { return m.Instance + "/" + m.Class + "/" + m.Code }
func (s Subsystem) String() string { return s.Member.String() + "/" + s.Code }
func (n Node) String() string      { return n.Member.String() + "/" + n.Code }
func (s Service) String() string   { return s.Subsystem.String() + "/" + s.Name }
func (m Method) String() string    { return m.Service.String() + "/" + m.Name }

// FullMethod is the gRPC method path, e.g. /business.v1.Registry/GetCompany.
func (m Method) FullMethod() string { return "/" + m.Service.Name + "/" + m.Name }

// Validate reports whether every part of m is well formed.
func (m Member) Validate() error {
	if err := checkCode("instance", m.Instance); err != nil {
		return err
	}
	if err := checkCode("member class", m.Class); err != nil {
		return err
	}
	return checkCode("member code", m.Code)
}

// Validate reports whether every part of s is well formed.
func (s Subsystem) Validate() error {
	if err := s.Member.Validate(); err != nil {
		return err
	}
	return checkCode("subsystem code", s.Code)
}

// Validate reports whether every part of n is well formed.
func (n Node) Validate() error {
	if err := n.Member.Validate(); err != nil {
		return err
	}
	return checkCode("node code", n.Code)
}

// Validate reports whether every part of s is well formed.
func (s Service) Validate() error {
	if err := s.Subsystem.Validate(); err != nil {
		return err
	}
	return CheckServiceName(s.Name)
}

// Validate reports whether every part of m is well formed.
func (m Method) Validate() error {
	if err := m.Service.Validate(); err != nil {
		return err
	}
	return CheckMethodName(m.Name)
}

// ParseMember parses INSTANCE/CLASS/CODE.
func ParseMember(s string) (Member, error) {
	p, err := split(s, "member", 3)
	if err != nil {
		return Member{}, err
	}
	m := Member{Instance: p[0], Class: p[1], Code: p[2]}
	return m, m.Validate()
}

// ParseSubsystem parses INSTANCE/CLASS/CODE/SUBSYSTEM.
func ParseSubsystem(s string) (Subsystem, error) {
	p, err := split(s, "subsystem", 4)
	if err != nil {
		return Subsystem{}, err
	}
	v := Subsystem{Member{p[0], p[1], p[2]}, p[3]}
	if err := v.Validate(); err != nil {
		return Subsystem{}, err
	}
	return v, nil
}

// ParseNode parses INSTANCE/CLASS/CODE/NODE.
func ParseNode(s string) (Node, error) {
	p, err := split(s, "node", 4)
	if err != nil {
		return Node{}, err
	}
	v := Node{Member{p[0], p[1], p[2]}, p[3]}
	if err := v.Validate(); err != nil {
		return Node{}, err
	}
	return v, nil
}

// ParseService parses INSTANCE/CLASS/CODE/SUBSYSTEM/SERVICE.
func ParseService(s string) (Service, error) {
	p, err := split(s, "service", 5)
	if err != nil {
		return Service{}, err
	}
	v := Service{Subsystem{Member{p[0], p[1], p[2]}, p[3]}, p[4]}
	if err := v.Validate(); err != nil {
		return Service{}, err
	}
	return v, nil
}

// ParseMethod parses INSTANCE/CLASS/CODE/SUBSYSTEM/SERVICE/METHOD.
func ParseMethod(s string) (Method, error) {
	p, err := split(s, "method", 6)
	if err != nil {
		return Method{}, err
	}
	v := Method{Service{Subsystem{Member{p[0], p[1], p[2]}, p[3]}, p[4]}, p[5]}
	if err := v.Validate(); err != nil {
		return Method{}, err
	}
	return v, nil
}

// ParseFullMethod parses a gRPC method path "/pkg.Service/Method" into its
// service and method names. It accepts nothing else: no trailing or doubled
// slashes, no dot segments, no escapes, exactly the bytes a gRPC client sends.
func ParseFullMethod(path string) (service, method string, err error) {
	rest, ok := strings.CutPrefix(path, "/")
	if !ok {
		return "", "", fmt.Errorf("%w: method path %q: must start with '/'", ErrInvalid, clip(path))
	}
	service, method, ok = strings.Cut(rest, "/")
	if !ok {
		return "", "", fmt.Errorf("%w: method path %q: want /service/method", ErrInvalid, clip(path))
	}
	if err := CheckServiceName(service); err != nil {
		return "", "", err
	}
	if err := CheckMethodName(method); err != nil {
		return "", "", err
	}
	return service, method, nil
}

// CheckServiceName validates a fully qualified gRPC service name
// (e.g. business.v1.Registry).
func CheckServiceName(s string) error {
	if s == "" {
		return fmt.Errorf("%w: service name: empty", ErrInvalid)
	}
	if len(s) > MaxPartLen {
		return fmt.Errorf("%w: service name: longer than %d bytes", ErrInvalid, MaxPartLen)
	}
	for _, part := range strings.Split(s, ".") {
		if err := checkProtoIdent("service name", part); err != nil {
			return err
		}
	}
	return nil
}

// CheckMethodName validates a gRPC method name (e.g. GetCompany).
func CheckMethodName(s string) error {
	if s == "" {
		return fmt.Errorf("%w: method name: empty", ErrInvalid)
	}
	if len(s) > MaxPartLen {
		return fmt.Errorf("%w: method name: longer than %d bytes", ErrInvalid, MaxPartLen)
	}
	return checkProtoIdent("method name", s)
}

func checkProtoIdent(what, s string) error {
	if s == "" {
		return fmt.Errorf("%w: %s: empty component", ErrInvalid, what)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c == '_':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return fmt.Errorf("%w: %s: %s not allowed", ErrInvalid, what, describe(s, i))
		}
	}
	return nil
}

// split cuts s into exactly n non-checked parts.
func split(s, what string, n int) ([]string, error) {
	p := strings.Split(s, "/")
	if len(p) != n {
		return nil, fmt.Errorf("%w: %s %q: want %d parts separated by '/', got %d", ErrInvalid, what, clip(s), n, len(p))
	}
	return p, nil
}

// CheckCode validates one instance, class, member, subsystem or node code. what
// names the part in the error ("member code").
func CheckCode(what, s string) error { return checkCode(what, s) }

func checkCode(what, s string) error {
	if s == "" {
		return fmt.Errorf("%w: %s: empty", ErrInvalid, what)
	}
	if len(s) > MaxPartLen {
		return fmt.Errorf("%w: %s: longer than %d bytes", ErrInvalid, what, MaxPartLen)
	}
	for i := 0; i < len(s); i++ {
		if !codeChar(s[i]) {
			return fmt.Errorf("%w: %s: %s not allowed", ErrInvalid, what, describe(s, i))
		}
	}
	return nil
}

func codeChar(c byte) bool {
	switch {
	case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("'()+,-.=?", c) >= 0
}

// describe names the byte at s[i] for an error message.
func describe(s string, i int) string {
	c := s[i]
	if c >= 0x20 && c < 0x7f {
		return fmt.Sprintf("character %q", rune(c))
	}
	return fmt.Sprintf("byte 0x%02x", c)
}

// clip shortens untrusted input before it is quoted in an error.
func clip(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
