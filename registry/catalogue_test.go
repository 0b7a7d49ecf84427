package registry_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/registry/fsm"
	"github.com/sildmesh/sild/registry/gconf"
	"github.com/sildmesh/sild/registry/registrytest"
)

// bigDescriptorSet is a valid FileDescriptorSet defining service pkg.S,
// padded to about size bytes with a comment.
func bigDescriptorSet(t *testing.T, pkg string, size int) []byte {
	t.Helper()
	fd := &descriptorpb.FileDescriptorProto{
		Name: proto.String(pkg + ".proto"), Package: proto.String(pkg), Syntax: proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{Name: proto.String("Req")}},
		Service: []*descriptorpb.ServiceDescriptorProto{{Name: proto.String("S"), Method: []*descriptorpb.MethodDescriptorProto{{
			Name: proto.String("M"), InputType: proto.String("." + pkg + ".Req"), OutputType: proto.String("." + pkg + ".Req"),
		}}}},
		SourceCodeInfo: &descriptorpb.SourceCodeInfo{Location: []*descriptorpb.SourceCodeInfo_Location{{
			Path: []int32{6, 0}, Span: []int32{1, 0, 1}, LeadingComments: proto.String(strings.Repeat("x", size)),
		}}},
	}
	b, err := proto.Marshal(&descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{fd}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCatalogueStaysWithinWhatNodesReceive: every node receives the whole
// catalogue in each configuration, through a gRPC client with the default
// 4 MiB limit. A publication that would take the configuration past it is
// refused (the state unchanged), and nodes keep receiving the
// configuration.
func TestCatalogueStaysWithinWhatNodesReceive(t *testing.T) {
	c := registrytest.Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	tn := joinTestNode(t, c, ctx)
	admin := c.AdminClient(c.Followers()[0]) // the publications travel to the leader
	sub := &identv1.SubsystemId{Member: memberID("70000310"), SubsystemCode: "big"}
	if _, err := admin.AddSubsystem(c.Ctx(ctx), &registryv1.AddSubsystemRequest{Id: sub}); err != nil {
		t.Fatal(err)
	}
	publish := func(pkg string, size int) error {
		_, err := admin.PublishService(c.Ctx(ctx), &registryv1.PublishServiceRequest{
			Service: &identv1.ServiceId{Subsystem: sub, ServiceName: pkg + ".S"}, FileDescriptorSet: bigDescriptorSet(t, pkg, size), Enabled: true,
		})
		return err
	}
	// A smaller limit than the default, for speed, but a catalogue over
	// gRPC's default 4 MiB, which nodes receive (gconf.DialOption).
	defer func(v int) { fsm.MaxCatalogueBytes = v }(fsm.MaxCatalogueBytes)
	fsm.MaxCatalogueBytes = 7 << 20
	limit := fsm.MaxCatalogueBytes
	if err := publish("big.a", limit*2/3); err != nil {
		t.Fatal(err)
	}
	before := c.Leader().State()
	wantReason(t, "a second set past the limit", publish("big.b", limit/2), codes.ResourceExhausted, fsm.ReasonCatalogueFull)
	wantReason(t, "one set past the limit", publish("big.c", limit+1<<19), codes.ResourceExhausted, fsm.ReasonCatalogueFull)
	if !proto.Equal(before, c.Leader().State()) {
		t.Fatal("a refused publication changed the state")
	}
	// Replacing a service's descriptors counts its old ones out.
	if err := publish("big.a", limit*5/6); err != nil {
		t.Fatalf("republishing within the limit: %v", err)
	}
	// Every server's configuration reaches a node (nodes dial with
	// gconf.DialOption's limit).
	for _, m := range c.Servers {
		nodes := registryv1.NewNodeServiceClient(nodeConn(t, c, m, tn.key, tn.chain))
		registrytest.WaitFor(t, 30*time.Second, "the configuration with the catalogue at "+m.Srv.APIAddr(), func() bool {
			resp, err := nodes.GetConfig(ctx, &registryv1.GetConfigRequest{})
			if err != nil {
				t.Fatalf("node fetching the configuration from %s: %v", m.Srv.APIAddr(), err)
			}
			cfg, err := gconf.Verify(resp.GetConfig(), c.Roots, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range cfg.GetServices() {
				if s.GetService().GetServiceName() == "big.a.S" && len(s.GetFileDescriptorSet()) > limit*2/3 {
					return true
				}
			}
			return false
		})
	}
}
