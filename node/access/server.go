package access

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/apikey"
	"github.com/sildmesh/sild/internal/rpcerr"
)

// Component is the rpcerr component of the node's admin API.
const Component = "node.admin"

// Roles of admin API keys, as returned by the apikey.LookupFunc.
const (
	// RoleAdmin may read and change everything.
	RoleAdmin = "admin"
	// RoleReader may only read (ListAccess).
	RoleReader = "reader"
)

// ServerOptions returns the gRPC server options that authenticate every call
// of the admin listener with lookup (bearer API keys, see package apikey).
func ServerOptions(lookup apikey.LookupFunc) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(apikey.UnaryServerInterceptor(lookup, Component)),
		grpc.ChainStreamInterceptor(apikey.StreamServerInterceptor(lookup, Component)),
	}
}

// ServerConfig configures the admin API server.
type ServerConfig struct {
	Store *Store
	// Serves reports whether this node serves subsystem s (from the current
	// global configuration). Rights may only be granted on served subsystems;
	// nil accepts every subsystem.
	Serves func(s ident.Subsystem) bool
	// Logger; nil discards.
	Logger *slog.Logger
}

// Server implements sild.node.v1.AdminService over a Store. It relies on the
// interceptors of ServerOptions to authenticate callers and refuses calls
// that carry no role.
type Server struct {
	nodev1.UnimplementedAdminServiceServer
	store  *Store
	serves func(ident.Subsystem) bool
	log    *slog.Logger
}

// NewServer returns the admin API server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("new admin server: Store is nil")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{store: cfg.Store, serves: cfg.Serves, log: cfg.Logger}, nil
}

// Register registers s on g.
func (s *Server) Register(g grpc.ServiceRegistrar) { nodev1.RegisterAdminServiceServer(g, s) }

func refuse(code codes.Code, reason, msg string) error {
	return rpcerr.New(code, reason, Component, msg)
}

// Authorize checks that the caller authenticated by ServerOptions' API-key
// interceptors has one of roles; other parts of the node's admin API use it
// too.
func Authorize(ctx context.Context, roles ...string) error {
	role, ok := apikey.Role(ctx)
	if !ok {
		return refuse(codes.Unauthenticated, rpcerr.ReasonUnauthenticated, "no authenticated caller")
	}
	for _, r := range roles {
		if r == role {
			return nil
		}
	}
	return refuse(codes.PermissionDenied, rpcerr.ReasonPermissionDenied, fmt.Sprintf("role %q may not do this", role))
}

// toStatus is the one table from this package's errors to gRPC statuses.
func (s *Server) toStatus(ctx context.Context, op string, err error) error {
	if st, ok := rpcerr.FromContext(err); ok {
		return st
	}
	var fe *FieldError
	switch {
	case errors.As(err, &fe) && errors.Is(fe.Err, ident.ErrInvalid):
		return refuse(codes.InvalidArgument, rpcerr.ReasonInvalidIdentifier, fe.Error())
	case errors.As(err, &fe):
		return refuse(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, fe.Error())
	case errors.Is(err, ErrNotFound):
		return refuse(codes.NotFound, rpcerr.ReasonNotFound, "no such access right")
	}
	s.log.ErrorContext(ctx, "admin call failed", "op", op, "err", err)
	return refuse(codes.Internal, rpcerr.ReasonInternal, "internal error")
}

// GrantAccess implements AdminService.
func (s *Server) GrantAccess(ctx context.Context, req *nodev1.GrantAccessRequest) (*nodev1.GrantAccessResponse, error) {
	if err := Authorize(ctx, RoleAdmin); err != nil {
		return nil, err
	}
	r, err := RightFromProto(req.GetRight(), "right")
	if err != nil {
		return nil, s.toStatus(ctx, "grant", err)
	}
	if s.serves != nil && !s.serves(r.Service.Subsystem) {
		return nil, refuse(codes.NotFound, rpcerr.ReasonUnknownTarget,
			fmt.Sprintf("right.service.subsystem: %s is not served by this node", r.Service.Subsystem))
	}
	stored, created, err := s.store.Grant(r)
	if err != nil {
		return nil, s.toStatus(ctx, "grant", err)
	}
	return &nodev1.GrantAccessResponse{Right: stored.Proto(), Created: created}, nil
}

// RevokeAccess implements AdminService. Rights on subsystems no longer
// served may still be revoked.
func (s *Server) RevokeAccess(ctx context.Context, req *nodev1.RevokeAccessRequest) (*nodev1.RevokeAccessResponse, error) {
	if err := Authorize(ctx, RoleAdmin); err != nil {
		return nil, err
	}
	r, err := RightFromProto(req.GetRight(), "right")
	if err != nil {
		return nil, s.toStatus(ctx, "revoke", err)
	}
	if err := s.store.Revoke(r); err != nil {
		return nil, s.toStatus(ctx, "revoke", err)
	}
	return &nodev1.RevokeAccessResponse{}, nil
}

// ListAccess implements AdminService.
func (s *Server) ListAccess(ctx context.Context, req *nodev1.ListAccessRequest) (*nodev1.ListAccessResponse, error) {
	if err := Authorize(ctx, RoleAdmin, RoleReader); err != nil {
		return nil, err
	}
	var f Filter
	if req.GetClient() != nil {
		c, err := ClientFromProto(req.GetClient(), "client")
		if err != nil {
			return nil, s.toStatus(ctx, "list", err)
		}
		f.Client = &c
	}
	if req.GetSubsystem() != nil {
		sub, err := subsystemFromProto(req.GetSubsystem(), "subsystem")
		if err != nil {
			return nil, s.toStatus(ctx, "list", err)
		}
		f.Subsystem = &sub
	}
	if req.GetService() != nil {
		svc, err := serviceFromProto(req.GetService(), "service")
		if err != nil {
			return nil, s.toStatus(ctx, "list", err)
		}
		f.Service = &svc
	}
	if m := req.GetMethodName(); m != "" {
		if err := ident.CheckMethodName(m); err != nil {
			return nil, s.toStatus(ctx, "list", fieldErr("method_name", err))
		}
		f.Method = m
	}
	rights, err := s.store.List(f)
	if err != nil {
		return nil, s.toStatus(ctx, "list", err)
	}
	resp := &nodev1.ListAccessResponse{Rights: make([]*nodev1.AccessRight, len(rights))}
	for i, r := range rights {
		resp.Rights[i] = r.Proto()
	}
	return resp, nil
}
