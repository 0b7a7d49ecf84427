// Package apikey authenticates administrative gRPC APIs (a node's admin API,
// later the registry's) with bearer API keys: metadata
// "authorization: Bearer <key>". Configurations hold only the SHA-256 hash of
// a key; presented keys are hashed and compared in constant time. Keys must be
// random (Generate makes 256-bit ones): a fast hash is enough for them, which
// it would not be for passwords.
package apikey

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/sildmesh/sild/internal/rpcerr"
)

// hashPrefix starts every hashed key.
const hashPrefix = "sha256:"

// keyPrefix starts every key made by Generate, so that leaked keys are easy to
// recognise in logs and scanners.
const keyPrefix = "sild_"

// maxKeyLen bounds a presented key; longer ones are refused unhashed.
const maxKeyLen = 512

// Hash returns "sha256:<hex>" of key, the form configurations store.
func Hash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hashPrefix + hex.EncodeToString(sum[:])
}

// ValidHash reports whether hashed has the form Hash returns.
func ValidHash(hashed string) bool {
	h, ok := strings.CutPrefix(hashed, hashPrefix)
	if !ok || len(h) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Check reports whether presented is the key whose hash is hashed. The
// comparison takes the same time wherever the hashes differ. A malformed
// hashed or an empty presented key never matches.
func Check(hashed, presented string) bool {
	if presented == "" || len(presented) > maxKeyLen || !ValidHash(hashed) {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(Hash(presented)), []byte(hashed)) == 1
}

// Generate returns a fresh random key: "sild_" and 32 random bytes in
// unpadded base64url.
func Generate() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return keyPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// LookupFunc returns the role of the holder of key, or ok false for an unknown
// key. It must not log key.
type LookupFunc func(ctx context.Context, key string) (role string, ok bool)

// Static returns a LookupFunc over a fixed table from hashed keys (as Hash
// returns them) to roles; malformed hashes never match. Every entry is
// compared, so the time taken does not depend on which entry matched.
func Static(roles map[string]string) LookupFunc {
	type entry struct{ hashed, role string }
	entries := make([]entry, 0, len(roles))
	for h, r := range roles {
		if ValidHash(h) {
			entries = append(entries, entry{h, r})
		}
	}
	return func(_ context.Context, key string) (string, bool) {
		if key == "" || len(key) > maxKeyLen {
			return "", false
		}
		presented := []byte(Hash(key))
		role, found := "", false
		for _, e := range entries {
			if subtle.ConstantTimeCompare(presented, []byte(e.hashed)) == 1 && !found {
				role, found = e.role, true
			}
		}
		return role, found
	}
}

// Bearer returns the key in the incoming "authorization: Bearer <key>"
// metadata of ctx, or ok false if there is none (or more than one).
func Bearer(ctx context.Context) (key string, ok bool) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get("authorization")
	if len(v) != 1 {
		return "", false
	}
	scheme, key, found := strings.Cut(v[0], " ")
	if !found || !strings.EqualFold(scheme, "bearer") {
		return "", false
	}
	key = strings.TrimSpace(key)
	return key, key != ""
}

type roleKey struct{}

// WithRole returns ctx carrying the authenticated role.
func WithRole(ctx context.Context, role string) context.Context {
	return context.WithValue(ctx, roleKey{}, role)
}

// Role returns the role the interceptors authenticated, or ok false.
func Role(ctx context.Context) (role string, ok bool) {
	role, ok = ctx.Value(roleKey{}).(string)
	return role, ok
}

// Authenticate checks the bearer key of ctx with lookup and returns ctx with
// the holder's role, or an Unauthenticated error (reason UNAUTHENTICATED)
// naming component.
func Authenticate(ctx context.Context, lookup LookupFunc, component string) (context.Context, error) {
	key, ok := Bearer(ctx)
	if !ok {
		return nil, rpcerr.New(codes.Unauthenticated, rpcerr.ReasonUnauthenticated, component,
			`missing API key: send metadata "authorization: Bearer <key>"`)
	}
	role, ok := lookup(ctx, key)
	if !ok {
		return nil, rpcerr.New(codes.Unauthenticated, rpcerr.ReasonUnauthenticated, component, "invalid API key")
	}
	return WithRole(ctx, role), nil
}

// UnaryServerInterceptor authenticates every unary call with Authenticate.
func UnaryServerInterceptor(lookup LookupFunc, component string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := Authenticate(ctx, lookup, component)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamServerInterceptor authenticates every streaming call with Authenticate.
func StreamServerInterceptor(lookup LookupFunc, component string) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := Authenticate(ss.Context(), lookup, component)
		if err != nil {
			return err
		}
		return handler(srv, &roleStream{ServerStream: ss, ctx: ctx})
	}
}

type roleStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *roleStream) Context() context.Context { return s.ctx }

// Credentials returns client-side per-call credentials sending key as a
// bearer token. With requireTLS, gRPC refuses to send it over plaintext
// connections; pass false only for loopback.
func Credentials(key string, requireTLS bool) credentials.PerRPCCredentials {
	return bearerCreds{key: key, tls: requireTLS}
}

type bearerCreds struct {
	key string
	tls bool
}

func (c bearerCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + c.key}, nil
}

func (c bearerCreds) RequireTransportSecurity() bool { return c.tls }
