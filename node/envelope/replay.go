package envelope

import (
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/sildmesh/sild/internal/rpcerr"
)

// ComponentProvider is the rpcerr component of provider-side refusals.
const ComponentProvider = "node.provider"

// ReasonReplayWindowFull refuses a call whose client already has the most
// message ids a Replay remembers per client within its window (code
// ResourceExhausted). Only that client is refused; it may call again once
// its oldest ids leave the window.
const ReasonReplayWindowFull = "REPLAY_WINDOW_FULL"

// Replay remembers message ids per client for a window and refuses repeats.
// It is safe for concurrent use.
//
// Each client has its own bound: a client that used up its share of ids
// within the window is refused (ReasonReplayWindowFull) without touching
// other clients. Ids leave in the order they came (one queue ordered by
// time), so every call costs O(1) amortised, full or not.
type Replay struct {
	window time.Duration
	max    int

	mu        sync.Mutex
	seen      map[replayKey]int64 // unix nanos when (client, id) was recorded
	perClient map[string]int      // entries of queue per client
	queue     []replayEntry       // queue[head:] in the order recorded
	head      int
}

type replayKey struct{ client, id string }

type replayEntry struct {
	key replayKey
	at  int64
}

// NewReplay returns a replay window that remembers message ids for window
// and at most maxPerClient of them per client. A client whose ids within
// the window reach maxPerClient is refused rather than having ids forgotten
// early.
func NewReplay(window time.Duration, maxPerClient int) *Replay {
	return &Replay{window: window, max: maxPerClient,
		seen: make(map[replayKey]int64), perClient: make(map[string]int)}
}

// Window returns how long ids are remembered.
func (r *Replay) Window() time.Duration { return r.window }

// Admit records (client, id) at now and returns nil if it is fresh. It
// refuses with AlreadyExists and rpcerr.ReasonReplayed if the id was
// recorded for client within the window, and with ResourceExhausted and
// ReasonReplayWindowFull if client already has maxPerClient ids within the
// window; a refused id is not recorded.
func (r *Replay) Admit(client, id string, now time.Time) error {
	k := replayKey{client, id}
	at := now.UnixNano()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expire(at)
	if t, ok := r.seen[k]; ok && at-t < int64(r.window) {
		return rpcerr.New(codes.AlreadyExists, rpcerr.ReasonReplayed, ComponentProvider, "message id already seen")
	}
	if r.perClient[client] >= r.max {
		return rpcerr.New(codes.ResourceExhausted, ReasonReplayWindowFull, ComponentProvider,
			"too many message ids of this client within the replay window")
	}
	r.add(k, at)
	return nil
}

// Seed records (client, id) as seen at t, unconditionally: what a restarted
// node learns from its ledger. Seeding in order of t, oldest first, lets
// ids leave the window on time; out of order they are kept longer.
func (r *Replay) Seed(client, id string, t time.Time) {
	k := replayKey{client, id}
	at := t.UnixNano()
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.seen[k]; ok && old >= at {
		return
	}
	r.add(k, at)
}

// Len returns how many ids are remembered (some may have just expired).
func (r *Replay) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.queue) - r.head
}

func (r *Replay) add(k replayKey, at int64) {
	r.seen[k] = at
	r.perClient[k.client]++
	r.queue = append(r.queue, replayEntry{k, at})
}

// expire drops the entries recorded a window or more before now, from the
// front of the queue.
func (r *Replay) expire(now int64) {
	for r.head < len(r.queue) {
		e := r.queue[r.head]
		if now-e.at < int64(r.window) {
			break
		}
		r.queue[r.head] = replayEntry{}
		r.head++
		if t, ok := r.seen[e.key]; ok && t == e.at { // not recorded again since
			delete(r.seen, e.key)
		}
		if n := r.perClient[e.key.client] - 1; n > 0 {
			r.perClient[e.key.client] = n
		} else {
			delete(r.perClient, e.key.client)
		}
	}
	// Reuse the front once half the slice is spent.
	if r.head > 0 && r.head >= len(r.queue)/2 {
		n := copy(r.queue, r.queue[r.head:])
		clear(r.queue[n:])
		r.queue = r.queue[:n]
		r.head = 0
	}
}
