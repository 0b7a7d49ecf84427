package gateway

import (
	"context"
	"errors"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sildmesh/sild/internal/rpcerr"
)

// Component is the ErrorInfo component of errors the gateway finds itself.
const Component = "gateway"

// Reasons of the gateway's own refusals (besides rpcerr's).
const (
	ReasonMethodNotAllowed = "METHOD_NOT_ALLOWED"
	ReasonBodyTooLarge     = "BODY_TOO_LARGE"
)

// reasonOf is the reason given to an error without a sild ErrorInfo (one
// the gateway's runtime made: a malformed body, a bad path value, no route,
// an unreachable server).
func reasonOf(c codes.Code) string {
	switch c {
	case codes.InvalidArgument:
		return rpcerr.ReasonInvalidArgument
	case codes.NotFound:
		return rpcerr.ReasonNotFound
	case codes.Unimplemented:
		return ReasonMethodNotAllowed
	case codes.Unauthenticated:
		return rpcerr.ReasonUnauthenticated
	case codes.PermissionDenied:
		return rpcerr.ReasonPermissionDenied
	case codes.Unavailable:
		return rpcerr.ReasonUnavailable
	default:
		return rpcerr.ReasonInternal
	}
}

// nodeAnswer is a status the consumer node sent the bridge (peerstatus): a
// refusal of the mesh with its reason, or the status of the provider's
// backend passed through the mesh. It reaches the REST caller as it is, as
// it would reach a gRPC caller: code, message and details.
type nodeAnswer struct{ error }

func (e *nodeAnswer) Unwrap() error { return e.error }

// fromNode marks err as the node's answer if the node sent it (sent, from
// peerstatus.Watch); a status grpc made up stays as it is, for withReason.
func fromNode(err error, sent *atomic.Bool) error {
	if sent.Load() {
		return &nodeAnswer{err}
	}
	return err
}

// answerError is the error to give a REST caller for err: a node's answer
// unchanged, anything else through withReason.
func answerError(ctx context.Context, err error) error {
	var na *nodeAnswer
	if errors.As(err, &na) {
		return na.error
	}
	return withReason(ctx, err)
}

// withReason returns err as a status error that carries a sild ErrorInfo:
// unchanged if it has one, else with one of component "gateway". The text of
// server-side failures without one (a broken loopback, a panic) is replaced
// by a generic message. ctx is the request's.
func withReason(ctx context.Context, err error) error {
	if rpcerr.Info(err) != nil {
		return err
	}
	st := status.Convert(err)
	code, msg := st.Code(), st.Message()
	if code == codes.Canceled && ctx.Err() == nil {
		// Not the caller's cancellation: the gateway's connection is closing.
		code = codes.Unavailable
	}
	switch code {
	case codes.Canceled, codes.DeadlineExceeded:
		return err
	case codes.InvalidArgument:
		msg = cleanDecodeMessage(msg)
	case codes.NotFound, codes.Unimplemented:
	case codes.Unavailable:
		// Not the daemon's or the mesh's own refusal (those carry a reason):
		// a connection's failure, whose text is internal.
		msg = "service unavailable"
	default:
		code, msg = codes.Internal, "internal error"
	}
	return rpcerr.New(code, reasonOf(code), Component, msg)
}

// cleanDecodeMessage rewrites the text of a JSON decoding error (of
// encoding/json or protojson, as the runtime passes it on) so that it says
// what is wrong with the request body without the Go library's prefixes.
// Other messages are returned as they are.
func cleanDecodeMessage(msg string) string {
	// The protobuf module writes its prefix with a regular or a no-break
	// space, chosen per binary.
	msg = strings.Replace(msg, "proto:\u00a0", "proto: ", 1)
	switch {
	case msg == "EOF" || msg == "unexpected EOF" || msg == "proto: unexpected EOF":
		return "request body is not valid JSON: it ends too early"
	case strings.HasPrefix(msg, "invalid character "), strings.HasPrefix(msg, "proto: syntax error"):
		return "request body is not valid JSON: " + strings.TrimPrefix(msg, "proto: ")
	case strings.HasPrefix(msg, "json: cannot unmarshal "):
		return "request body: " + strings.TrimPrefix(msg, "json: cannot unmarshal ")
	case strings.HasPrefix(msg, "proto: "):
		return "request body: " + strings.TrimPrefix(msg, "proto: ")
	}
	return msg
}

// jsonMedia reports whether the Content-Type value ct names JSON
// (application/json or a type with the +json suffix, any parameters).
func jsonMedia(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json")))
}

// unsupportedMedia is the 415 answer to a body that is not declared JSON.
func unsupportedMedia(ct string) error {
	return &runtime.HTTPStatusError{HTTPStatus: http.StatusUnsupportedMediaType,
		Err: rpcerr.New(codes.InvalidArgument, ReasonUnsupportedMedia, Component,
			"Content-Type "+strconv.Quote(ct)+" is not supported: send the body as application/json")}
}

// errorHandler writes err as google.rpc.Status JSON with the HTTP status of
// its code (runtime.HTTPStatusFromCode, or the one an HTTPStatusError sets),
// after making sure it carries a sild reason. Unlike the runtime's default
// handler it sends no gRPC metadata headers, and a proper bearer challenge
// with 401.
func errorHandler(_ context.Context, _ *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	httpStatus := 0
	var hse *runtime.HTTPStatusError
	if errors.As(err, &hse) {
		httpStatus, err = hse.HTTPStatus, withReason(r.Context(), hse.Err)
	} else if st := status.Convert(err); st.Code() == codes.InvalidArgument && strings.Contains(st.Message(), "request body too large") {
		errors.As(tooLarge(0), &hse)
		httpStatus, err = hse.HTTPStatus, hse.Err
	} else {
		err = answerError(r.Context(), err)
	}
	st := status.Convert(err)
	if httpStatus == 0 {
		httpStatus = runtime.HTTPStatusFromCode(st.Code())
	}
	pb := st.Proto()
	pb.Message = strings.ToValidUTF8(pb.Message, "\uFFFD") // it may quote the request
	body, merr := m.Marshal(pb)
	if merr != nil {
		httpStatus, body = http.StatusInternalServerError, []byte(`{"code":13,"message":"failed to marshal error"}`)
	}
	h := w.Header()
	h.Del("Trailer")
	h.Del("Transfer-Encoding")
	h.Set("Content-Type", "application/json")
	if st.Code() == codes.Unauthenticated {
		h.Set("WWW-Authenticate", `Bearer realm="sild"`)
	}
	w.WriteHeader(httpStatus)
	w.Write(body)
}

// routingErrorHandler answers requests that match no route: 404, or 405 for
// a known path with another method.
func routingErrorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, httpStatus int) {
	var err error
	switch httpStatus {
	case http.StatusMethodNotAllowed:
		err = &runtime.HTTPStatusError{HTTPStatus: httpStatus,
			Err: rpcerr.New(codes.Unimplemented, ReasonMethodNotAllowed, Component, "method "+r.Method+" not allowed on "+r.URL.Path)}
	case http.StatusBadRequest:
		err = rpcerr.New(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, Component, "bad request path")
	default:
		err = rpcerr.New(codes.NotFound, rpcerr.ReasonNotFound, Component, "no such route: "+r.Method+" "+r.URL.Path)
	}
	errorHandler(ctx, mux, m, w, r, err)
}

// tooLarge is the 413 answer to a body over max bytes (0: limit not known).
func tooLarge(max int64) error {
	msg := "request body too large"
	if max > 0 {
		msg += " (limit " + strconv.FormatInt(max, 10) + " bytes)"
	}
	return &runtime.HTTPStatusError{HTTPStatus: http.StatusRequestEntityTooLarge,
		Err: rpcerr.New(codes.InvalidArgument, ReasonBodyTooLarge, Component, msg)}
}

// writeError writes err like the runtime does, for refusals made before the
// request reaches mux.
func writeError(mux *runtime.ServeMux, w http.ResponseWriter, r *http.Request, err error) {
	_, out := runtime.MarshalerForRequest(mux, r)
	errorHandler(r.Context(), mux, out, w, r, err)
}
