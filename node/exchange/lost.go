package exchange

import (
	"context"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// lostUpstream reports whether res, a call relayed on ctx, failed because
// the connection to its upstream (the provider's node, or the backend) was
// lost: grpc made up an UNAVAILABLE status (answered, from
// peerstatus.Watch, is false; other statuses it makes up, such as a message
// over the size limit, tell nothing of the network) while the caller was
// still there. The node then answers TARGET_UNAVAILABLE and logs grpc's
// text, which names this organisation's addresses.
func lostUpstream(ctx context.Context, res relayResult, answered *atomic.Bool) bool {
	return !res.local && status.Code(res.err) == codes.Unavailable && !answered.Load() && ctx.Err() == nil
}
