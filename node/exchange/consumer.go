package exchange

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/peerstatus"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/envelope"
	"github.com/sildmesh/sild/node/forward"
	"github.com/sildmesh/sild/node/sign"
	"github.com/sildmesh/sild/node/topology"
)

// recordTimeout bounds the signing and recording that finish an exchange
// after its caller has gone.
const recordTimeout = 30 * time.Second

// Consumer handles the calls of member systems on the consumer listener and
// carries them to provider nodes. It is safe for concurrent use.
type Consumer struct {
	cfg     Config
	clients map[ident.Subsystem]bool
	rr      atomic.Uint64

	mu       sync.Mutex
	conns    map[peerKey]*pooled
	pruned   *topology.Topology // the configuration conns were last checked against
	inflight map[ident.Node]*atomic.Int64
	closed   bool

	// connectWait bounds the wait for a hosting node's connection while
	// another hosting node remains to be tried (defaultConnectWait).
	connectWait time.Duration
}

// defaultConnectWait is how long a call waits at most for a connection to
// a hosting node that is not ready, if the target has another node; at most
// half of the call's remaining time is spent so.
const defaultConnectWait = 3 * time.Second

type peerKey struct{ addr, id string }

// pooled is a connection to one node at one address. Calls hold a reference
// while they use it; a connection the configuration no longer names (the
// node moved, was re-registered or removed) leaves the pool and is closed
// once its last call ends.
type pooled struct {
	cc    *grpc.ClientConn
	node  ident.Node
	refs  int  // guarded by Consumer.mu
	stale bool // guarded by Consumer.mu
}

// NewConsumer validates cfg (the fields both sides need and Clients) and
// returns a Consumer.
func NewConsumer(cfg Config) (*Consumer, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("new consumer: %w", err)
	}
	if err := cfg.validateConsumer(); err != nil {
		return nil, fmt.Errorf("new consumer: %w", err)
	}
	c := &Consumer{cfg: cfg, clients: map[ident.Subsystem]bool{},
		conns: map[peerKey]*pooled{}, inflight: map[ident.Node]*atomic.Int64{},
		connectWait: defaultConnectWait}
	for _, s := range cfg.Clients {
		c.clients[s] = true
	}
	return c, nil
}

// ServerOptions make a grpc.Server on the consumer listener handle every
// method through c. Add TLS credentials to them if members connect over TLS.
func (c *Consumer) ServerOptions() []grpc.ServerOption {
	return serverOptions(c.Handle, c.cfg.MaxMessageSize, c.cfg.MaxMessageSize)
}

// Close closes the pooled connections to other nodes; calls in flight on
// them fail.
func (c *Consumer) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	var errs []error
	for k, p := range c.conns {
		errs = append(errs, p.cc.Close())
		delete(c.conns, k)
	}
	return errors.Join(errs...)
}

func (c *Consumer) refuse(code codes.Code, reason, msg string) error {
	return rpcerr.New(code, reason, ComponentConsumer, msg)
}

// errUnusableNode: the configuration gives a node no address or SPIFFE ID.
var errUnusableNode = errors.New("node has no usable address or SPIFFE ID in the configuration")

// Conn returns the pooled mTLS connection to node n of topo, authorizing
// exactly its registered SPIFFE ID, and a release func to call once done
// with it. The connection is shared: do not close it. It stays open until
// release is called, even if a new configuration moves the node.
func (c *Consumer) Conn(topo *topology.Topology, n ident.Node) (conn *grpc.ClientConn, release func(), err error) {
	p, err := c.acquire(topo, n)
	if err != nil {
		return nil, nil, err
	}
	return p.cc, func() { c.release(p) }, nil
}

// acquire returns the pooled connection to node n of topo with a reference
// held for the caller, who must release it.
func (c *Consumer) acquire(topo *topology.Topology, n ident.Node) (*pooled, error) {
	k, id, err := peerKeyOf(topo, n)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("consumer closed")
	}
	if topo != c.pruned {
		c.prune(topo)
	}
	p := c.conns[k]
	if p == nil {
		tc := tlsconfig.MTLSClientConfig(c.cfg.SVID, c.cfg.Bundles, tlsconfig.AuthorizeID(id))
		cc, err := grpc.NewClient(k.addr, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc)), peerstatus.DialOption}, windowOptions...)...)
		if err != nil {
			return nil, err
		}
		p = &pooled{cc: cc, node: n}
		c.conns[k] = p
	}
	p.refs++
	return p, nil
}

// peerKeyOf is where topo says node n is and who it must prove to be.
func peerKeyOf(topo *topology.Topology, n ident.Node) (peerKey, spiffeid.ID, error) {
	rec := topo.Node(n)
	id, err := spiffeid.FromString(rec.GetSpiffeId())
	if err != nil || rec.GetAddress() == "" {
		return peerKey{}, spiffeid.ID{}, errUnusableNode
	}
	return peerKey{rec.GetAddress(), id.String()}, id, nil
}

// release drops a reference taken by acquire, closing a stale connection
// with its last one.
func (c *Consumer) release(p *pooled) {
	c.mu.Lock()
	p.refs--
	last := p.stale && p.refs == 0
	c.mu.Unlock()
	if last {
		_ = p.cc.Close()
	}
}

// prune takes out of the pool the connections topo no longer names for
// their node, closing those no call uses. c.mu is held.
func (c *Consumer) prune(topo *topology.Topology) {
	c.pruned = topo
	for k, p := range c.conns {
		rec := topo.Node(p.node)
		if rec != nil && rec.GetAddress() == k.addr && rec.GetSpiffeId() == k.id {
			continue
		}
		delete(c.conns, k)
		p.stale = true
		if p.refs == 0 {
			_ = p.cc.Close() // does not block on calls: none uses it
		}
	}
}

func (c *Consumer) counter(n ident.Node) *atomic.Int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := c.inflight[n]
	if v == nil {
		v = new(atomic.Int64)
		c.inflight[n] = v
	}
	return v
}

// order returns hosts with those whose connection is usable first (ready,
// idle or not yet made; then connecting; then failing), and among those the
// least busy first, rotating among equals.
func (c *Consumer) order(topo *topology.Topology, hosts []ident.Node) []ident.Node {
	n := len(hosts)
	if n == 1 {
		return hosts // nothing to choose: no locks, no connection states
	}
	start := int(c.rr.Add(1) % uint64(n))
	out := make([]ident.Node, 0, n)
	for i := range n {
		out = append(out, hosts[(start+i)%n])
	}
	load := make(map[ident.Node]int64, n)
	rank := make(map[ident.Node]int, n)
	for _, h := range out {
		load[h] = c.counter(h).Load()
		rank[h] = c.health(topo, h)
	}
	less := func(a, b ident.Node) bool {
		if rank[a] != rank[b] {
			return rank[a] < rank[b]
		}
		return load[a] < load[b]
	}
	// Stable insertion sort: n is small.
	for i := 1; i < n; i++ {
		for j := i; j > 0 && less(out[j], out[j-1]); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// health ranks the pooled connection to node n: 0 usable (ready, idle or
// none yet), 1 connecting, 2 failing.
func (c *Consumer) health(topo *topology.Topology, n ident.Node) int {
	k, _, err := peerKeyOf(topo, n)
	if err != nil {
		return 2
	}
	c.mu.Lock()
	p := c.conns[k]
	c.mu.Unlock()
	if p == nil {
		return 0
	}
	switch p.cc.GetState() {
	case connectivity.Ready, connectivity.Idle:
		return 0
	case connectivity.Connecting:
		return 1
	default:
		return 2
	}
}

// ready waits until cc is connected, for at most c.connectWait and half of
// ctx's remaining time; false if it is not by then or is failing.
func (c *Consumer) ready(ctx context.Context, cc *grpc.ClientConn) bool {
	wait := c.connectWait
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)/2)
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		s := cc.GetState()
		switch s {
		case connectivity.Ready:
			return true
		case connectivity.TransientFailure, connectivity.Shutdown:
			return false
		case connectivity.Idle:
			cc.Connect()
		}
		if !cc.WaitForStateChange(wctx, s) {
			return false
		}
	}
}

// open starts the call on one of hosts, trying the next one while no
// connection can be made: a node that refuses, fails, or does not connect
// within the connect wait while another node remains. Nothing has been
// sent to a node passed over. It returns the stream, the chosen node and a
// release func.
func (c *Consumer) open(ctx context.Context, topo *topology.Topology, hosts []ident.Node, method string) (grpc.ClientStream, ident.Node, func(), error) {
	opts := callOptions(c.cfg.MaxMessageSize+overhead, c.cfg.MaxMessageSize+overhead)
	order := c.order(topo, hosts)
	for i, n := range order {
		p, err := c.acquire(topo, n)
		if errors.Is(err, errUnusableNode) {
			c.cfg.Logger.Warn("hosting node unusable in configuration", "node", n.String())
			continue
		}
		if err != nil {
			return nil, n, nil, c.refuse(codes.Unavailable, rpcerr.ReasonTargetUnavailable, "node shutting down")
		}
		if i < len(order)-1 && !c.ready(ctx, p.cc) {
			c.release(p)
			if ce, ok := rpcerr.FromContext(ctx.Err()); ok {
				return nil, n, nil, ce
			}
			c.cfg.Logger.Warn("provider node not connected, trying another", "node", n.String())
			continue
		}
		ctr := c.counter(n)
		ctr.Add(1)
		cs, err := p.cc.NewStream(ctx, fullDuplex, method, opts...)
		if err == nil {
			return cs, n, func() { ctr.Add(-1); c.release(p) }, nil
		}
		ctr.Add(-1)
		c.release(p)
		if ce, ok := rpcerr.FromContext(ctx.Err()); ok {
			return nil, n, nil, ce
		}
		c.cfg.Logger.Warn("provider node unreachable", "node", n.String(), "err", err)
	}
	return nil, ident.Node{}, nil, c.refuse(codes.Unavailable, rpcerr.ReasonTargetUnavailable, "no node of the target is reachable")
}

// Handle is the grpc.StreamHandler of the consumer listener.
func (c *Consumer) Handle(_ any, ss grpc.ServerStream) error {
	start := c.cfg.Now()
	err := c.handle(ss, start)
	c.cfg.observe(ComponentConsumer, err, start)
	return err
}

func (c *Consumer) handle(ss grpc.ServerStream, start time.Time) error {
	ctx := ss.Context()
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return c.refuse(codes.Internal, rpcerr.ReasonInternal, "no method")
	}
	topo, err := topology.Current(c.cfg.Topology, start, ComponentConsumer)
	if err != nil {
		return err
	}
	md, _ := metadata.FromIncomingContext(ctx)
	req, err := envelope.ParseRequest(md, method)
	if err != nil {
		return err
	}
	req.StampTime(start) // whatever the member system sent
	if !c.clients[req.Client] || !topo.Serves(c.cfg.Node, req.Client) {
		return c.refuse(codes.PermissionDenied, rpcerr.ReasonUnknownClient, "client subsystem is not served by this node")
	}
	if c.cfg.MayCallAs != nil && !c.cfg.MayCallAs(ctx, req.Client) {
		return c.refuse(codes.PermissionDenied, rpcerr.ReasonUnknownClient, "caller may not speak for the client subsystem")
	}
	if e := topo.Service(ident.Service{Subsystem: req.Target, Name: req.Service}); e != nil && !e.GetEnabled() {
		return c.refuse(codes.NotFound, rpcerr.ReasonUnknownTarget, "target service is disabled")
	}
	if !federated(topo, req.Target.Member.Instance) {
		return federationInactive(ComponentConsumer, req.Target.Member.Instance)
	}
	// Another ecosystem's subsystems are reachable only through the
	// services it exported to this one (its directory lists those alone).
	if req.Target.Member.Instance != topo.Instance && topo.Service(ident.Service{Subsystem: req.Target, Name: req.Service}) == nil {
		return c.refuse(codes.NotFound, rpcerr.ReasonUnknownTarget, "the target's ecosystem does not export this service to this one")
	}
	hosts := topo.Hosts(req.Target)
	if len(hosts) == 0 {
		return c.refuse(codes.NotFound, rpcerr.ReasonUnknownTarget, "no node serves the target subsystem")
	}

	omd, _ := metadata.FromOutgoingContext(forward.CopyIncoming(ctx))
	omd.Set(envelope.HeaderMessageID, req.MessageID)
	omd.Set(envelope.HeaderRequestTime, req.TimeHeader())
	upCtx, cancel := context.WithCancel(metadata.NewOutgoingContext(ctx, omd))
	defer cancel()
	upCtx, answered := peerstatus.Watch(upCtx)
	// The canonical path: what was validated and what the chains bind.
	cs, peer, release, err := c.open(upCtx, topo, hosts, req.FullMethod())
	if err != nil {
		return err
	}
	defer release()
	fedCut := func() error { return nil }
	if peer.Member.Instance != topo.Instance {
		var stop func()
		fedCut, stop = watchFederation(&c.cfg, ComponentConsumer, peer.Member.Instance, nil, cancel)
		defer stop()
	}

	st := &callState{
		reqChain:  envelope.NewChain(envelope.DirRequest, req),
		respChain: envelope.NewChain(envelope.DirResponse, req),
	}
	body := c.cfg.capture(req.Client, md)
	// The answer of a method that answers once is held until the provider's
	// seal over it verified and this node's record is durable; a stream's
	// messages pass as they come, and its status vouches for them.
	hold := topo.SingleResponse(ident.Service{Subsystem: req.Target, Name: req.Service}, req.Method)
	var held *forward.Frame
	defer func() {
		if held != nil {
			held.Free()
		}
	}()
	res := relay(ss, cs, cancel, relayHooks{
		up: func(f *forward.Frame) (bool, bool, error) {
			b := frameBytes(f)
			body.request(b)
			st.mu.Lock()
			st.reqChain.Add(b)
			st.mu.Unlock()
			prepend(f, tagData)
			return true, false, nil
		},
		upEOF: func() (*forward.Frame, error) {
			st.mu.Lock()
			d := sealDigest(envelope.DirRequest, st.reqChain, codes.OK)
			st.mu.Unlock()
			sig, err := c.cfg.Signer.Sign(ctx, d)
			if ce, ok := rpcerr.FromContext(err); ok {
				return nil, ce
			}
			if err != nil {
				c.cfg.Logger.Error("sign request", "message_id", req.MessageID, "err", err)
				return nil, c.refuse(codes.Internal, rpcerr.ReasonInternal, "request could not be signed")
			}
			b, err := sig.Marshal()
			if err != nil {
				return nil, c.refuse(codes.Internal, rpcerr.ReasonInternal, "request could not be signed")
			}
			st.mu.Lock()
			st.reqSig, st.reqDigest = sig, d
			st.mu.Unlock()
			return taggedFrame(tagSeal, b), nil
		},
		down: func(f *forward.Frame) (bool, error) {
			tag, rest, ok := stripTag(f)
			switch {
			case ok && st.respSeal == nil && tag == tagData:
				st.respChain.Add(rest)
				body.response(rest)
				if hold && held == nil {
					held = f
					return false, nil
				}
				if held != nil { // a second answer: the method did not answer once
					hold = false
					h := held
					held = nil
					if err := ss.SendMsg(h); err != nil {
						h.Free()
						f.Free()
						return false, err
					}
				}
				return true, nil
			case ok && st.respSeal == nil && tag == tagSeal:
				st.respSeal = bytes.Clone(rest)
				f.Free()
				return false, nil
			}
			f.Free()
			c.cfg.Logger.Warn("malformed answer from provider node", "message_id", req.MessageID, "node", peer.String())
			return false, signatureInvalid(ComponentConsumer, "the provider's answer is not sealed as the protocol requires")
		},
		header: body.responseHeaders,
	})

	err = res.err
	if lostUpstream(ctx, res, answered) {
		c.cfg.Logger.Warn("connection to provider node lost", "message_id", req.MessageID, "node", peer.String(), "err", err)
		err = c.refuse(codes.Unavailable, rpcerr.ReasonTargetUnavailable, "the connection to the provider's node was lost")
	}
	if e := fedCut(); e != nil {
		err = e
	}
	var provSig *sign.Signature
	respDigest := sealDigest(envelope.DirResponse, st.respChain, status.Code(normalize(err, ComponentConsumer)))
	if !res.local {
		code := status.Code(err)
		if st.respSeal != nil || code == codes.OK {
			sig, verr := sign.Unmarshal(st.respSeal)
			if verr == nil {
				verr = verifyPeer(&c.cfg, topo, peer, sig, respDigest, c.cfg.Now())
			}
			if verr != nil {
				c.cfg.Logger.Warn("provider signature invalid", "message_id", req.MessageID, "node", peer.String(), "err", verr)
				err = signatureInvalid(ComponentConsumer, "the provider's signature is missing or invalid")
			} else {
				provSig = sig
			}
		}
		ss.SetTrailer(res.trailer)
	}
	err = normalize(err, ComponentConsumer)

	rec := newRecord(ledgerv1.Side_SIDE_CONSUMER, req, peer, start)
	st.mu.Lock()
	finishRecord(rec, st.reqDigest, respDigest,
		st.reqChain.Count(), st.respChain.Count(), err, c.cfg.Now())
	if st.reqSig != nil {
		rec.ConsumerSignature = st.reqSig.Proto()
	}
	st.mu.Unlock()
	if provSig != nil {
		rec.ProviderSignature = provSig.Proto()
	}
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer rcancel()
	if rerr := c.cfg.Recorder.Record(rctx, rec, body.result(res.trailer)); rerr != nil {
		c.cfg.Logger.Error("record exchange", "message_id", req.MessageID, "err", rerr)
		return ledgerUnavailable(ComponentConsumer)
	}
	if held != nil && err == nil {
		h := held
		held = nil
		if serr := ss.SendMsg(h); serr != nil {
			h.Free()
			c.cfg.Logger.Warn("answer not delivered", "message_id", req.MessageID, "err", serr)
		}
	}
	return err
}

// normalize turns err into a status error fit for the caller: context
// errors become their codes, errors without a status an opaque Internal.
func normalize(err error, component string) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if ce, ok := rpcerr.FromContext(err); ok {
		return ce
	}
	return rpcerr.New(codes.Internal, rpcerr.ReasonInternal, component, "internal error")
}
