package registry_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/registry"
	"github.com/sildmesh/sild/registry/registrytest"
)

func memberID(code string) *identv1.MemberId {
	return &identv1.MemberId{Instance: "EE", MemberClass: "GOV", MemberCode: code}
}

func TestWritesOnFollowerReachLeaderAndReadsAreCurrent(t *testing.T) {
	c := registrytest.Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f := c.Followers()
	follower := c.AdminClient(f[0])
	other := c.AdminClient(f[1])
	for i := 0; i < 20; i++ {
		if _, err := follower.AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: memberID(string(rune('a'+i)) + "1"), Name: "m"}); err != nil {
			t.Fatalf("add member %d via follower: %v", i, err)
		}
		// A linearizable read on the other follower sees it at once.
		got, err := other.ListMembers(c.Ctx(ctx), &registryv1.ListMembersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.GetMembers()) != i+1 {
			t.Fatalf("after %d writes a linearizable read saw %d members", i+1, len(got.GetMembers()))
		}
	}
	// Every server has the same state.
	want := c.Leader().State()
	for _, m := range c.Live() {
		registrytest.WaitFor(t, 10*time.Second, m.ID+" caught up", func() bool { return proto.Equal(m.State(), want) })
	}
}

func TestAdminErrorsLeaveStateUnchanged(t *testing.T) {
	c := registrytest.Start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a := c.AdminClient(c.Servers[0])
	if _, err := a.AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: memberID("70000310")}); err != nil {
		t.Fatal(err)
	}
	reader, err := a.CreateApiKey(c.Ctx(ctx), &registryv1.CreateApiKeyRequest{Name: "auditor", Role: registryv1.Role_ROLE_READER})
	if err != nil {
		t.Fatal(err)
	}
	before := c.Servers[0].State()
	cases := []struct {
		name   string
		call   func() error
		code   codes.Code
		reason string
	}{
		{"bad member code", func() error {
			_, err := a.AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: memberID("a/b")})
			return err
		}, codes.InvalidArgument, rpcerr.ReasonInvalidIdentifier},
		{"other instance", func() error {
			_, err := a.AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: &identv1.MemberId{Instance: "FI", MemberClass: "GOV", MemberCode: "1"}})
			return err
		}, codes.InvalidArgument, "WRONG_INSTANCE"},
		{"duplicate member", func() error {
			_, err := a.AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: memberID("70000310")})
			return err
		}, codes.AlreadyExists, rpcerr.ReasonAlreadyExists},
		{"subsystem of unknown member", func() error {
			_, err := a.AddSubsystem(c.Ctx(ctx), &registryv1.AddSubsystemRequest{Id: &identv1.SubsystemId{Member: memberID("999"), SubsystemCode: "x"}})
			return err
		}, codes.NotFound, rpcerr.ReasonNotFound},
		{"token for unknown node", func() error {
			_, err := a.CreateJoinToken(c.Ctx(ctx), &registryv1.CreateJoinTokenRequest{Node: &identv1.NodeId{Member: memberID("70000310"), NodeCode: "ss9"}})
			return err
		}, codes.NotFound, rpcerr.ReasonNotFound},
		{"no api key", func() error {
			_, err := a.AddMember(ctx, &registryv1.AddMemberRequest{Id: memberID("2")})
			return err
		}, codes.Unauthenticated, rpcerr.ReasonUnauthenticated},
		{"wrong api key", func() error {
			_, err := a.AddMember(registrytest.WithKey(ctx, c.Admin+"x"), &registryv1.AddMemberRequest{Id: memberID("2")})
			return err
		}, codes.Unauthenticated, rpcerr.ReasonUnauthenticated},
		{"reader may not write", func() error {
			_, err := a.AddMember(registrytest.WithKey(ctx, reader.GetSecret()), &registryv1.AddMemberRequest{Id: memberID("2")})
			return err
		}, codes.PermissionDenied, rpcerr.ReasonPermissionDenied},
		{"bad descriptors", func() error {
			_, err := a.PublishService(c.Ctx(ctx), &registryv1.PublishServiceRequest{
				Service:           &identv1.ServiceId{Subsystem: &identv1.SubsystemId{Member: memberID("70000310"), SubsystemCode: "x"}, ServiceName: "a.B"},
				FileDescriptorSet: []byte("garbage"),
			})
			return err
		}, codes.NotFound, rpcerr.ReasonNotFound},
		{"unknown request", func() error {
			_, err := a.ApproveRequest(c.Ctx(ctx), &registryv1.ApproveRequestRequest{Id: 42})
			return err
		}, codes.NotFound, rpcerr.ReasonNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if status.Code(err) != tc.code || rpcerr.Reason(err) != tc.reason {
				t.Fatalf("got %v (reason %q), want %s / %s", err, rpcerr.Reason(err), tc.code, tc.reason)
			}
		})
	}
	// The reader key may read.
	if _, err := a.ListMembers(registrytest.WithKey(ctx, reader.GetSecret()), &registryv1.ListMembersRequest{}); err != nil {
		t.Fatalf("reader list: %v", err)
	}
	if after := c.Servers[0].State(); !proto.Equal(before, after) {
		t.Fatal("refused commands changed the state")
	}
}

func TestReadReplicaAndServerRemoval(t *testing.T) {
	c := registrytest.Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	replica := c.Add("embassy", false, t.TempDir())
	st, err := c.AdminClient(replica).RaftStatus(c.Ctx(ctx), &registryv1.RaftStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	voters := 0
	for _, s := range st.GetServers() {
		if s.GetVoter() {
			voters++
		}
		if s.GetId() == "embassy" && s.GetVoter() {
			t.Fatal("read replica joined as a voter")
		}
	}
	if len(st.GetServers()) != 4 || voters != 3 {
		t.Fatalf("servers %v", st.GetServers())
	}
	// Writes through the replica reach the leader; it serves reads.
	adm := c.AdminClient(replica)
	if _, err := adm.AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: memberID("1")}); err != nil {
		t.Fatal(err)
	}
	got, err := adm.ListMembers(c.Ctx(ctx), &registryv1.ListMembersRequest{})
	if err != nil || len(got.GetMembers()) != 1 {
		t.Fatalf("linearizable read on the replica: %v %v", got, err)
	}
	registrytest.WaitFor(t, 10*time.Second, "stale read on the replica", func() bool {
		got, err := adm.ListMembers(c.Ctx(ctx), &registryv1.ListMembersRequest{Read: &registryv1.ReadOptions{Stale: true}})
		return err == nil && len(got.GetMembers()) == 1
	})
	// A server token is single-use and names its server.
	_, err = c.AdminClient(c.Servers[0]).CreateServerToken(c.Ctx(ctx), &registryv1.CreateServerTokenRequest{ServerId: "r1"})
	if rpcerr.Reason(err) != rpcerr.ReasonAlreadyExists {
		t.Fatalf("token for an existing server: %v", err)
	}
	// Removing the replica (through a follower) takes it out of the cluster.
	if _, err := c.AdminClient(c.Followers()[0]).RemoveServer(c.Ctx(ctx), &registryv1.RemoveServerRequest{ServerId: "embassy"}); err != nil {
		t.Fatal(err)
	}
	st, err = c.AdminClient(c.Leader()).RaftStatus(c.Ctx(ctx), &registryv1.RaftStatusRequest{})
	if err != nil || len(st.GetServers()) != 3 {
		t.Fatalf("after removal: %v %v", st.GetServers(), err)
	}
	_, err = c.AdminClient(c.Leader()).RemoveServer(c.Ctx(ctx), &registryv1.RemoveServerRequest{ServerId: "nope"})
	if rpcerr.Reason(err) != rpcerr.ReasonNotFound {
		t.Fatalf("removing an unknown server: %v", err)
	}
}

func TestCatalogueKeepsDescriptors(t *testing.T) {
	c := registrytest.Start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	adm := c.AdminClient(c.Servers[0])
	sub := &identv1.SubsystemId{Member: memberID("1"), SubsystemCode: "health"}
	if _, err := adm.AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: memberID("1")}); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.AddSubsystem(c.Ctx(ctx), &registryv1.AddSubsystemRequest{Id: sub}); err != nil {
		t.Fatal(err)
	}
	// The health service's own descriptors (grpc.health.v1) as published.
	fds := &descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{protodesc.ToFileDescriptorProto(healthpb.File_grpc_health_v1_health_proto)}}
	raw, err := proto.Marshal(fds)
	if err != nil {
		t.Fatal(err)
	}
	svc := &identv1.ServiceId{Subsystem: sub, ServiceName: "grpc.health.v1.Health"}
	_, err = adm.PublishService(c.Ctx(ctx), &registryv1.PublishServiceRequest{Service: svc, FileDescriptorSet: raw})
	if err != nil {
		t.Fatal(err)
	}
	_, err = adm.PublishService(c.Ctx(ctx), &registryv1.PublishServiceRequest{Service: &identv1.ServiceId{Subsystem: sub, ServiceName: "grpc.health.v1.Nope"}, FileDescriptorSet: raw})
	if rpcerr.Reason(err) != "BAD_DESCRIPTORS" {
		t.Fatalf("service missing from its descriptors: %v", err)
	}
	_, err = adm.PublishService(c.Ctx(ctx), &registryv1.PublishServiceRequest{Service: svc, FileDescriptorSet: []byte("garbage")})
	if rpcerr.Reason(err) != "BAD_DESCRIPTORS" {
		t.Fatalf("garbage descriptors: %v", err)
	}
	if _, err := adm.SetServiceEnabled(c.Ctx(ctx), &registryv1.SetServiceEnabledRequest{Service: svc, Enabled: true}); err != nil {
		t.Fatal(err)
	}
	got, err := adm.ListServices(c.Ctx(ctx), &registryv1.ListServicesRequest{})
	if err != nil || len(got.GetServices()) != 1 || !got.GetServices()[0].GetEnabled() || !bytes.Equal(got.GetServices()[0].GetFileDescriptorSet(), raw) {
		t.Fatalf("catalogue: %v %v", got, err)
	}
	_, err = adm.RemoveSubsystem(c.Ctx(ctx), &registryv1.RemoveSubsystemRequest{Id: sub})
	if rpcerr.Reason(err) != "IN_USE" {
		t.Fatalf("removing a subsystem that publishes: %v", err)
	}
}

func TestBackupAndRestore(t *testing.T) {
	c := registrytest.Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	adm := c.AdminClient(c.Followers()[0])
	for i := 0; i < 5; i++ {
		if _, err := adm.AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: memberID(string(rune('a' + i)))}); err != nil {
			t.Fatal(err)
		}
	}
	backup, err := adm.Backup(c.Ctx(ctx), &registryv1.BackupRequest{})
	if err != nil {
		t.Fatal(err)
	}
	reader, err := adm.CreateApiKey(c.Ctx(ctx), &registryv1.CreateApiKeyRequest{Name: "r", Role: registryv1.Role_ROLE_READER})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adm.Backup(registrytest.WithKey(ctx, reader.GetSecret()), &registryv1.BackupRequest{}); rpcerr.Reason(err) != rpcerr.ReasonPermissionDenied {
		t.Fatalf("backup with a reader key: %v", err)
	}
	var st registryv1.State
	if err := proto.Unmarshal(backup.GetState(), &st); err != nil {
		t.Fatal(err)
	}
	// A new cluster (other machines, other data) starts from the backup.
	restored := registrytest.StartWith(t, 1, func(cfg *registry.Config) { cfg.Restore = &st })
	restored.Admin = c.Admin // the old keys are in the backup
	restored.Roots = c.Roots // and so is the CA
	got, err := restored.AdminClient(restored.Servers[0]).ListMembers(restored.Ctx(ctx), &registryv1.ListMembersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.GetMembers()) != 5 {
		t.Fatalf("restored members: %d, want 5", len(got.GetMembers()))
	}
	if _, err := restored.AdminClient(restored.Servers[0]).AddMember(restored.Ctx(ctx), &registryv1.AddMemberRequest{Id: memberID("after")}); err != nil {
		t.Fatalf("write after restore: %v", err)
	}
}
