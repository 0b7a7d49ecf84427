package exchange

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/peerstatus"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/envelope"
	"github.com/sildmesh/sild/node/forward"
	"github.com/sildmesh/sild/node/sign"
	"github.com/sildmesh/sild/node/topology"
)

// errAfterSeal refuses request messages after the seal.
var errAfterSeal = rpcerr.New(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, ComponentProvider, "message after the request seal")

// Provider handles the calls of other nodes on the exchange listener and
// hands them to this node's backends. It is safe for concurrent use.
type Provider struct {
	cfg      Config
	replay   *envelope.Replay
	backends map[ident.Subsystem]*grpc.ClientConn
}

// NewProvider validates cfg (the fields both sides need, Access and
// Backends) and returns a Provider with a lazily connecting client
// connection per backend.
func NewProvider(cfg Config) (*Provider, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("new provider: %w", err)
	}
	if err := cfg.validateProvider(); err != nil {
		return nil, fmt.Errorf("new provider: %w", err)
	}
	p := &Provider{cfg: cfg, replay: cfg.Replay, backends: map[ident.Subsystem]*grpc.ClientConn{}}
	if p.replay == nil {
		p.replay = envelope.NewReplay(cfg.ReplayWindow, cfg.ReplayMax)
	}
	for sub, addr := range cfg.Backends {
		opts := append(append([]grpc.DialOption{plaintext, peerstatus.DialOption}, windowOptions...), cfg.BackendDialOptions...)
		cc, err := grpc.NewClient(addr, opts...)
		if err != nil {
			_ = p.Close()
			return nil, fmt.Errorf("new provider: backend of %s: %w", sub, err)
		}
		p.backends[sub] = cc
	}
	return p, nil
}

// Close closes the backend connections.
func (p *Provider) Close() error {
	var errs []error
	for _, cc := range p.backends {
		errs = append(errs, cc.Close())
	}
	return errors.Join(errs...)
}

// ServerOptions make a grpc.Server on the exchange listener require mTLS
// with this node's SVID, accept nodes of the configuration's trust domain
// and handle every method through p.
func (p *Provider) ServerOptions() []grpc.ServerOption {
	authorize := tlsconfig.AdaptMatcher(func(id spiffeid.ID) error {
		if !ident.IsNodeSPIFFEID(id) {
			return errors.New("not a node")
		}
		if t := p.cfg.Topology(); t != nil {
			if _, ok := t.InstanceOf(id.TrustDomain()); !ok {
				return errors.New("not of this or a federated trust domain")
			}
		}
		return nil
	})
	tc := tlsconfig.MTLSServerConfig(p.cfg.SVID, p.cfg.Bundles, authorize)
	return append(serverOptions(p.Handle, p.cfg.MaxMessageSize+overhead, p.cfg.MaxMessageSize+overhead),
		grpc.Creds(credentials.NewTLS(tc)))
}

func refuseP(code codes.Code, reason, msg string) error {
	return rpcerr.New(code, reason, ComponentProvider, msg)
}

func (p *Provider) callerNode(ctx context.Context, topo *topology.Topology) (ident.Node, error) {
	return CallerNode(ctx, topo)
}

// CallerNode returns the active node whose SVID the caller of an mTLS
// listener presented: a node of this ecosystem or of an active federated
// one, registered with that SPIFFE ID.
func CallerNode(ctx context.Context, topo *topology.Topology) (ident.Node, error) {
	unauth := refuseP(codes.Unauthenticated, rpcerr.ReasonUnauthenticated, "caller is not a node of this ecosystem")
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return ident.Node{}, unauth
	}
	ti, ok := pr.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return ident.Node{}, unauth
	}
	id, err := x509svid.IDFromCert(ti.State.PeerCertificates[0])
	if err != nil || !ident.IsNodeSPIFFEID(id) {
		return ident.Node{}, unauth
	}
	instance, ok := topo.InstanceOf(id.TrustDomain())
	if !ok {
		return ident.Node{}, rpcerr.New(codes.PermissionDenied, rpcerr.ReasonFederationInactive, ComponentProvider,
			"caller's ecosystem is not federated with this one")
	}
	n, err := ident.NodeFromSPIFFEID(id, instance)
	if err != nil {
		return ident.Node{}, unauth
	}
	rec := topo.Node(n)
	if rec == nil || rec.GetState() != registryv1.NodeState_NODE_STATE_ACTIVE || rec.GetSpiffeId() != id.String() {
		return ident.Node{}, unauth
	}
	return n, nil
}

// Handle is the grpc.StreamHandler of the exchange listener.
func (p *Provider) Handle(_ any, ss grpc.ServerStream) error {
	start := p.cfg.Now()
	err := p.handle(ss, start)
	p.cfg.observe(ComponentProvider, err, start)
	return err
}

func (p *Provider) handle(ss grpc.ServerStream, start time.Time) error {
	ctx := ss.Context()
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return refuseP(codes.Internal, rpcerr.ReasonInternal, "no method")
	}
	topo, err := topology.Current(p.cfg.Topology, start, ComponentProvider)
	if err != nil {
		return err
	}
	caller, err := p.callerNode(ctx, topo)
	if err != nil {
		p.cfg.Logger.Warn("refused caller", "err", err)
		return err
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if len(md.Get(envelope.HeaderMessageID)) == 0 {
		return refuseP(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, "missing "+envelope.HeaderMessageID)
	}
	req, err := envelope.ParseRequest(md, method)
	if err != nil {
		return err
	}
	if req.Time.IsZero() {
		return refuseP(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, "missing "+envelope.HeaderRequestTime)
	}

	// From here on every answer is signed and recorded.
	st := &callState{
		reqChain:  envelope.NewChain(envelope.DirRequest, req),
		respChain: envelope.NewChain(envelope.DirResponse, req),
	}
	body := p.cfg.capture(req.Target, md)
	var trailer metadata.MD // the backend's, once it answered
	answer := func(err error) error {
		err = normalize(err, ComponentProvider)
		respDigest := sealDigest(envelope.DirResponse, st.respChain, status.Code(err))
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
		defer cancel()
		sig, serr := p.cfg.Signer.Sign(sctx, respDigest)
		var seal []byte
		if serr == nil {
			seal, serr = sig.Marshal()
		}
		if serr != nil {
			p.cfg.Logger.Error("sign response", "message_id", req.MessageID, "err", serr)
			return refuseP(codes.Internal, rpcerr.ReasonInternal, "response could not be signed")
		}
		rec := newRecord(ledgerv1.Side_SIDE_PROVIDER, req, caller, start)
		st.mu.Lock()
		finishRecord(rec, st.reqDigest, respDigest, st.reqChain.Count(), st.respChain.Count(), err, p.cfg.Now())
		if st.reqSig != nil {
			rec.ConsumerSignature = st.reqSig.Proto()
		}
		st.mu.Unlock()
		rec.ProviderSignature = sig.Proto()
		if rerr := p.cfg.Recorder.Record(sctx, rec, body.result(trailer)); rerr != nil {
			p.cfg.Logger.Error("record exchange", "message_id", req.MessageID, "err", rerr)
			// Unsigned: the signature was over the status not given.
			return ledgerUnavailable(ComponentProvider)
		}
		f := taggedFrame(tagSeal, seal)
		if serr := ss.SendMsg(f); serr != nil {
			f.Free()
			p.cfg.Logger.Warn("response seal not delivered", "message_id", req.MessageID, "err", serr)
		}
		return err
	}

	if !topo.Serves(caller, req.Client) {
		return answer(refuseP(codes.Unauthenticated, rpcerr.ReasonUnknownClient, "calling node is not registered for the client subsystem"))
	}
	backend := p.backends[req.Target]
	if backend == nil || !topo.Serves(p.cfg.Node, req.Target) {
		return answer(refuseP(codes.NotFound, rpcerr.ReasonUnknownTarget, "target subsystem is not served by this node"))
	}
	if !envelope.Fresh(req.Time, start, p.cfg.ReplayWindow) {
		// Older than the ids this node remembers (or from the future): it
		// could be a replay that the table below no longer knows.
		return answer(refuseP(codes.FailedPrecondition, rpcerr.ReasonStaleRequest,
			"the request's time is outside the replay window of the provider's node (are both nodes' clocks right?)"))
	}
	if err := p.replay.Admit(req.Client.String(), req.MessageID, start); err != nil {
		return answer(err) // MESSAGE_REPLAYED, or REPLAY_WINDOW_FULL for this client only
	}
	svc := ident.Service{Subsystem: req.Target, Name: req.Service}
	foreign := caller.Member.Instance != topo.Instance
	if foreign && !topo.Exported(caller.Member.Instance, req.Target) {
		return answer(notExported(ComponentProvider))
	}
	if !p.cfg.Access.Allowed(req.Client, topo.Groups(req.Client), svc, req.Method) {
		return answer(refuseP(codes.PermissionDenied, rpcerr.ReasonAccessDenied, "access denied"))
	}

	omd, _ := metadata.FromOutgoingContext(forward.CopyIncoming(ctx))
	upCtx, cancel := context.WithCancel(metadata.NewOutgoingContext(ctx, omd))
	defer cancel()
	fedCut := func() error { return nil }
	if foreign {
		var stop func()
		fedCut, stop = watchFederation(&p.cfg, ComponentProvider, caller.Member.Instance, &req.Target, cancel)
		defer stop()
	}
	upCtx, answered := peerstatus.Watch(upCtx)
	cs, err := backend.NewStream(upCtx, fullDuplex, req.FullMethod(), callOptions(p.cfg.MaxMessageSize, p.cfg.MaxMessageSize)...)
	if err != nil {
		if ce, ok := rpcerr.FromContext(ctx.Err()); ok {
			return answer(ce)
		}
		p.cfg.Logger.Warn("backend unavailable", "target", req.Target.String(), "err", err)
		return answer(refuseP(codes.Unavailable, rpcerr.ReasonTargetUnavailable, "backend unavailable"))
	}
	res := relay(ss, cs, cancel, relayHooks{
		up: func(f *forward.Frame) (bool, bool, error) {
			tag, rest, ok := stripTag(f)
			if !ok {
				f.Free()
				return false, false, refuseP(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, "empty exchange frame")
			}
			st.mu.Lock()
			defer st.mu.Unlock()
			switch tag {
			case tagData:
				st.reqChain.Add(rest)
				body.request(rest)
				return true, false, nil
			case tagSeal:
				d := sealDigest(envelope.DirRequest, st.reqChain, codes.OK)
				sig, err := openSeal(&p.cfg, topo, caller, rest, d, p.cfg.Now())
				f.Free()
				if err != nil {
					p.cfg.Logger.Warn("consumer signature invalid", "message_id", req.MessageID, "node", caller.String(), "err", err)
					return false, false, signatureInvalid(ComponentProvider, "the consumer's signature is invalid")
				}
				st.reqSig, st.reqDigest = sig, d
				return false, true, nil
			}
			f.Free()
			return false, false, refuseP(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, "unknown exchange frame")
		},
		upEOF: func() (*forward.Frame, error) {
			return nil, signatureInvalid(ComponentProvider, "request ended without the consumer's signature")
		},
		down: func(f *forward.Frame) (bool, error) {
			b := frameBytes(f)
			st.respChain.Add(b)
			body.response(b)
			prepend(f, tagData)
			return true, nil
		},
		header: body.responseHeaders,
	})
	if !res.local {
		trailer = res.trailer
		ss.SetTrailer(res.trailer)
		if lostUpstream(ctx, res, answered) {
			p.cfg.Logger.Warn("connection to backend lost", "message_id", req.MessageID, "target", req.Target.String(), "err", res.err)
			res.err = refuseP(codes.Unavailable, rpcerr.ReasonTargetUnavailable, "the connection to the backend was lost")
		}
	}
	if e := fedCut(); e != nil {
		return answer(e)
	}
	return answer(res.err)
}

// openSeal decodes the seal b sent by node caller and checks that it signs
// digest d.
func openSeal(cfg *Config, topo *topology.Topology, caller ident.Node, b, d []byte, at time.Time) (*sign.Signature, error) {
	sig, err := sign.Unmarshal(bytes.Clone(b))
	if err != nil {
		return nil, err
	}
	if err := verifyPeer(cfg, topo, caller, sig, d, at); err != nil {
		return nil, err
	}
	return sig, nil
}
