// Package access holds a provider node's access rights and serves the node's
// admin API over them. A right lets a client (one subsystem, or every member
// subsystem of a global group of an instance) call a service of a subsystem
// the node serves, either every method of it or one method.
//
// Rights live in Badger on the node itself (synced writes: a granted or
// revoked right is durable when the call returns) and in an in-memory index,
// rebuilt at Open and updated on every write, that Store.Allowed reads
// without locks on the call path.
//
// String forms at the edges: a subsystem client is a subsystem identifier
// (EE/GOV/70000310/licensing), a group client INSTANCE:CODE
// (EE:health-workers); the two cannot be confused since identifiers never
// contain ':'.
//
// Wiring in the node daemon:
//
//	store, err := access.Open(access.Config{Dir: filepath.Join(dataDir, "access"), Logger: log})
//	defer store.Close()
//	admin, err := access.NewServer(access.ServerConfig{Store: store, Logger: log,
//		Serves: func(s ident.Subsystem) bool { return hosted(currentConfig(), s) }})
//	g := grpc.NewServer(access.ServerOptions(apikey.Static(map[string]string{
//		cfg.AdminKeyHash: access.RoleAdmin, cfg.ReaderKeyHash: access.RoleReader}))...)
//	admin.Register(g) // on the admin listener
//
// and on the provider's call path, with groups := access.MemberGroups(gc)
// rebuilt when the global configuration changes:
//
//	if !store.Allowed(req.Client, groups[req.Client], target, req.Method) { refuse ACCESS_DENIED }
package access

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	"github.com/sildmesh/sild/ident"
)

// Group names a global group of an instance.
type Group struct {
	Instance string
	Code     string
}

// ParseGroup parses INSTANCE:CODE.
func ParseGroup(s string) (Group, error) {
	inst, code, ok := strings.Cut(s, ":")
	if !ok {
		return Group{}, fmt.Errorf("%w: group %q is not INSTANCE:CODE", ident.ErrInvalid, s)
	}
	g := Group{Instance: inst, Code: code}
	return g, g.Validate()
}

// Validate reports whether both parts of g are well formed.
func (g Group) Validate() error {
	if err := ident.CheckCode("instance", g.Instance); err != nil {
		return err
	}
	return ident.CheckCode("group code", g.Code)
}

func (g Group) String() string { return g.Instance + ":" + g.Code }

// Proto returns g as a wire message.
func (g Group) Proto() *nodev1.GlobalGroupRef {
	return &nodev1.GlobalGroupRef{Instance: g.Instance, GroupCode: g.Code}
}

// Client is who a right is granted to: exactly one of a subsystem or a group.
type Client struct {
	Subsystem ident.Subsystem // set for a subsystem client
	Group     Group           // set for a group client
}

// SubsystemClient returns the client for subsystem s.
func SubsystemClient(s ident.Subsystem) Client { return Client{Subsystem: s} }

// GroupClient returns the client for group g.
func GroupClient(g Group) Client { return Client{Group: g} }

// IsGroup reports whether c is a group.
func (c Client) IsGroup() bool { return c.Group != Group{} }

// ParseClient parses a subsystem identifier or a group INSTANCE:CODE.
func ParseClient(s string) (Client, error) {
	if strings.Contains(s, ":") {
		g, err := ParseGroup(s)
		return Client{Group: g}, err
	}
	sub, err := ident.ParseSubsystem(s)
	return Client{Subsystem: sub}, err
}

// Validate reports whether c is exactly one well-formed subsystem or group.
func (c Client) Validate() error {
	isSub := c.Subsystem != ident.Subsystem{}
	switch {
	case isSub && c.IsGroup():
		return fmt.Errorf("%w: client is both a subsystem and a group", ident.ErrInvalid)
	case c.IsGroup():
		return c.Group.Validate()
	case isSub:
		return c.Subsystem.Validate()
	}
	return fmt.Errorf("%w: empty client", ident.ErrInvalid)
}

func (c Client) String() string {
	if c.IsGroup() {
		return c.Group.String()
	}
	return c.Subsystem.String()
}

// Proto returns c as a wire message.
func (c Client) Proto() *nodev1.AccessClient {
	if c.IsGroup() {
		return &nodev1.AccessClient{Kind: &nodev1.AccessClient_Group{Group: c.Group.Proto()}}
	}
	return &nodev1.AccessClient{Kind: &nodev1.AccessClient_Subsystem{Subsystem: c.Subsystem.Proto()}}
}

// FieldError is a validation error naming the offending field of a request
// (e.g. "right.service.service_name").
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field string, err error) error { return &FieldError{Field: field, Err: err} }

var errMissing = errors.New("missing")

// ClientFromProto validates and converts p; errors name the field under
// prefix.
func ClientFromProto(p *nodev1.AccessClient, prefix string) (Client, error) {
	switch k := p.GetKind().(type) {
	case *nodev1.AccessClient_Subsystem:
		s, err := subsystemFromProto(k.Subsystem, prefix+".subsystem")
		if err != nil {
			return Client{}, err
		}
		return Client{Subsystem: s}, nil
	case *nodev1.AccessClient_Group:
		g := Group{Instance: k.Group.GetInstance(), Code: k.Group.GetGroupCode()}
		if err := ident.CheckCode("instance", g.Instance); err != nil {
			return Client{}, fieldErr(prefix+".group.instance", err)
		}
		if err := ident.CheckCode("group code", g.Code); err != nil {
			return Client{}, fieldErr(prefix+".group.group_code", err)
		}
		return Client{Group: g}, nil
	}
	return Client{}, fieldErr(prefix, fmt.Errorf("%w: set subsystem or group", errMissing))
}

// Right lets Client call Service, or only its method Method.
type Right struct {
	Client  Client
	Service ident.Service
	// Method is a method name of Service; "" grants every method.
	Method string
	// GrantedAt is when the right was granted (set by Store.Grant).
	GrantedAt time.Time
}

// Validate reports whether r is well formed.
func (r Right) Validate() error {
	if err := r.Client.Validate(); err != nil {
		return fieldErr("client", err)
	}
	if err := r.Service.Validate(); err != nil {
		return fieldErr("service", err)
	}
	if r.Method != "" {
		if err := ident.CheckMethodName(r.Method); err != nil {
			return fieldErr("method_name", err)
		}
	}
	return nil
}

func (r Right) String() string {
	target := r.Service.String()
	if r.Method != "" {
		target += "/" + r.Method
	}
	return r.Client.String() + " -> " + target
}

// Proto returns r as a wire message.
func (r Right) Proto() *nodev1.AccessRight {
	p := &nodev1.AccessRight{Client: r.Client.Proto(), Service: r.Service.Proto(), MethodName: r.Method}
	if !r.GrantedAt.IsZero() {
		p.GrantedAt = timestamppb.New(r.GrantedAt)
	}
	return p
}

// RightFromProto validates and converts p; errors are *FieldError naming
// the field under prefix (e.g. "right").
func RightFromProto(p *nodev1.AccessRight, prefix string) (Right, error) {
	if p == nil {
		return Right{}, fieldErr(prefix, errMissing)
	}
	c, err := ClientFromProto(p.GetClient(), prefix+".client")
	if err != nil {
		return Right{}, err
	}
	svc, err := serviceFromProto(p.GetService(), prefix+".service")
	if err != nil {
		return Right{}, err
	}
	r := Right{Client: c, Service: svc, Method: p.GetMethodName()}
	if r.Method != "" {
		if err := ident.CheckMethodName(r.Method); err != nil {
			return Right{}, fieldErr(prefix+".method_name", err)
		}
	}
	if ts := p.GetGrantedAt(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			return Right{}, fieldErr(prefix+".granted_at", err)
		}
		r.GrantedAt = ts.AsTime()
	}
	return r, nil
}

// serviceFromProto converts p, naming the first bad field precisely.
func serviceFromProto(p *identv1.ServiceId, prefix string) (ident.Service, error) {
	if p == nil {
		return ident.Service{}, fieldErr(prefix, errMissing)
	}
	sub, err := subsystemFromProto(p.GetSubsystem(), prefix+".subsystem")
	if err != nil {
		return ident.Service{}, err
	}
	if err := ident.CheckServiceName(p.GetServiceName()); err != nil {
		return ident.Service{}, fieldErr(prefix+".service_name", err)
	}
	return ident.Service{Subsystem: sub, Name: p.GetServiceName()}, nil
}

// subsystemFromProto converts p, naming the first bad field precisely.
func subsystemFromProto(p *identv1.SubsystemId, prefix string) (ident.Subsystem, error) {
	if p == nil {
		return ident.Subsystem{}, fieldErr(prefix, errMissing)
	}
	m := p.GetMember()
	if m == nil {
		return ident.Subsystem{}, fieldErr(prefix+".member", errMissing)
	}
	for _, f := range []struct{ name, what, v string }{
		{"instance", "instance", m.GetInstance()},
		{"member_class", "member class", m.GetMemberClass()},
		{"member_code", "member code", m.GetMemberCode()},
	} {
		if err := ident.CheckCode(f.what, f.v); err != nil {
			return ident.Subsystem{}, fieldErr(prefix+".member."+f.name, err)
		}
	}
	if err := ident.CheckCode("subsystem code", p.GetSubsystemCode()); err != nil {
		return ident.Subsystem{}, fieldErr(prefix+".subsystem_code", err)
	}
	return ident.SubsystemFromProto(p)
}
