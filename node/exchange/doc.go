// Package exchange carries member calls through the mesh: the Consumer is the
// gRPC handler of a node's consumer listener (member systems call it with
// any stub and the sild-* headers), the Provider the handler of its exchange
// listener (other nodes call it over SPIFFE mTLS). Frames are forwarded raw
// for every call kind; deadlines, cancellation, headers, trailers and status
// pass through.
//
// # Checks
//
// Consumer, before anything is sent: the configuration is present and not
// expired; the request headers parse (envelope.ParseRequest); the client
// subsystem is one of Config.Clients, the configuration says this node
// serves it and Config.MayCallAs (if set) lets the caller speak for it; the
// method path is valid (the canonical path is what is forwarded); the
// target subsystem has an active hosting node; if the catalogue lists the
// target service it must be enabled (a service the catalogue does not list
// may still be called: the catalogue carries descriptors, the provider's own
// access rights decide). It picks the
// hosting node with the fewest calls in flight (round robin among equals)
// and tries the next one if no connection can be made to it.
//
// Provider, before anything reaches the backend: the configuration is
// present and not expired; the caller's SVID is of this trust domain (or of
// an actively federated one) and names an active node whose registered SPIFFE ID it is; the request headers
// parse and carry a message id; the caller node is registered for the
// claimed client subsystem; the target is a subsystem this node serves with
// a backend; the message id was not seen from that client within the replay
// window; an access right allows the client (or one of its global groups)
// the method.
//
// # Exchange protocol between nodes (signatures)
//
// The consumer node sends every request message with a one-byte tag:
// 0x00 followed by the message bytes. When its client half-closes, it signs
// the request seal digest and sends one last message 0x01 followed by the
// encoded sign.Signature, then half-closes. The provider strips the tags,
// forwards data messages to the backend, verifies the seal when it arrives
// and only then half-closes towards the backend. Since grpc servers run a
// unary or server-streaming handler only once the request is half-closed,
// such a backend is never invoked for a request whose signature fails; for
// client- and bidi-streaming methods the backend may have seen messages, but
// the refusal replaces its answer. A request that ends without a valid seal
// is refused with SIGNATURE_INVALID.
//
// The response direction mirrors it. The provider sends every response
// message as 0x00 followed by its bytes; when the backend has ended the
// call, it signs the response seal digest (over those messages and the
// final status code), records the exchange, sends 0x01 followed by the
// encoded signature and ends the call with that status. It does so on
// every answer, its own refusals included. The consumer strips the tags,
// passes data messages to the client as they come and keeps the seal; it
// verifies the seal against the final status before releasing that status
// (an OK status without a valid seal, a seal that does not verify, and any
// message after the seal or without a known tag become SIGNATURE_INVALID).
// A stream's messages reach the client as they come; the final status is
// what vouches for them. (Sealing in a message rather than in the trailers
// spares the header coding of about 1 KB per call, base64 and Huffman on
// both sides.)
//
// Seal digest = SHA-256("sild-seal-v1" || direction || chain head ||
// uint64be(message count) || uint32be(status code)), where the chain is the
// envelope.Chain of that direction (bound to message id, method, client,
// target, user id, purpose and request time) and the status code is 0 for the request. Signatures must carry
// their certificate chain (sign.Config.IncludeChain): the receiver checks the
// signing certificate against the configuration's roots, that its SPIFFE ID
// is the peer node's, and that its key is the node's registered signing key
// when the configuration names one.
//
// If the backend ends a call before the client half-closed, the request part
// is recorded without the consumer's signature (it was never made).
//
// # Evidence
//
// Each side writes one sild.ledger.v1.Record per exchange through
// Config.Recorder and releases the final status only once Record returned
// nil (otherwise LEDGER_UNAVAILABLE). The consumer also holds the answer of
// a method the catalogue describes as answering once (unary, client
// streaming) until then and until the provider's seal verified; stream
// messages pass as they come and the final status vouches for them. The consumer records every call it
// sent to a provider; the provider every call from an identified node that
// it answered, refusals included. Refusals before that are not exchanges
// and are only logged.
//
// # Errors
//
//	no configuration yet          Unavailable         UNAVAILABLE
//	configuration expired         Unavailable         CONFIG_EXPIRED
//	client not served here        PermissionDenied    UNKNOWN_CLIENT      (consumer)
//	caller node not registered    Unauthenticated     UNKNOWN_CLIENT      (provider)
//	  for the client
//	unknown/removed caller node   Unauthenticated     UNAUTHENTICATED     (provider)
//	target without active node,   NotFound            UNKNOWN_TARGET
//	  or disabled service, or not
//	  served by the provider
//	no hosting node reachable,    Unavailable         TARGET_UNAVAILABLE
//	  or the connection to the
//	  provider's node (consumer)
//	  or backend (provider) lost
//	no access right               PermissionDenied    ACCESS_DENIED       (provider)
//	federation not active         PermissionDenied    FEDERATION_INACTIVE
//	message id replayed           AlreadyExists       MESSAGE_REPLAYED    (provider)
//	request older than the        FailedPrecondition  STALE_REQUEST       (provider)
//	  replay window, or ahead
//	client over its replay bound  ResourceExhausted   REPLAY_WINDOW_FULL  (provider)
//	signature missing or invalid  Unauthenticated     SIGNATURE_INVALID
//	evidence not durable          Unavailable         LEDGER_UNAVAILABLE
//
// Component "node.consumer" or "node.provider". Statuses of the backend
// pass through unchanged; a status grpc made up because a connection was
// lost becomes TARGET_UNAVAILABLE, so that no text about this network's
// sockets reaches another organisation.
//
// # Limits
//
// A stream is recorded once, when it ends (the ledger has no open/close
// records yet). Connections to other nodes are pooled by address and SPIFFE
// ID; once a configuration no longer names that pair for the node (it moved,
// was re-registered or removed), the connection leaves the pool and is
// closed when the last call on it ends. Health is learnt only from failed
// connection attempts (gRPC's own backoff), not probed.
//
// # Wiring in the node daemon
//
//	cfg := exchange.Config{Node: self, Topology: current, SVID: svids, Bundles: bundles,
//		Signer: signer, Verifier: sign.NewVerifier(0), Access: store, Logger: log,
//		Recorder: exchange.RecorderFunc(func(ctx context.Context, r *ledgerv1.Record, body *ledgerv1.Body) error {
//			_, err := led.Append(ctx, r, body).Wait(ctx)
//			return err
//		}),
//		Capture:  func(sub ident.Subsystem) exchange.Capture {...}, // per the subsystems' body setting
//		Clients:  []ident.Subsystem{...},                 // consumer side
//		Backends: map[ident.Subsystem]string{sub: addr}, // provider side
//	}
//	c, err := exchange.NewConsumer(cfg)                  // defer c.Close()
//	consumerSrv := grpc.NewServer(c.ServerOptions()...)  // + TLS creds if configured
//	p, err := exchange.NewProvider(cfg)                  // defer p.Close()
//	exchangeSrv := grpc.NewServer(p.ServerOptions()...)  // includes the mTLS credentials
//
// Neither starts goroutines of its own beyond those of a call in flight;
// Close closes their pooled client connections.
package exchange
