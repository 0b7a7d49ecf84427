package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/internal/rpcerr"
)

// DefaultMaxBody bounds a request body (a PublishService request carries a
// descriptor set; the registry's gRPC limit is 4 MiB, base64 adds a third).
const DefaultMaxBody = 6 << 20

// AdminConfig configures an admin REST gateway.
type AdminConfig struct {
	// Server is the daemon's gRPC server that serves the API, with the
	// interceptors that authenticate and authorize. Required.
	Server *grpc.Server
	// Register registers the generated handlers of one service on mux, e.g.
	// registryv1.RegisterAdminServiceHandler. Required.
	Register func(ctx context.Context, mux *runtime.ServeMux, conn *grpc.ClientConn) error
	// OpenAPI is the OpenAPI (Swagger 2.0) document served at GET
	// /openapi.json; nil serves none.
	OpenAPI []byte
	// Title names the API in the OpenAPI document.
	Title string
	// MaxBody bounds a request body; 0 means DefaultMaxBody.
	MaxBody int64
	// Logger; nil discards.
	Logger *slog.Logger
}

// Validate names the first missing or wrong field.
func (c AdminConfig) Validate() error {
	switch {
	case c.Server == nil:
		return errors.New("missing Server")
	case c.Register == nil:
		return errors.New("missing Register")
	case c.MaxBody < 0:
		return errors.New("negative MaxBody")
	}
	return nil
}

// Admin is an admin REST gateway: an http.Handler. It owns an in-memory
// connection to the gRPC server, closed by Close or when the context given
// to NewAdmin ends.
type Admin struct {
	mux     *runtime.ServeMux
	lb      *loopback
	maxBody int64
	stop    func() bool
}

// NewAdmin builds the gateway of cfg. Its resources are released when ctx
// ends or Close is called.
func NewAdmin(ctx context.Context, cfg AdminConfig) (*Admin, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("gateway config: %w", err)
	}
	if cfg.MaxBody == 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	mux := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.HTTPBodyMarshaler{Marshaler: &runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: true},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
		}}),
		runtime.WithErrorHandler(func(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
			switch status.Code(err) {
			case codes.Internal, codes.Unknown, codes.Unavailable, codes.DataLoss:
				if rpcerr.Info(err) == nil && r.Context().Err() == nil {
					cfg.Logger.Warn("admin REST call failed", "path", r.URL.Path, "err", err)
				}
			}
			errorHandler(ctx, mux, m, w, r, err)
		}),
		runtime.WithRoutingErrorHandler(routingErrorHandler),
		// The gRPC server's headers and trailers (content-type
		// application/grpc, the trailer names) are the loopback's, not the
		// API's: none becomes a Grpc-Metadata-* HTTP header.
		runtime.WithOutgoingHeaderMatcher(dropMetadata),
		runtime.WithOutgoingTrailerMatcher(dropMetadata),
	)
	if cfg.OpenAPI != nil {
		doc, err := patchOpenAPI(cfg.OpenAPI, cfg.Title)
		if err != nil {
			return nil, err
		}
		if err := mux.HandlePath(http.MethodGet, "/openapi.json", func(w http.ResponseWriter, _ *http.Request, _ map[string]string) {
			w.Header().Set("Content-Type", "application/json")
			w.Write(doc)
		}); err != nil {
			return nil, fmt.Errorf("gateway openapi route: %w", err)
		}
	}
	lb, err := newLoopback(cfg.Server)
	if err != nil {
		return nil, err
	}
	if err := cfg.Register(ctx, mux, lb.conn); err != nil {
		lb.Close()
		return nil, fmt.Errorf("gateway register: %w", err)
	}
	a := &Admin{mux: mux, lb: lb, maxBody: cfg.MaxBody}
	a.stop = context.AfterFunc(ctx, lb.Close)
	return a, nil
}

// Close releases the gateway's connection; later requests fail with 503.
func (a *Admin) Close() {
	a.stop()
	a.lb.Close()
}

// ServeHTTP serves one REST call.
func (a *Admin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength > a.maxBody {
		writeError(a.mux, w, r, tooLarge(a.maxBody))
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && r.ContentLength != 0 && !adminMedia(ct) {
		writeError(a.mux, w, r, unsupportedMedia(ct))
		return
	}
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, a.maxBody)
	}
	a.mux.ServeHTTP(w, r)
}

// adminMedia reports whether an admin request body declared as ct is read:
// JSON, or application/x-www-form-urlencoded, which curl -d declares when
// told nothing (the body must still be JSON).
func adminMedia(ct string) bool {
	if jsonMedia(ct) {
		return true
	}
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "application/x-www-form-urlencoded"
}

func dropMetadata(string) (string, bool) { return "", false }

// NewRegistryAdmin returns the REST gateway of the registry's AdminService
// (sild.registry.v1) on the registry's gRPC server gs.
func NewRegistryAdmin(ctx context.Context, gs *grpc.Server, log *slog.Logger) (*Admin, error) {
	return NewAdmin(ctx, AdminConfig{
		Server: gs, Register: registryv1.RegisterAdminServiceHandler,
		OpenAPI: RegistryOpenAPI(), Title: "sild registry admin API", Logger: log,
	})
}

// NewNodeAdmin returns the REST gateway of the node's AdminService
// (sild.node.v1) on the node's admin gRPC server gs.
func NewNodeAdmin(ctx context.Context, gs *grpc.Server, log *slog.Logger) (*Admin, error) {
	return NewAdmin(ctx, AdminConfig{
		Server: gs, Register: nodev1.RegisterAdminServiceHandler,
		OpenAPI: NodeOpenAPI(), Title: "sild node admin API", Logger: log,
	})
}
