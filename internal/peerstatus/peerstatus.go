// Package peerstatus tells a status a gRPC server sent from one grpc-go
// made up on the client's side.
//
// When a connection fails, or a limit of the client refuses a message, grpc
// gives the call a status of its own, whose text may name addresses and
// socket errors of the caller's network. A server's status is its answer
// and passes on as it is; a made-up one must not reach another
// organisation or a member system as it is. grpc reports each status
// received from the server (trailers) to the connection's stats handler,
// and nothing when it made the status up: Watch and DialOption use that.
package peerstatus

import (
	"context"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"
)

type key struct{}

// Watch returns ctx with a flag that becomes true when the server of a call
// started with it, on a connection dialled with DialOption, sends its
// status.
func Watch(ctx context.Context) (context.Context, *atomic.Bool) {
	sent := new(atomic.Bool)
	return context.WithValue(ctx, key{}, sent), sent
}

// DialOption is the dial option that makes Watch work on a connection.
var DialOption = grpc.WithStatsHandler(handler{})

type handler struct{}

func (handler) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (handler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (handler) HandleConn(context.Context, stats.ConnStats)                       {}

func (handler) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.InTrailer); ok {
		if sent, ok := ctx.Value(key{}).(*atomic.Bool); ok {
			sent.Store(true)
		}
	}
}
