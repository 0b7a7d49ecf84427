package fsm

import (
	"bytes"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/internal/rpcerr"
)

type applier struct {
	t     testing.TB
	f     *FSM
	index uint64
	now   time.Time
}

func newApplier(t testing.TB) *applier {
	a := &applier{t: t, f: New(), now: time.Unix(1_800_000_000, 0)}
	a.must(&registryv1.Command{Op: &registryv1.Command_Init{Init: &registryv1.Init{
		Instance: "EE", TrustDomain: "ee.sild.test",
		Ca: &registryv1.KeyPair{Certificate: []byte("c"), Key: []byte("k")}, ConfigSigner: &registryv1.KeyPair{Certificate: []byte("c"), Key: []byte("k")},
	}}})
	return a
}

func (a *applier) apply(cmd *registryv1.Command) error {
	if cmd.Time == nil {
		cmd.Time = timestamppb.New(a.now)
	}
	data, err := Encode(cmd)
	if err != nil {
		a.t.Fatal(err)
	}
	a.index++
	return a.f.Apply(&raft.Log{Index: a.index, Type: raft.LogCommand, Data: data}).(*Result).Err
}

func (a *applier) must(cmd *registryv1.Command) {
	a.t.Helper()
	if err := a.apply(cmd); err != nil {
		a.t.Fatal(err)
	}
}

func (a *applier) snapshot() []byte {
	s, err := a.f.Snapshot()
	if err != nil {
		a.t.Fatal(err)
	}
	var buf bytes.Buffer
	s.Persist(&sink{&buf})
	return buf.Bytes()
}

// state returns a copy of the replicated state (without the applied index).
func (a *applier) state() *registryv1.State {
	var p *registryv1.State
	a.f.Read(func(s *State, _ uint64) { p = s.Proto() })
	return p
}

type sink struct{ *bytes.Buffer }

func (sink) ID() string    { return "x" }
func (sink) Cancel() error { return nil }
func (sink) Close() error  { return nil }

func member(code string) *identv1.MemberId {
	return &identv1.MemberId{Instance: "EE", MemberClass: "GOV", MemberCode: code}
}

func TestManualApprovalAndSnapshotRoundTrip(t *testing.T) {
	a := newApplier(t)
	sub := &identv1.SubsystemId{Member: member("1"), SubsystemCode: "reg"}
	n := &identv1.NodeId{Member: member("1"), NodeCode: "ss1"}
	a.must(&registryv1.Command{Op: &registryv1.Command_AddMember{AddMember: &registryv1.AddMemberRequest{Id: member("1")}}})
	a.must(&registryv1.Command{Op: &registryv1.Command_AddSubsystem{AddSubsystem: &registryv1.AddSubsystemRequest{Id: sub}}})
	a.must(&registryv1.Command{Op: &registryv1.Command_AddNode{AddNode: &registryv1.AddNodeRequest{Id: n}}})
	a.must(&registryv1.Command{Op: &registryv1.Command_SetAutoApprove{SetAutoApprove: &registryv1.SetAutoApproveRequest{Kind: KindRegisterSubsystem}}})
	a.must(&registryv1.Command{Op: &registryv1.Command_RegisterSubsystem{RegisterSubsystem: &registryv1.RegisterSubsystemRequest{Subsystem: sub, Node: n}}})
	hosted := func() int {
		var k int
		a.f.Read(func(s *State, _ uint64) { k = len(s.Subsystems["EE/GOV/1/reg"].GetNodes()) })
		return k
	}
	if hosted() != 0 {
		t.Fatal("registration applied without approval")
	}
	a.must(&registryv1.Command{Op: &registryv1.Command_ApproveRequest{ApproveRequest: &registryv1.ApproveRequestRequest{Id: 1}}})
	if hosted() != 1 {
		t.Fatal("approved registration not applied")
	}
	if err := a.apply(&registryv1.Command{Op: &registryv1.Command_RejectRequest{RejectRequest: &registryv1.RejectRequestRequest{Id: 1}}}); rpcerr.Reason(err) != ReasonInUse {
		t.Fatalf("deciding twice: %v", err)
	}
	// Snapshot, restore into a new FSM, snapshot again: identical bytes.
	snap := a.snapshot()
	b := New()
	if err := b.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	if b.Index() != a.f.Index() {
		t.Fatalf("restored index %d, want %d", b.Index(), a.f.Index())
	}
	again, _ := b.Snapshot()
	var buf bytes.Buffer
	again.Persist(&sink{&buf})
	if !bytes.Equal(buf.Bytes(), snap) {
		t.Fatal("restored state encodes differently")
	}
}

// FuzzApply feeds arbitrary log entries (as a forwarding peer could) to a
// populated FSM: it must not panic, and a refused entry changes nothing.
func FuzzApply(f *testing.F) {
	seed, _ := proto.Marshal(&registryv1.Command{Op: &registryv1.Command_AddMember{AddMember: &registryv1.AddMemberRequest{Id: member("2")}}})
	f.Add(seed)
	seed2, _ := proto.Marshal(&registryv1.Command{Op: &registryv1.Command_RemoveNode{RemoveNode: &registryv1.RemoveNodeRequest{}}})
	f.Add(seed2)
	f.Fuzz(func(t *testing.T, data []byte) {
		a := newApplier(t)
		a.must(&registryv1.Command{Op: &registryv1.Command_AddMember{AddMember: &registryv1.AddMemberRequest{Id: member("1")}}})
		before := a.state()
		a.index++
		res := a.f.Apply(&raft.Log{Index: a.index, Type: raft.LogCommand, Data: data}).(*Result)
		if res.Err != nil && !proto.Equal(before, a.state()) {
			t.Fatalf("refused command (%v) changed the state", res.Err)
		}
	})
}

func TestServerJoinIsIdempotent(t *testing.T) {
	a := newApplier(t)
	a.must(&registryv1.Command{Op: &registryv1.Command_AddJoinToken{AddJoinToken: &registryv1.JoinToken{
		Hash: "h", Subject: &registryv1.JoinToken_ServerId{ServerId: "r2"}, ExpiresAt: timestamppb.New(a.now.Add(time.Hour)),
	}}})
	info := &registryv1.ServerInfo{Id: "r2", RaftAddress: "127.0.0.1:1", ApiAddress: "127.0.0.1:2"}
	join := &registryv1.Command{Op: &registryv1.Command_ServerJoined{ServerJoined: &registryv1.ServerJoined{TokenHash: "h", Server: info}}}
	a.must(join)
	if err := a.apply(proto.Clone(join).(*registryv1.Command)); err != nil {
		t.Fatalf("the same join again: %v", err)
	}
	other := &registryv1.ServerInfo{Id: "r2", RaftAddress: "127.0.0.1:9", ApiAddress: "127.0.0.1:2"}
	err := a.apply(&registryv1.Command{Op: &registryv1.Command_ServerJoined{ServerJoined: &registryv1.ServerJoined{TokenHash: "h", Server: other}}})
	if rpcerr.Reason(err) != ReasonTokenInvalid {
		t.Fatalf("a spent token for other addresses: %v", err)
	}
}

// refused applies cmd, wants the reason, and checks the state is unchanged.
func (a *applier) refused(cmd *registryv1.Command, reason string) {
	a.t.Helper()
	before := a.state()
	err := a.apply(cmd)
	if rpcerr.Reason(err) != reason {
		a.t.Fatalf("got %v, want reason %s", err, reason)
	}
	if !proto.Equal(before, a.state()) {
		a.t.Fatalf("refused command (%v) changed the state", err)
	}
}

func TestGroupMemberOfThisInstanceMustExist(t *testing.T) {
	a := newApplier(t)
	a.must(&registryv1.Command{Op: &registryv1.Command_AddMember{AddMember: &registryv1.AddMemberRequest{Id: member("1")}}})
	a.must(&registryv1.Command{Op: &registryv1.Command_AddSubsystem{AddSubsystem: &registryv1.AddSubsystemRequest{Id: &identv1.SubsystemId{Member: member("1"), SubsystemCode: "reg"}}}})
	a.must(&registryv1.Command{Op: &registryv1.Command_AddGroup{AddGroup: &registryv1.AddGroupRequest{Code: "g"}}})
	add := func(sub *identv1.SubsystemId) *registryv1.Command {
		return &registryv1.Command{Op: &registryv1.Command_AddGroupMember{AddGroupMember: &registryv1.AddGroupMemberRequest{Code: "g", Member: sub}}}
	}
	a.refused(add(&identv1.SubsystemId{Member: member("1"), SubsystemCode: "nope"}), "NOT_FOUND")
	a.refused(add(&identv1.SubsystemId{Member: member("2"), SubsystemCode: "reg"}), "NOT_FOUND")
	a.must(add(&identv1.SubsystemId{Member: member("1"), SubsystemCode: "reg"}))
	// A subsystem of another (federated) instance is not known here.
	a.must(add(&identv1.SubsystemId{Member: &identv1.MemberId{Instance: "FI", MemberClass: "GOV", MemberCode: "1"}, SubsystemCode: "pop"}))
}

func TestOnePendingRequestPerRegistration(t *testing.T) {
	a := newApplier(t)
	sub := &identv1.SubsystemId{Member: member("1"), SubsystemCode: "reg"}
	n := &identv1.NodeId{Member: member("1"), NodeCode: "ss1"}
	a.must(&registryv1.Command{Op: &registryv1.Command_AddMember{AddMember: &registryv1.AddMemberRequest{Id: member("1")}}})
	a.must(&registryv1.Command{Op: &registryv1.Command_AddSubsystem{AddSubsystem: &registryv1.AddSubsystemRequest{Id: sub}}})
	a.must(&registryv1.Command{Op: &registryv1.Command_AddNode{AddNode: &registryv1.AddNodeRequest{Id: n}}})
	a.must(&registryv1.Command{Op: &registryv1.Command_SetAutoApprove{SetAutoApprove: &registryv1.SetAutoApproveRequest{Kind: KindRegisterSubsystem}}})
	reg := &registryv1.Command{Op: &registryv1.Command_RegisterSubsystem{RegisterSubsystem: &registryv1.RegisterSubsystemRequest{Subsystem: sub, Node: n}}}
	a.must(reg)
	a.refused(proto.Clone(reg).(*registryv1.Command), "ALREADY_EXISTS")
	a.must(&registryv1.Command{Op: &registryv1.Command_ApproveRequest{ApproveRequest: &registryv1.ApproveRequestRequest{Id: 1}}})
	var hosts int
	a.f.Read(func(s *State, _ uint64) { hosts = len(s.Subsystems["EE/GOV/1/reg"].GetNodes()) })
	if hosts != 1 {
		t.Fatalf("subsystem listed on %d nodes, want 1", hosts)
	}
	// Once decided, the pair may be asked for again (after unregistering).
	a.must(&registryv1.Command{Op: &registryv1.Command_UnregisterSubsystem{UnregisterSubsystem: &registryv1.UnregisterSubsystemRequest{Subsystem: sub, Node: n}}})
	a.must(proto.Clone(reg).(*registryv1.Command))
}

func TestNodeJoinIsIdempotent(t *testing.T) {
	a := newApplier(t)
	n := &identv1.NodeId{Member: member("1"), NodeCode: "ss1"}
	a.must(&registryv1.Command{Op: &registryv1.Command_AddMember{AddMember: &registryv1.AddMemberRequest{Id: member("1")}}})
	a.must(&registryv1.Command{Op: &registryv1.Command_AddNode{AddNode: &registryv1.AddNodeRequest{Id: n}}})
	a.must(&registryv1.Command{Op: &registryv1.Command_AddJoinToken{AddJoinToken: &registryv1.JoinToken{
		Hash: "h", Subject: &registryv1.JoinToken_Node{Node: n}, ExpiresAt: timestamppb.New(a.now.Add(time.Hour)),
	}}})
	joined := func(addr, svid string) *registryv1.Command {
		return &registryv1.Command{Op: &registryv1.Command_NodeJoined{NodeJoined: &registryv1.NodeJoined{
			TokenHash: "h", Node: n, Address: addr, SvidKeyHash: svid, SigningKeyHash: "sign",
		}}}
	}
	a.must(joined("127.0.0.1:1", "svid"))
	before := a.state()
	if err := a.apply(joined("127.0.0.1:1", "svid")); err != nil {
		t.Fatalf("the same join again: %v", err)
	}
	if !proto.Equal(before, a.state()) {
		t.Fatal("the same join again changed the state")
	}
	a.refused(joined("127.0.0.1:1", "other"), ReasonTokenInvalid)
	a.refused(joined("127.0.0.1:2", "svid"), ReasonTokenInvalid)
}

// A command retried with its request id after its answer was lost (the
// same bytes in a later log entry) answers as it did the first time and
// changes nothing; the ids survive a snapshot, and a bounded number are
// kept.
func TestRetriedCommandAnswersAsApplied(t *testing.T) {
	a := newApplier(t)
	add := &registryv1.Command{RequestId: "req-1", Op: &registryv1.Command_AddMember{AddMember: &registryv1.AddMemberRequest{Id: member("1")}}}
	a.must(add)
	before := a.state()
	if err := a.apply(add); err != nil {
		t.Fatalf("the retry of an applied command: %v", err)
	}
	if !proto.Equal(before, a.state()) {
		t.Fatal("the retry changed the state")
	}
	// The same change under another id is a new command, and refused.
	again := &registryv1.Command{RequestId: "req-2", Op: add.Op}
	if err := a.apply(again); rpcerr.Reason(err) != rpcerr.ReasonAlreadyExists {
		t.Fatalf("a second add of the member: %v", err)
	}
	// A refused command's id is not remembered: its retry is refused too.
	if err := a.apply(again); rpcerr.Reason(err) != rpcerr.ReasonAlreadyExists {
		t.Fatalf("the retry of a refused command: %v", err)
	}

	// After a snapshot and restore, the retry still answers as applied.
	b := &applier{t: t, f: New(), index: a.index, now: a.now}
	if err := b.f.Restore(io.NopCloser(bytes.NewReader(a.snapshot()))); err != nil {
		t.Fatal(err)
	}
	if err := b.apply(add); err != nil {
		t.Fatalf("the retry after a restore: %v", err)
	}

	// Only the last MaxAppliedRequests ids are kept.
	for i := range MaxAppliedRequests {
		a.must(&registryv1.Command{RequestId: fmt.Sprintf("fill-%d", i), Op: &registryv1.Command_AddMember{AddMember: &registryv1.AddMemberRequest{Id: member(fmt.Sprintf("m%d", i))}}})
	}
	if n := len(a.state().GetAppliedRequests()); n != MaxAppliedRequests {
		t.Fatalf("%d request ids kept, want %d", n, MaxAppliedRequests)
	}
	if err := a.apply(add); rpcerr.Reason(err) != rpcerr.ReasonAlreadyExists {
		t.Fatalf("a forgotten id is a new command: %v", err)
	}
}
