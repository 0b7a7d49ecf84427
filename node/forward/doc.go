// Package forward is the raw gRPC forwarding core of a sild node: a codec that
// passes message frames through undecoded and a stream handler that proxies
// any method (unary, client-, server- and bidi-streaming) to an upstream
// connection, with per-frame hooks so the layers above can hash, sign,
// verify, count or refuse each message.
package forward
