package ident

import (
	"fmt"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
)

// Conversions to and from the wire messages of sild.ident.v1. The From* functions
// validate what they read: a message from outside is never trusted.

// Proto returns m as a wire message.
func (m Member) Proto() *identv1.MemberId {
	return &identv1.MemberId{Instance: m.Instance, MemberClass: m.Class, MemberCode: m.Code}
}

// Proto returns s as a wire message.
func (s Subsystem) Proto() *identv1.SubsystemId {
	return &identv1.SubsystemId{Member: s.Member.Proto(), SubsystemCode: s.Code}
}

// Proto returns n as a wire message.
func (n Node) Proto() *identv1.NodeId {
	return &identv1.NodeId{Member: n.Member.Proto(), NodeCode: n.Code}
}

// Proto returns s as a wire message.
func (s Service) Proto() *identv1.ServiceId {
	return &identv1.ServiceId{Subsystem: s.Subsystem.Proto(), ServiceName: s.Name}
}

// Proto returns m as a wire message.
func (m Method) Proto() *identv1.MethodId {
	return &identv1.MethodId{Service: m.Service.Proto(), MethodName: m.Name}
}

// MemberFromProto validates and converts p.
func MemberFromProto(p *identv1.MemberId) (Member, error) {
	if p == nil {
		return Member{}, fmt.Errorf("%w: member: missing", ErrInvalid)
	}
	m := Member{Instance: p.GetInstance(), Class: p.GetMemberClass(), Code: p.GetMemberCode()}
	return m, m.Validate()
}

// SubsystemFromProto validates and converts p.
func SubsystemFromProto(p *identv1.SubsystemId) (Subsystem, error) {
	if p == nil {
		return Subsystem{}, fmt.Errorf("%w: subsystem: missing", ErrInvalid)
	}
	m, err := MemberFromProto(p.GetMember())
	if err != nil {
		return Subsystem{}, err
	}
	s := Subsystem{Member: m, Code: p.GetSubsystemCode()}
	return s, checkCode("subsystem code", s.Code)
}

// NodeFromProto validates and converts p.
func NodeFromProto(p *identv1.NodeId) (Node, error) {
	if p == nil {
		return Node{}, fmt.Errorf("%w: node: missing", ErrInvalid)
	}
	m, err := MemberFromProto(p.GetMember())
	if err != nil {
		return Node{}, err
	}
	n := Node{Member: m, Code: p.GetNodeCode()}
	return n, checkCode("node code", n.Code)
}

// ServiceFromProto validates and converts p.
func ServiceFromProto(p *identv1.ServiceId) (Service, error) {
	if p == nil {
		return Service{}, fmt.Errorf("%w: service: missing", ErrInvalid)
	}
	sub, err := SubsystemFromProto(p.GetSubsystem())
	if err != nil {
		return Service{}, err
	}
	s := Service{Subsystem: sub, Name: p.GetServiceName()}
	return s, CheckServiceName(s.Name)
}

// MethodFromProto validates and converts p.
func MethodFromProto(p *identv1.MethodId) (Method, error) {
	if p == nil {
		return Method{}, fmt.Errorf("%w: method: missing", ErrInvalid)
	}
	svc, err := ServiceFromProto(p.GetService())
	if err != nil {
		return Method{}, err
	}
	m := Method{Service: svc, Name: p.GetMethodName()}
	return m, CheckMethodName(m.Name)
}
