package meta

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	v1reflection "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	metav1 "github.com/sildmesh/sild/gen/sild/meta/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/descset"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/topology"
)

func testTopology(t *testing.T) *topology.Topology {
	self, _ := ident.ParseNode("EE/GOV/1/ss1")
	sub, _ := ident.ParseSubsystem("EE/GOV/2/bizreg")
	client, _ := ident.ParseSubsystem("EE/GOV/1/licensing")
	top, err := topology.New(&registryv1.GlobalConfig{
		Instance: "EE", TrustDomain: "ee.sild.test", Version: 1, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)),
		Nodes:      []*registryv1.Node{{Id: self.Proto(), State: registryv1.NodeState_NODE_STATE_ACTIVE}},
		Subsystems: []*registryv1.Subsystem{{Id: sub.Proto()}, {Id: client.Proto(), Nodes: []*identv1.NodeId{self.Proto()}}},
		Services: []*registryv1.CatalogEntry{{
			Service: ident.Service{Subsystem: sub, Name: "grpc.testing.TestService"}.Proto(), Enabled: true,
			FileDescriptorSet: descset.Of(testpb.File_grpc_testing_test_proto),
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return top
}

func TestMetaServiceAndReflection(t *testing.T) {
	top := testTopology(t)
	self, _ := ident.ParseNode("EE/GOV/1/ss1")
	s := grpc.NewServer()
	NewConsumer(Config{Self: self, Topology: func() *topology.Topology { return top }}).Register(s)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go s.Serve(ln)
	defer s.Stop()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	meta := metav1.NewMetaServiceClient(conn)
	bizreg := &identv1.SubsystemId{Member: &identv1.MemberId{Instance: "EE", MemberClass: "GOV", MemberCode: "2"}, SubsystemCode: "bizreg"}
	methods, err := meta.ListMethods(ctx, &metav1.ListMethodsRequest{Target: bizreg})
	if err != nil || len(methods.GetMethods()) != testpb.File_grpc_testing_test_proto.Services().ByName("TestService").Methods().Len() {
		t.Fatalf("list methods: %v %v", methods, err)
	}
	clients, err := meta.ListClients(ctx, &metav1.ListClientsRequest{})
	if err != nil || len(clients.GetSubsystems()) != 2 {
		t.Fatalf("list clients: %v %v", clients, err)
	}
	_, err = meta.GetServiceDescriptor(ctx, &metav1.GetServiceDescriptorRequest{Service: &identv1.ServiceId{Subsystem: bizreg, ServiceName: "no.Such"}})
	if status.Code(err) != codes.NotFound || rpcerr.Reason(err) != rpcerr.ReasonUnknownTarget {
		t.Fatalf("unknown service: %v", err)
	}
	_, err = meta.AllowedMethods(ctx, &metav1.AllowedMethodsRequest{Client: bizreg, Target: bizreg})
	if rpcerr.Reason(err) != rpcerr.ReasonUnknownClient {
		t.Fatalf("allowed methods for a client not served here: %v", err)
	}

	// Reflection, as grpcurl uses it, with a sild-target header.
	rctx := metadata.AppendToOutgoingContext(ctx, "sild-target", "EE/GOV/2/bizreg")
	stream, err := v1reflection.NewServerReflectionClient(conn).ServerReflectionInfo(rctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&v1reflection.ServerReflectionRequest{MessageRequest: &v1reflection.ServerReflectionRequest_ListServices{}})
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, s := range resp.GetListServicesResponse().GetService() {
		names[s.GetName()] = true
	}
	if !names["grpc.testing.TestService"] || !names["sild.meta.v1.MetaService"] {
		t.Fatalf("reflected services %v", names)
	}
	stream.Send(&v1reflection.ServerReflectionRequest{MessageRequest: &v1reflection.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "grpc.testing.TestService.UnaryCall"}})
	resp, err = stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Fatalf("no descriptor for the symbol: %v", resp)
	}
	// Another target shows no foreign services.
	rctx = metadata.AppendToOutgoingContext(ctx, "sild-target", "EE/GOV/1/licensing")
	stream, _ = v1reflection.NewServerReflectionClient(conn).ServerReflectionInfo(rctx)
	stream.Send(&v1reflection.ServerReflectionRequest{MessageRequest: &v1reflection.ServerReflectionRequest_ListServices{}})
	resp, err = stream.Recv()
	if err != nil || len(resp.GetListServicesResponse().GetService()) != 1 {
		t.Fatalf("services of a target that publishes none: %v %v", resp, err)
	}
}

func TestExpiredConfigurationIsNotDescribed(t *testing.T) {
	gc := proto.Clone(testTopology(t).Config).(*registryv1.GlobalConfig)
	gc.ExpiresAt = timestamppb.New(time.Now().Add(-time.Minute))
	expired, err := topology.New(gc)
	if err != nil {
		t.Fatal(err)
	}
	c := NewConsumer(Config{Topology: func() *topology.Topology { return expired }})
	_, err = c.ListClients(context.Background(), &metav1.ListClientsRequest{})
	if rpcerr.Reason(err) != rpcerr.ReasonConfigExpired {
		t.Fatalf("expired configuration: %v", err)
	}
	c = NewConsumer(Config{Topology: func() *topology.Topology { return nil }})
	if _, err := c.ListClients(context.Background(), &metav1.ListClientsRequest{}); rpcerr.Reason(err) != rpcerr.ReasonUnavailable {
		t.Fatalf("no configuration: %v", err)
	}
}
