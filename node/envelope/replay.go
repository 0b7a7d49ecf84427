package envelope

import (
	"sync"
	"time"
)

// Replay remembers message ids per client for a window and refuses repeats.
// It is safe for concurrent use.
type Replay struct {
	window time.Duration
	max    int

	mu   sync.Mutex
	seen map[replayKey]time.Time
}

type replayKey struct{ client, id string }

// NewReplay returns a replay window. max bounds the remembered ids; when it
// is full, expired entries are purged and, if still full, the call is
// refused (Check returns false) rather than forgetting ids early.
func NewReplay(window time.Duration, max int) *Replay {
	return &Replay{window: window, max: max, seen: make(map[replayKey]time.Time)}
}

// Check records (client, id) at now and reports whether it is fresh: false
// if it was seen within the window (or the window is full).
func (r *Replay) Check(client, id string, now time.Time) bool {
	k := replayKey{client, id}
	r.mu.Lock()
	defer r.mu.Unlock()
	if t, ok := r.seen[k]; ok && now.Sub(t) < r.window {
		return false
	}
	if len(r.seen) >= r.max {
		for key, t := range r.seen {
			if now.Sub(t) >= r.window {
				delete(r.seen, key)
			}
		}
		if len(r.seen) >= r.max {
			return false
		}
	}
	r.seen[k] = now
	return true
}
