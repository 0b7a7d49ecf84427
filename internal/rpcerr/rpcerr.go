// Package rpcerr builds and reads the errors sild returns at its gRPC boundaries:
// a status code plus a google.rpc.ErrorInfo detail with domain "sild", a reason
// (ACCESS_DENIED, UNKNOWN_TARGET, ...) and the component that refused. Each
// boundary keeps one table from its domain errors to these; this package only
// supplies the shape, so that every component speaks the same way.
package rpcerr

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Domain is the ErrorInfo domain of every sild error.
const Domain = "sild"

// Reasons shared across components. A component may add its own; keep them
// UPPER_SNAKE_CASE and stable, since callers branch on them.
const (
	ReasonInvalidArgument    = "INVALID_ARGUMENT"
	ReasonInvalidIdentifier  = "INVALID_IDENTIFIER"
	ReasonAlreadyExists      = "ALREADY_EXISTS"
	ReasonNotFound           = "NOT_FOUND"
	ReasonUnauthenticated    = "UNAUTHENTICATED"
	ReasonPermissionDenied   = "PERMISSION_DENIED"
	ReasonAccessDenied       = "ACCESS_DENIED"
	ReasonUnknownClient      = "UNKNOWN_CLIENT"
	ReasonUnknownTarget      = "UNKNOWN_TARGET"
	ReasonTargetUnavailable  = "TARGET_UNAVAILABLE"
	ReasonConfigExpired      = "CONFIG_EXPIRED"
	ReasonSignatureInvalid   = "SIGNATURE_INVALID"
	ReasonReplayed           = "MESSAGE_REPLAYED"
	ReasonStaleRequest       = "STALE_REQUEST"
	ReasonLedgerUnavailable  = "LEDGER_UNAVAILABLE"
	ReasonNotLeader          = "NOT_LEADER"
	ReasonUnavailable        = "UNAVAILABLE"
	ReasonInternal           = "INTERNAL"
	ReasonFederationInactive = "FEDERATION_INACTIVE"
)

// Error is a refusal with everything a caller of another organisation may see.
type Error struct {
	Code      codes.Code
	Reason    string
	Component string // e.g. "registry", "node.consumer", "node.provider"
	Message   string // safe for other organisations: no internal text
	Metadata  map[string]string
}

func (e *Error) Error() string { return e.Component + ": " + e.Reason + ": " + e.Message }

// GRPCStatus lets status.FromError and grpc servers turn e into a status.
func (e *Error) GRPCStatus() *status.Status {
	st := status.New(e.Code, e.Message)
	md := map[string]string{"component": e.Component}
	for k, v := range e.Metadata {
		md[k] = v
	}
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: e.Reason, Domain: Domain, Metadata: md}); err == nil {
		return d
	}
	return st
}

// New returns an error with the given code, reason, component and message.
func New(code codes.Code, reason, component, msg string) *Error {
	return &Error{Code: code, Reason: reason, Component: component, Message: msg}
}

// Info returns the sild ErrorInfo carried by err (a status error or *Error),
// or nil if it has none.
func Info(err error) *errdetails.ErrorInfo {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetDomain() == Domain {
			return ei
		}
	}
	return nil
}

// Reason returns the sild reason of err, or "" if it carries none.
func Reason(err error) string { return Info(err).GetReason() }

// Component returns the component that refused, or "" if unknown.
func Component(err error) string { return Info(err).GetMetadata()["component"] }

// FromContext maps a context error to its gRPC status (Canceled or
// DeadlineExceeded) and reports whether err was one.
func FromContext(err error) (error, bool) {
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "canceled"), true
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded"), true
	}
	return nil, false
}
