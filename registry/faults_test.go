package registry_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/registry"
	"github.com/sildmesh/sild/registry/registrytest"
)

// members returns the member codes in a server's state.
func members(m *registrytest.Member) map[string]bool {
	out := map[string]bool{}
	for _, x := range m.State().GetMembers() {
		out[x.GetId().GetMemberCode()] = true
	}
	return out
}

// clients holds an admin client per server, for picking live ones.
type clients struct {
	c   *registrytest.Cluster
	mu  sync.Mutex
	all map[*registrytest.Member]registryv1.AdminServiceClient
}

func newClients(c *registrytest.Cluster) *clients {
	cl := &clients{c: c, all: map[*registrytest.Member]registryv1.AdminServiceClient{}}
	for _, m := range c.Servers {
		cl.all[m] = c.AdminClient(m)
	}
	return cl
}

// random returns the client of a random live server.
func (cl *clients) random() registryv1.AdminServiceClient {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	live := cl.c.Live()
	return cl.all[live[rand.IntN(len(live))]]
}

// stop and restart keep the live set consistent with the clients' view.
func (cl *clients) stop(m *registrytest.Member) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.c.Stop(m)
}

func (cl *clients) restart(m *registrytest.Member) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.c.Restart(m)
}

func TestLeaderKilledUnderWrites(t *testing.T) {
	c := registrytest.Start(t, 3)
	cl := newClients(c)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	var acked sync.Map
	var n, afterKill atomic.Int64
	var killedAt atomic.Int64 // unix nanos
	var firstAfter atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				code := fmt.Sprintf("w%d-%d", w, i)
				began := time.Now().UnixNano()
				octx, ocancel := context.WithTimeout(ctx, 10*time.Second)
				_, err := cl.random().AddMember(c.Ctx(octx), &registryv1.AddMemberRequest{Id: memberID(code)})
				ocancel()
				if err == nil {
					acked.Store(code, true)
					n.Add(1)
					if k := killedAt.Load(); k != 0 && began > k {
						afterKill.Add(1)
						firstAfter.CompareAndSwap(0, time.Now().UnixNano())
					}
				}
			}
		}()
	}
	registrytest.WaitFor(t, 60*time.Second, "100 writes", func() bool { return n.Load() >= 100 })
	leader := c.Leader()
	killedAt.Store(time.Now().UnixNano())
	cl.stop(leader)
	registrytest.WaitFor(t, 60*time.Second, "100 writes after the kill", func() bool { return afterKill.Load() >= 100 })
	close(stop)
	wg.Wait()
	t.Logf("failover: first write started after the leader was killed acknowledged %s after the kill; %d writes acknowledged",
		time.Duration(firstAfter.Load()-killedAt.Load()), n.Load())

	survivors := c.Live()
	registrytest.WaitFor(t, 30*time.Second, "survivors agree", func() bool {
		return proto.Equal(survivors[0].State(), survivors[1].State())
	})
	have := members(survivors[0])
	missing := 0
	acked.Range(func(k, _ any) bool {
		if !have[k.(string)] {
			missing++
		}
		return true
	})
	if missing > 0 {
		t.Fatalf("%d acknowledged writes missing after the leader was killed", missing)
	}
	// The old leader comes back and catches up.
	cl.restart(leader)
	registrytest.WaitFor(t, 30*time.Second, "old leader catches up", func() bool {
		return proto.Equal(leader.State(), survivors[0].State())
	})
}

func TestMinorityRefusesWritesAndCatchesUp(t *testing.T) {
	c := registrytest.Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	old := c.Leader()
	oldAdmin := c.AdminClient(old)
	old.Srv.SetPartitioned(true)

	// The cut-off server cannot commit: its writes fail.
	octx, ocancel := context.WithTimeout(ctx, 4*time.Second)
	_, err := oldAdmin.AddMember(c.Ctx(octx), &registryv1.AddMemberRequest{Id: memberID("minority")})
	ocancel()
	// It says why, before the caller's deadline.
	wantReason(t, "write on the minority side", err, codes.Unavailable, registry.ReasonNoLeader)
	// Nor can it serve a linearizable read; a stale one it can.
	octx, ocancel = context.WithTimeout(ctx, 3*time.Second)
	_, err = oldAdmin.ListMembers(c.Ctx(octx), &registryv1.ListMembersRequest{})
	ocancel()
	wantReason(t, "linearizable read on the minority side", err, codes.Unavailable, registry.ReasonNoLeader)
	if _, err := oldAdmin.ListMembers(c.Ctx(ctx), &registryv1.ListMembersRequest{Read: &registryv1.ReadOptions{Stale: true}}); err != nil {
		t.Fatalf("stale read on the minority side: %v", err)
	}

	// The majority elects a leader and goes on.
	var majority []*registrytest.Member
	for _, m := range c.Live() {
		if m != old {
			majority = append(majority, m)
		}
	}
	adm := c.AdminClient(majority[0])
	for i := 0; i < 10; i++ {
		if _, err := adm.AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: memberID(fmt.Sprintf("majority-%d", i))}); err != nil {
			t.Fatalf("write on the majority side: %v", err)
		}
	}
	// A key created on the majority side is not known to be wrong on the
	// minority side: that server says it has no leader.
	key, err := adm.CreateApiKey(c.Ctx(ctx), &registryv1.CreateApiKeyRequest{Name: "late", Role: registryv1.Role_ROLE_READER})
	if err != nil {
		t.Fatal(err)
	}
	octx, ocancel = context.WithTimeout(ctx, 3*time.Second)
	_, err = oldAdmin.ListMembers(registrytest.WithKey(octx, key.GetSecret()), &registryv1.ListMembersRequest{Read: &registryv1.ReadOptions{Stale: true}})
	ocancel()
	wantReason(t, "a new key on the minority side", err, codes.Unavailable, registry.ReasonNoLeader)

	// Healed, the old leader catches up; the write it refused is nowhere.
	old.Srv.SetPartitioned(false)
	registrytest.WaitFor(t, 30*time.Second, "healed server catches up", func() bool {
		return proto.Equal(old.State(), majority[0].State())
	})
	got := members(old)
	if got["minority"] || len(got) != 10 {
		t.Fatalf("members after healing: %v", got)
	}
}

func TestClusterRestartKeepsState(t *testing.T) {
	c := registrytest.Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	adm := c.AdminClient(c.Leader())
	for i := 0; i < 30; i++ {
		if _, err := adm.AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: memberID(fmt.Sprintf("m%d", i)), Name: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := adm.AddGroup(c.Ctx(ctx), &registryv1.AddGroupRequest{Code: "health", Description: "health care"}); err != nil {
		t.Fatal(err)
	}
	want := c.Leader().State()
	for _, m := range c.Servers {
		registrytest.WaitFor(t, 30*time.Second, m.ID+" caught up", func() bool { return proto.Equal(m.State(), want) })
	}
	for _, m := range c.Servers {
		c.Stop(m)
	}
	for _, m := range c.Servers {
		c.Restart(m)
	}
	c.Leader()
	for _, m := range c.Servers {
		c.WaitReady(m)
		if got := m.State(); !proto.Equal(got, want) {
			t.Fatalf("%s after restart differs from before", m.ID)
		}
	}
	// And it still works.
	if _, err := c.AdminClient(c.Servers[1]).AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: memberID("after")}); err != nil {
		t.Fatal(err)
	}
}

// Linearizability: clients add, remove and list members on random servers
// while leaders are killed and restarted; porcupine checks that the history
// has a linearization. Each key (member code) is its own register; a list is
// a read of every key at once, split per key.

type linInput struct {
	op  string // add, remove, read
	key string
}

type linOutput struct {
	ok      bool // add/remove: applied; read: present
	unknown bool // the write's outcome is not known (timeout, server died)
}

var linModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(linInput).key
			by[k] = append(by[k], op)
		}
		var out [][]porcupine.Operation
		for _, ops := range by {
			out = append(out, ops)
		}
		return out
	},
	Init: func() any { return false },
	Step: func(state, input, output any) (bool, any) {
		present := state.(bool)
		in, out := input.(linInput), output.(linOutput)
		switch in.op {
		case "add":
			if out.unknown || out.ok {
				return out.unknown || !present, true
			}
			return present, present
		case "remove":
			if out.unknown || out.ok {
				return out.unknown || present, false
			}
			return !present, present
		default:
			return out.ok == present, present
		}
	},
	Equal: func(a, b any) bool { return a == b },
	DescribeOperation: func(input, output any) string {
		return fmt.Sprintf("%s(%s) -> %+v", input.(linInput).op, input.(linInput).key, output)
	},
}

func TestLinearizableAcrossLeaderKills(t *testing.T) {
	c := registrytest.Start(t, 3)
	cl := newClients(c)
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	keys := []string{"k0", "k1", "k2", "k3", "k4"}
	start := time.Now()
	var mu sync.Mutex
	var history []porcupine.Operation
	record := func(client int, in linInput, call int64, out linOutput, ret int64) {
		mu.Lock()
		history = append(history, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
		mu.Unlock()
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for client := 0; client < 4; client++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				adm := cl.random()
				octx, ocancel := context.WithTimeout(ctx, 5*time.Second)
				octx = c.Ctx(octx)
				call := int64(time.Since(start))
				switch r := rand.IntN(3); r {
				case 0, 1:
					in := linInput{op: "add", key: keys[rand.IntN(len(keys))]}
					var err error
					if r == 0 {
						_, err = adm.AddMember(octx, &registryv1.AddMemberRequest{Id: memberID(in.key)})
					} else {
						in.op = "remove"
						_, err = adm.RemoveMember(octx, &registryv1.RemoveMemberRequest{Id: memberID(in.key)})
					}
					ret := int64(time.Since(start))
					switch status.Code(err) {
					case codes.OK:
						record(client, in, call, linOutput{ok: true}, ret)
					case codes.AlreadyExists, codes.NotFound:
						record(client, in, call, linOutput{}, ret)
					default: // outcome unknown: it may take effect at any later time
						record(client, in, call, linOutput{unknown: true}, math.MaxInt64)
					}
				default:
					resp, err := adm.ListMembers(octx, &registryv1.ListMembersRequest{})
					ret := int64(time.Since(start))
					if err == nil {
						have := map[string]bool{}
						for _, m := range resp.GetMembers() {
							have[m.GetId().GetMemberCode()] = true
						}
						for _, k := range keys {
							record(client, linInput{op: "read", key: k}, call, linOutput{ok: have[k]}, ret)
						}
					}
				}
				ocancel()
			}
		}()
	}
	for round := 0; round < 2; round++ {
		time.Sleep(1500 * time.Millisecond)
		l := c.Leader()
		cl.stop(l)
		time.Sleep(1500 * time.Millisecond)
		cl.restart(l)
	}
	time.Sleep(1 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d operations recorded", len(history))
	if len(history) < 50 {
		t.Fatalf("only %d operations: the cluster made too little progress to check", len(history))
	}
	res, info := porcupine.CheckOperationsVerbose(linModel, history, 60*time.Second)
	if res != porcupine.Ok {
		for _, part := range info.PartialLinearizationsOperations() {
			for _, lin := range part {
				if len(lin) > 0 {
					t.Logf("partial linearization: %d ops", len(lin))
				}
			}
		}
		t.Fatalf("history is not linearizable: %s", res)
	}
}

// TestJoinWaitsForALeader: a server that asks to join while the cluster has
// no leader (an election, a lost quorum) is told UNAVAILABLE and retries
// until a leader admits it, instead of giving up at once.
func TestJoinWaitsForALeader(t *testing.T) {
	c := registrytest.Start(t, 3)
	tok := c.ServerToken("r4", false)
	r1 := c.Servers[0]
	c.Stop(c.Servers[1])
	c.Stop(c.Servers[2])
	registrytest.WaitFor(t, 20*time.Second, "r1 without a leader", func() bool {
		_, id := r1.Srv.Raft().LeaderWithID()
		return id == ""
	})
	m := c.Join("r4", filepath.Join(t.TempDir(), "r4"), tok)
	time.Sleep(time.Second) // asked meanwhile, refused: no leader
	c.Restart(c.Servers[1])
	c.WaitReady(m)
}
