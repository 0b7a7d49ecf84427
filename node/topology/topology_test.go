package topology

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/types/known/timestamppb"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/descset"
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestIndex(t *testing.T) {
	sub := must(ident.ParseSubsystem("EE/GOV/70000310/business-registry"))
	client := must(ident.ParseSubsystem("EE/GOV/70000311/licensing"))
	ss1 := must(ident.ParseNode("EE/GOV/70000310/ss1"))
	ss2 := must(ident.ParseNode("EE/GOV/70000310/ss2"))
	svc := must(ident.ParseService("EE/GOV/70000310/business-registry/business.v1.Registry"))
	now := time.Now()
	cfg := &registryv1.GlobalConfig{
		Instance: "EE", TrustDomain: "ee.sild.test", Version: 7, ExpiresAt: timestamppb.New(now.Add(time.Hour)),
		Nodes: []*registryv1.Node{
			{Id: ss1.Proto(), State: registryv1.NodeState_NODE_STATE_ACTIVE, Address: "127.0.0.1:1"},
			{Id: ss2.Proto(), State: registryv1.NodeState_NODE_STATE_REVOKED},
		},
		Subsystems: []*registryv1.Subsystem{{Id: sub.Proto(), Nodes: []*identv1.NodeId{ss1.Proto(), ss2.Proto()}}},
		Groups:     []*registryv1.GlobalGroup{{Code: "licensers", Members: []*identv1.SubsystemId{client.Proto()}}},
		Services:   []*registryv1.CatalogEntry{{Service: svc.Proto(), Enabled: true}},
	}
	top, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if h := top.Hosts(sub); len(h) != 1 || h[0] != ss1 {
		t.Fatalf("hosts %v: a revoked node must not be offered", h)
	}
	if !top.Serves(ss1, sub) || top.Serves(ss2, sub) || top.Serves(ss1, client) {
		t.Fatal("Serves is wrong")
	}
	if g := top.Groups(client); len(g) != 1 || g[0] != "EE:licensers" {
		t.Fatalf("groups %v", g)
	}
	if top.Service(svc) == nil || top.Node(ss1).GetAddress() != "127.0.0.1:1" {
		t.Fatal("lookup failed")
	}
	if top.Expired(now) || !top.Expired(now.Add(2*time.Hour)) {
		t.Fatal("expiry is wrong")
	}
	cfg.TrustDomain = "not a trust domain"
	if _, err := New(cfg); err == nil {
		t.Fatal("bad trust domain accepted")
	}
}

func TestFederatedInstances(t *testing.T) {
	fiNode := must(ident.ParseNode("FI/GOV/0245437-2/ss1"))
	fiSub := must(ident.ParseSubsystem("FI/GOV/0245437-2/population"))
	lvSub := must(ident.ParseSubsystem("LV/GOV/1/x"))
	fiSvc := must(ident.ParseService("FI/GOV/0245437-2/population/pop.v1.Register"))
	now := time.Now()
	cfg := &registryv1.GlobalConfig{
		Instance: "EE", TrustDomain: "ee.sild.test", ExpiresAt: timestamppb.New(now.Add(time.Hour)),
		Federated: []*registryv1.FederatedInstance{{
			Instance: "FI", TrustDomain: "fi.sild.test", Active: true,
			Nodes:      []*registryv1.Node{{Id: fiNode.Proto(), State: registryv1.NodeState_NODE_STATE_ACTIVE}},
			Subsystems: []*registryv1.Subsystem{{Id: fiSub.Proto(), Nodes: []*identv1.NodeId{fiNode.Proto()}}, {Id: lvSub.Proto(), Nodes: []*identv1.NodeId{fiNode.Proto()}}},
			Services:   []*registryv1.CatalogEntry{{Service: fiSvc.Proto(), Enabled: true}},
		}},
	}
	top, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !top.Serves(fiNode, fiSub) || top.Service(fiSvc) == nil {
		t.Fatal("federated entries missing")
	}
	if top.Serves(fiNode, lvSub) || len(top.Hosts(lvSub)) != 0 {
		t.Fatal("a federated peer spoke for a third ecosystem")
	}
	if inst, ok := top.InstanceOf(spiffeidTD("fi.sild.test")); !ok || inst != "FI" {
		t.Fatalf("InstanceOf: %q %v", inst, ok)
	}
	if _, ok := top.InstanceOf(spiffeidTD("lv.sild.test")); ok {
		t.Fatal("unknown trust domain mapped")
	}
	if len(top.Bundles()) != 2 {
		t.Fatalf("bundles %d", len(top.Bundles()))
	}
	cfg.Federated[0].Active = false
	top, _ = New(cfg)
	if top.Serves(fiNode, fiSub) {
		t.Fatal("inactive federation still served")
	}
}

func spiffeidTD(s string) spiffeid.TrustDomain { return spiffeid.RequireTrustDomainFromString(s) }

func TestSingleResponse(t *testing.T) {
	sub := must(ident.ParseSubsystem("EE/GOV/70000310/test"))
	described := ident.Service{Subsystem: sub, Name: "grpc.testing.TestService"}
	bare := ident.Service{Subsystem: sub, Name: "grpc.testing.UnimplementedService"}
	cfg := &registryv1.GlobalConfig{
		Instance: "EE", TrustDomain: "ee.sild.test", ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)),
		Services: []*registryv1.CatalogEntry{
			{Service: described.Proto(), Enabled: true, FileDescriptorSet: descset.Of(testpb.File_grpc_testing_test_proto)},
			{Service: bare.Proto(), Enabled: true},
		},
	}
	top, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		svc    ident.Service
		method string
		want   bool
	}{
		{described, "UnaryCall", true},
		{described, "StreamingInputCall", true}, // client streaming: one answer
		{described, "StreamingOutputCall", false},
		{described, "FullDuplexCall", false},
		{described, "NoSuchMethod", false},
		{bare, "UnimplementedCall", false}, // no descriptors: treated as a stream
		{ident.Service{Subsystem: sub, Name: "not.Published"}, "Call", false},
	} {
		for range 2 { // computed, then cached
			if got := top.SingleResponse(tc.svc, tc.method); got != tc.want {
				t.Errorf("%s/%s: %v, want %v", tc.svc.Name, tc.method, got, tc.want)
			}
		}
	}
}
