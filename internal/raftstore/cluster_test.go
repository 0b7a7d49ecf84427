package raftstore

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// listFSM records every applied command, in order.
// A command seen before is ignored, so that a test retrying an Apply whose
// outcome it did not learn (leadership lost) cannot duplicate it.
type listFSM struct {
	mu  sync.Mutex
	cmd []string
}

func (f *listFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := string(l.Data)
	for _, have := range f.cmd {
		if have == c {
			return len(f.cmd)
		}
	}
	f.cmd = append(f.cmd, c)
	return len(f.cmd)
}

func (f *listFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &listSnap{append([]string(nil), f.cmd...)}, nil
}

func (f *listFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var cmd []string
	if err := json.NewDecoder(rc).Decode(&cmd); err != nil {
		return err
	}
	f.mu.Lock()
	f.cmd = cmd
	f.mu.Unlock()
	return nil
}

func (f *listFSM) snapshot() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.cmd...)
}

type listSnap struct{ cmd []string }

func (s *listSnap) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s.cmd); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *listSnap) Release() {}

type testNode struct {
	id    raft.ServerID
	dir   string
	store *Store
	fsm   *listFSM
	trans *raft.InmemTransport
	raft  *raft.Raft
}

func startNode(t *testing.T, id raft.ServerID, dir string) *testNode {
	t.Helper()
	st, err := Open(filepath.Join(dir, "raft"), nil)
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := raft.NewFileSnapshotStore(filepath.Join(dir, "snap"), 2, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	conf := raft.DefaultConfig()
	conf.LocalID = id
	conf.HeartbeatTimeout = 300 * time.Millisecond
	conf.ElectionTimeout = 300 * time.Millisecond
	conf.LeaderLeaseTimeout = 150 * time.Millisecond
	conf.CommitTimeout = 5 * time.Millisecond
	// Snapshot and compact often, so DeleteRange runs under raft for real.
	conf.SnapshotThreshold = 40
	conf.SnapshotInterval = 100 * time.Millisecond
	conf.TrailingLogs = 10
	conf.Logger = hclog.New(&hclog.LoggerOptions{Name: string(id), Level: hclog.Error, Output: io.Discard})
	_, trans := raft.NewInmemTransport(raft.ServerAddress(id))
	n := &testNode{id: id, dir: dir, store: st, fsm: &listFSM{}, trans: trans}
	n.raft, err = raft.NewRaft(conf, n.fsm, st, st, snaps, trans)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (n *testNode) stop(t *testing.T) {
	t.Helper()
	if err := n.raft.Shutdown().Error(); err != nil {
		t.Errorf("shutdown %s: %v", n.id, err)
	}
	_ = n.trans.Close()
	if err := n.store.Close(); err != nil {
		t.Errorf("close store %s: %v", n.id, err)
	}
}

func connect(nodes []*testNode) {
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b && a.raft != nil && b.raft != nil {
				a.trans.Connect(b.trans.LocalAddr(), b.trans)
			}
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func leaderOf(nodes []*testNode) *testNode {
	for _, n := range nodes {
		if n.raft != nil && n.raft.State() == raft.Leader {
			return n
		}
	}
	return nil
}

func apply(t *testing.T, nodes []*testNode, from, to int) {
	t.Helper()
	for i := from; i <= to; {
		var l *testNode
		waitFor(t, "a leader", func() bool { l = leaderOf(nodes); return l != nil })
		err := l.raft.Apply(fmt.Appendf(nil, "cmd-%d", i), 10*time.Second).Error()
		if err != nil {
			// Leadership may move on a loaded machine; retry on the new leader.
			// The FSM ignores a command it has already applied.
			t.Logf("apply %d on %s: %v (retrying)", i, l.id, err)
			continue
		}
		i++
	}
}

func want(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("cmd-%d", i+1)
	}
	return out
}

func sameStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRaftClusterOnBadger(t *testing.T) {
	root := t.TempDir()
	var nodes []*testNode
	var servers []raft.Server
	for i := 0; i < 3; i++ {
		id := raft.ServerID(fmt.Sprintf("n%d", i))
		n := startNode(t, id, filepath.Join(root, string(id)))
		nodes = append(nodes, n)
		servers = append(servers, raft.Server{ID: id, Address: n.trans.LocalAddr()})
	}
	defer func() {
		for _, n := range nodes {
			if n.raft != nil {
				n.stop(t)
			}
		}
	}()
	connect(nodes)
	if err := nodes[0].raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		t.Fatal(err)
	}

	apply(t, nodes, 1, 100)
	for _, n := range nodes {
		waitFor(t, fmt.Sprintf("%s to apply 100 entries", n.id), func() bool { return len(n.fsm.snapshot()) >= 100 })
		if got := n.fsm.snapshot(); !sameStrings(got, want(100)) {
			t.Fatalf("%s applied %d entries, not the 100 in order", n.id, len(got))
		}
	}

	// Stop a follower, write more without it, restart it from its disk state.
	var f *testNode
	for _, n := range nodes {
		if n.raft.State() != raft.Leader {
			f = n
			break
		}
	}
	f.stop(t)
	f.raft = nil
	apply(t, nodes, 101, 250)

	st, err := Open(filepath.Join(f.dir, "raft"), nil)
	if err != nil {
		t.Fatal(err)
	}
	last, _ := st.LastIndex()
	term, err := st.GetUint64([]byte("CurrentTerm"))
	if err != nil || term == 0 || last < 100 {
		t.Fatalf("follower's disk state after stop: last index %d, term %d, %v", last, term, err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	idx := -1
	for i, n := range nodes {
		if n == f {
			idx = i
		}
	}
	restarted := startNode(t, f.id, f.dir)
	nodes[idx] = restarted
	connect(nodes)
	// No bootstrap: the configuration and log come from its store.
	waitFor(t, "the restarted follower to catch up", func() bool { return len(restarted.fsm.snapshot()) >= 250 })
	if got := restarted.fsm.snapshot(); !sameStrings(got, want(250)) {
		t.Fatalf("restarted follower has %d entries, not the 250 in order", len(got))
	}
	apply(t, nodes, 251, 260)
	waitFor(t, "the restarted follower to follow", func() bool { return len(restarted.fsm.snapshot()) >= 260 })

	// Compaction really happened through DeleteRange: the head is gone.
	for _, n := range nodes {
		waitFor(t, fmt.Sprintf("%s to compact its log", n.id), func() bool {
			first, err := n.store.FirstIndex()
			return err == nil && first > 1
		})
	}
}
