package exchange

import (
	"context"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// A call's upstream (the provider's node, or the backend) either sends a
// status or the connection to it fails first. In the second case grpc makes
// up a status whose text names addresses and socket errors of this
// organisation's network; that text must not reach another organisation
// (or a member system), so the node answers TARGET_UNAVAILABLE instead and
// logs the text. statusWatch tells the two apart: grpc reports a status
// received from the peer (trailers) to the connection's stats handler, and
// nothing when it made the status up itself.

// lostUpstream reports whether res, a call relayed on ctx, failed because
// the connection to its upstream was lost: grpc made up an UNAVAILABLE
// status (other statuses it makes up, such as a message over the size
// limit, tell nothing of the network) while the caller was still there.
func lostUpstream(ctx context.Context, res relayResult, answered *atomic.Bool) bool {
	return !res.local && status.Code(res.err) == codes.Unavailable && !answered.Load() && ctx.Err() == nil
}

// statusSeenKey holds, in a call's context, the flag statusWatch sets.
type statusSeenKey struct{}

// watchStatus returns ctx with a flag that becomes true when the upstream
// of a call started with it sends its status (on a connection dialled with
// statusWatchOption).
func watchStatus(ctx context.Context) (context.Context, *atomic.Bool) {
	seen := new(atomic.Bool)
	return context.WithValue(ctx, statusSeenKey{}, seen), seen
}

// statusWatchOption is the dial option that makes watchStatus work.
var statusWatchOption = grpc.WithStatsHandler(statusWatch{})

type statusWatch struct{}

func (statusWatch) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (statusWatch) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (statusWatch) HandleConn(context.Context, stats.ConnStats) {}

func (statusWatch) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.InTrailer); ok {
		if seen, ok := ctx.Value(statusSeenKey{}).(*atomic.Bool); ok {
			seen.Store(true)
		}
	}
}
