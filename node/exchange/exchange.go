package exchange

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/access"
	"github.com/sildmesh/sild/node/envelope"
	"github.com/sildmesh/sild/node/forward"
	"github.com/sildmesh/sild/node/sign"
	"github.com/sildmesh/sild/node/topology"
)

// Components of the refusals of this package.
const (
	ComponentConsumer = envelope.ComponentConsumer
	ComponentProvider = "node.provider"
)

// Defaults of Config.
const (
	DefaultReplayWindow = 10 * time.Minute
	DefaultReplayMax    = 1 << 20
)

// Recorder makes exchange records durable.
type Recorder interface {
	// Record returns nil once rec, and body if not nil (what
	// Config.Capture asked to keep of the exchange's content), are durable
	// (they survive a crash), or an error; it may be called concurrently.
	// Neither is retained.
	Record(ctx context.Context, rec *ledgerv1.Record, body *ledgerv1.Body) error
}

// RecorderFunc adapts a function to Recorder.
type RecorderFunc func(ctx context.Context, rec *ledgerv1.Record, body *ledgerv1.Body) error

// Record calls f.
func (f RecorderFunc) Record(ctx context.Context, rec *ledgerv1.Record, body *ledgerv1.Body) error {
	return f(ctx, rec, body)
}

// Config configures a Consumer or a Provider; both may share one.
type Config struct {
	// Node is this node.
	Node ident.Node
	// Topology returns the current verified configuration, nil if none yet.
	Topology func() *topology.Topology
	// SVID and Bundles are this node's SVID and trust bundles for mTLS
	// between nodes (pki.SVIDSource and pki.BundleSource).
	SVID    x509svid.Source
	Bundles x509bundle.Source
	// Signer signs what this node sends; it must include its certificate
	// chain in signatures (sign.Config.IncludeChain).
	Signer *sign.Signer
	// Verifier checks the peers' signatures.
	Verifier *sign.Verifier
	// Recorder makes the evidence of each exchange durable.
	Recorder Recorder
	// Capture, if set, tells for a subsystem of this node (the client on
	// the consumer side, the target on the provider side) what of its
	// exchanges' content to pass to Recorder; nil passes nothing.
	Capture func(local ident.Subsystem) Capture
	// MaxCapture bounds the message bytes passed of one exchange (default
	// DefaultMaxCapture); later messages are left out and the body is
	// marked truncated.
	MaxCapture int
	// Logger receives refusals and failures; nil discards them.
	Logger *slog.Logger

	// Clients are the client subsystems whose systems may call through this
	// node (consumer side).
	Clients []ident.Subsystem
	// Changed, if set, returns a channel closed when the configuration
	// changes: calls with a node of another ecosystem are then cut with
	// FEDERATION_INACTIVE if that federation is no longer active.
	Changed func() <-chan struct{}
	// MayCallAs, if set, reports whether the caller of the consumer
	// listener (e.g. by its TLS client certificate, found in ctx) may speak
	// for client; nil lets every caller use every one of Clients.
	MayCallAs func(ctx context.Context, client ident.Subsystem) bool

	// Access holds the rights on the services this node serves (provider side).
	Access *access.Store
	// Backends maps each subsystem this node serves to its backend address,
	// host:port (provider side).
	Backends map[ident.Subsystem]string
	// BackendDialOptions are added when dialling a backend; the default is
	// plaintext (backends sit next to the node).
	BackendDialOptions []grpc.DialOption
	// ReplayWindow is how long message ids are remembered per client, and
	// ReplayMax how many at most per client (provider side).
	ReplayWindow time.Duration
	ReplayMax    int
	// Replay, if set, is the provider's replay table (e.g. seeded from the
	// ledger at start); nil makes an empty one of ReplayWindow and ReplayMax.
	Replay *envelope.Replay

	// MaxMessageSize bounds each message (default forward.DefaultMaxMessageSize).
	MaxMessageSize int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Observe, if set, is told of every call each side handled, refusals
	// included: the side (ComponentConsumer or ComponentProvider), the
	// error returned to the caller (nil for OK) and how long it took.
	Observe func(side string, err error, took time.Duration)
}

func (c *Config) observe(side string, err error, start time.Time) {
	if c.Observe != nil {
		c.Observe(side, err, c.Now().Sub(start))
	}
}

// DefaultConfig returns a Config with the defaults filled in; the caller
// adds the node, sources, signer and the rest.
func DefaultConfig() Config {
	return Config{
		ReplayWindow:   DefaultReplayWindow,
		ReplayMax:      DefaultReplayMax,
		MaxMessageSize: forward.DefaultMaxMessageSize,
	}
}

// validate checks what both sides need and fills the defaults.
func (c *Config) validate() error {
	if err := c.Node.Validate(); err != nil {
		return fmt.Errorf("config: Node: %w", err)
	}
	switch {
	case c.Topology == nil:
		return errors.New("config: Topology is nil")
	case c.SVID == nil:
		return errors.New("config: SVID is nil")
	case c.Bundles == nil:
		return errors.New("config: Bundles is nil")
	case c.Signer == nil:
		return errors.New("config: Signer is nil")
	case c.Verifier == nil:
		return errors.New("config: Verifier is nil")
	case c.Recorder == nil:
		return errors.New("config: Recorder is nil")
	case c.MaxMessageSize < 0:
		return errors.New("config: MaxMessageSize is negative")
	case c.ReplayWindow < 0:
		return errors.New("config: ReplayWindow is negative")
	case c.ReplayMax < 0:
		return errors.New("config: ReplayMax is negative")
	case c.MaxCapture < 0:
		return errors.New("config: MaxCapture is negative")
	}
	if c.MaxCapture == 0 {
		c.MaxCapture = DefaultMaxCapture
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = forward.DefaultMaxMessageSize
	}
	if c.ReplayWindow == 0 {
		c.ReplayWindow = DefaultReplayWindow
	}
	if c.ReplayMax == 0 {
		c.ReplayMax = DefaultReplayMax
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Validate reports whether c is complete for both sides; errors name the field.
func (c Config) Validate() error {
	if err := c.validate(); err != nil {
		return err
	}
	if err := c.validateConsumer(); err != nil {
		return err
	}
	return c.validateProvider()
}

func (c *Config) validateConsumer() error {
	for i, s := range c.Clients {
		if err := s.Validate(); err != nil {
			return fmt.Errorf("config: Clients[%d]: %w", i, err)
		}
	}
	return nil
}

func (c *Config) validateProvider() error {
	if c.Access == nil {
		return errors.New("config: Access is nil")
	}
	for s, a := range c.Backends {
		if err := s.Validate(); err != nil {
			return fmt.Errorf("config: Backends: %w", err)
		}
		if a == "" {
			return fmt.Errorf("config: Backends[%s]: empty address", s)
		}
	}
	return nil
}

// Frame tags between nodes, in both directions: each message goes as its
// tag and its bytes; the last message of a direction may be the seal, the
// sender's encoded sign.Signature of that direction.
const (
	tagData byte = 0x00
	tagSeal byte = 0x01
)

// sealDigest is what a side signs for one direction of a call.
func sealDigest(dir envelope.Direction, c *envelope.Chain, code codes.Code) []byte {
	h := sha256.New()
	h.Write([]byte("sild-seal-v1"))
	h.Write([]byte{byte(dir)})
	sum := c.Sum()
	h.Write(sum[:])
	var b [12]byte
	binary.BigEndian.PutUint64(b[:8], c.Count())
	binary.BigEndian.PutUint32(b[8:], uint32(code))
	h.Write(b[:])
	return h.Sum(nil)
}

// verifyPeer checks that sig signs digest by a registered signing key of
// node peer. topo is the configuration the call started with, cfg.Topology
// the current one. The key must be one a configuration lists for the peer:
// its signing key or the one its last renewal replaced (which the node goes
// on using until the others have the new one), in topo or, if the peer is
// still registered there under the same SPIFFE ID and not revoked, in the
// current configuration, where the key of a renewal during a long call
// appears. The certificate must chain to the roots of the configuration
// that lists the key and be valid at.
func verifyPeer(cfg *Config, topo *topology.Topology, peer ident.Node, sig *sign.Signature, digest []byte, at time.Time) error {
	rec := topo.Node(peer)
	if rec == nil {
		return errors.New("peer node not in configuration")
	}
	want, err := spiffeid.FromString(rec.GetSpiffeId())
	if err != nil {
		return fmt.Errorf("peer spiffe id: %w", err)
	}
	listing := topo
	if !listsKey(rec, sig.KeyID) {
		cur := cfg.Topology()
		var now *registryv1.Node
		if cur != nil && cur != topo {
			now = cur.Node(peer)
		}
		if now == nil || now.GetSpiffeId() != rec.GetSpiffeId() ||
			now.GetState() == registryv1.NodeState_NODE_STATE_REVOKED || !listsKey(now, sig.KeyID) {
			return errors.New("signature key is not a registered signing key of the node")
		}
		listing = cur
	}
	id, err := cfg.Verifier.Verify(sig, digest, nil, listing.RootsOf(peer.Member.Instance), at)
	if err != nil {
		return err
	}
	if id != want {
		return fmt.Errorf("signed by %s, not by %s", id, want)
	}
	return nil
}

// listsKey reports whether rec names keyID as the node's signing key or
// as the one its last renewal replaced (any key if rec names none).
func listsKey(rec *registryv1.Node, keyID string) bool {
	kh := rec.GetSigningKeyHash()
	return kh == "" || keyID == kh || (keyID != "" && keyID == rec.GetPreviousSigningKeyHash())
}

// callState is what one call accumulates on either side: the hash chains of
// both directions and the request's seal.
type callState struct {
	mu        sync.Mutex // guards the request side, which may outlive the relay
	reqChain  *envelope.Chain
	reqSig    *sign.Signature
	reqDigest []byte
	respChain *envelope.Chain // down pump only, then the final record
	respSeal  []byte          // the provider's seal (consumer side); down pump only
}

// federated reports whether instance is this ecosystem's or an active
// federated one's in topo.
func federated(topo *topology.Topology, instance string) bool {
	return instance == topo.Instance || len(topo.RootsOf(instance)) > 0
}

func federationInactive(component, instance string) error {
	return rpcerr.New(codes.PermissionDenied, rpcerr.ReasonFederationInactive, component,
		"no active federation with instance "+instance)
}

// watchFederation cancels a call with a node of instance once the
// configuration no longer federates with it, or (target not nil, provider
// side) no longer exports target to it; cut returns the refusal to answer
// then, nil if the call was not cut. The returned stop ends the watch.
func watchFederation(cfg *Config, component, instance string, target *ident.Subsystem, cancel context.CancelFunc) (cut func() error, stop func()) {
	var why atomic.Pointer[error]
	cut = func() error {
		if e := why.Load(); e != nil {
			return *e
		}
		return nil
	}
	if cfg.Changed == nil || instance == "" {
		return cut, func() {}
	}
	quit := make(chan struct{})
	go func() {
		for {
			ch := cfg.Changed()
			var err error
			t := cfg.Topology()
			switch {
			case t == nil || !federated(t, instance):
				err = federationInactive(component, instance)
			case target != nil && !t.Exported(instance, *target):
				err = notExported(component)
			}
			if err != nil {
				why.Store(&err)
				cancel()
				return
			}
			select {
			case <-quit:
				return
			case <-ch:
			}
		}
	}()
	return cut, func() { close(quit) }
}

// notExported refuses a call from another ecosystem's node to a subsystem
// this ecosystem does not export to it.
func notExported(component string) error {
	return rpcerr.New(codes.NotFound, rpcerr.ReasonUnknownTarget, component,
		"the target subsystem is not exported to the caller's ecosystem")
}

func signatureInvalid(component, msg string) error {
	return rpcerr.New(codes.Unauthenticated, rpcerr.ReasonSignatureInvalid, component, msg)
}

func ledgerUnavailable(component string) error {
	return rpcerr.New(codes.Unavailable, rpcerr.ReasonLedgerUnavailable, component, "evidence could not be recorded")
}

// newRecord starts the evidence record of req.
func newRecord(side ledgerv1.Side, req envelope.Request, peer ident.Node, start time.Time) *ledgerv1.Record {
	return &ledgerv1.Record{
		MessageId: req.MessageID, Side: side,
		Client: req.Client.String(), Target: req.Target.String(),
		Service: req.Service, Method: req.Method,
		UserId: req.UserID, Purpose: req.Purpose,
		StartTime: timestamppb.New(start), PeerNode: peer.String(),
	}
}

// finishRecord fills in the outcome of the exchange.
func finishRecord(rec *ledgerv1.Record, reqDigest, respDigest []byte, reqN, respN uint64, err error, end time.Time) {
	rec.RequestDigest, rec.ResponseDigest = reqDigest, respDigest
	rec.RequestCount, rec.ResponseCount = reqN, respN
	rec.StatusCode = int32(status.Code(err))
	rec.StatusReason = rpcerr.Reason(err)
	rec.EndTime = timestamppb.New(end)
}

// overhead is what the exchange protocol adds to a message between nodes,
// in either direction: the tag, or a whole seal.
const overhead = 1 + sign.MaxEncodedLen

// callOptions are the options of every forwarded stream.
func callOptions(recv, send int) []grpc.CallOption {
	return []grpc.CallOption{
		grpc.ForceCodecV2(forward.Codec{}),
		grpc.MaxCallRecvMsgSize(recv),
		grpc.MaxCallSendMsgSize(send),
	}
}

// serverOptions make a grpc.Server send every call to handler.
func serverOptions(handler grpc.StreamHandler, recv, send int) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.UnknownServiceHandler(handler),
		grpc.ForceServerCodecV2(forward.Codec{}),
		grpc.MaxRecvMsgSize(recv),
		grpc.MaxSendMsgSize(send),
		grpc.InitialWindowSize(windowSize),
		grpc.InitialConnWindowSize(windowSize),
	}
}

// windowSize is the HTTP/2 flow-control window of the node's connections.
// Setting it turns off gRPC's bandwidth-delay probing, which otherwise
// costs a PING and its answer on busy connections, and makes
// WINDOW_UPDATE frames rarer.
const windowSize = 1 << 20

// windowOptions are the dial options that go with windowSize.
var windowOptions = []grpc.DialOption{
	grpc.WithInitialWindowSize(windowSize),
	grpc.WithInitialConnWindowSize(windowSize),
}

var plaintext = grpc.WithTransportCredentials(insecure.NewCredentials())

var fullDuplex = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// capture starts collecting the body of an exchange of local, whose request
// headers are md (nil if nothing is to be kept).
func (c *Config) capture(local ident.Subsystem, md metadata.MD) *capture {
	if c.Capture == nil {
		return nil
	}
	return newCapture(c.Capture(local), c.MaxCapture, md)
}
