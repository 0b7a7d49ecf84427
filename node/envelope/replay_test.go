package envelope

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sildmesh/sild/internal/rpcerr"
)

func wantAdmit(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	if code == codes.OK {
		if err != nil {
			t.Fatalf("refused: %v", err)
		}
		return
	}
	if status.Code(err) != code || rpcerr.Reason(err) != reason {
		t.Fatalf("got %v (reason %q), want %v %s", err, rpcerr.Reason(err), code, reason)
	}
	if info := rpcerr.Info(err); info.GetMetadata()["component"] != ComponentProvider {
		t.Fatalf("component %v", info.GetMetadata())
	}
}

func TestReplay(t *testing.T) {
	r := NewReplay(time.Minute, 3)
	t0 := time.Unix(1000, 0)
	wantAdmit(t, r.Admit("a", "1", t0), codes.OK, "")
	wantAdmit(t, r.Admit("a", "1", t0.Add(59*time.Second)), codes.AlreadyExists, rpcerr.ReasonReplayed)
	wantAdmit(t, r.Admit("b", "1", t0), codes.OK, "") // same id, another client
	wantAdmit(t, r.Admit("a", "1", t0.Add(time.Minute)), codes.OK, "")
	wantAdmit(t, r.Admit("a", "1", t0.Add(time.Minute+time.Second)), codes.AlreadyExists, rpcerr.ReasonReplayed)
}

// One client that used up its ids within the window is refused, with its
// own reason; the others are not, and it may call again once its oldest
// ids leave the window.
func TestReplayBoundPerClient(t *testing.T) {
	r := NewReplay(time.Minute, 3)
	t0 := time.Unix(1000, 0)
	for i := range 3 {
		wantAdmit(t, r.Admit("flood", fmt.Sprint(i), t0.Add(time.Duration(i)*time.Second)), codes.OK, "")
	}
	wantAdmit(t, r.Admit("flood", "3", t0.Add(10*time.Second)), codes.ResourceExhausted, ReasonReplayWindowFull)
	wantAdmit(t, r.Admit("flood", "0", t0.Add(10*time.Second)), codes.AlreadyExists, rpcerr.ReasonReplayed)
	for i := range 3 {
		wantAdmit(t, r.Admit("other", fmt.Sprint(i), t0.Add(10*time.Second)), codes.OK, "")
	}
	// id 0 left the window: one more id for flood, and 0 is fresh again.
	wantAdmit(t, r.Admit("flood", "3", t0.Add(time.Minute)), codes.OK, "")
	wantAdmit(t, r.Admit("flood", "4", t0.Add(time.Minute)), codes.ResourceExhausted, ReasonReplayWindowFull)
	wantAdmit(t, r.Admit("flood", "1", t0.Add(time.Minute)), codes.AlreadyExists, rpcerr.ReasonReplayed)
	// Refused ids were not recorded: 4 is fresh once there is room.
	wantAdmit(t, r.Admit("flood", "4", t0.Add(time.Minute+time.Second)), codes.OK, "")
	if n := r.Len(); n != 6 {
		t.Fatalf("%d ids remembered, want 6", n)
	}
}

func TestReplaySeed(t *testing.T) {
	r := NewReplay(time.Minute, 2)
	t0 := time.Unix(1000, 0)
	r.Seed("a", "old", t0.Add(-2*time.Minute)) // out of the window by now
	r.Seed("a", "1", t0.Add(-30*time.Second))
	r.Seed("a", "2", t0.Add(-10*time.Second))
	wantAdmit(t, r.Admit("a", "1", t0), codes.AlreadyExists, rpcerr.ReasonReplayed)
	wantAdmit(t, r.Admit("a", "old", t0), codes.ResourceExhausted, ReasonReplayWindowFull)
	wantAdmit(t, r.Admit("a", "old", t0.Add(30*time.Second)), codes.OK, "")
	wantAdmit(t, r.Admit("a", "2", t0.Add(30*time.Second)), codes.AlreadyExists, rpcerr.ReasonReplayed)
}

// Admit costs the same whether the table is full or not: nothing is
// scanned (the old table scanned every id of every client once full).
func BenchmarkReplayAdmit(b *testing.B) {
	for _, full := range []bool{false, true} {
		b.Run(fmt.Sprintf("full=%v", full), func(b *testing.B) {
			r := NewReplay(time.Hour, 1<<16)
			t0 := time.Unix(1000, 0)
			if full {
				for i := range 1 << 16 {
					r.Admit("flood", fmt.Sprint(i), t0)
				}
			}
			ids := make([]string, 1<<16)
			for i := range ids {
				ids[i] = fmt.Sprint("id-", i)
			}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				// Fresh ids of a steady client: each leaves a window later.
				r.Admit("client", ids[i%len(ids)], t0.Add(time.Duration(i)*time.Hour/(1<<15)))
			}
		})
	}
}
