package meta

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"

	metav1 "github.com/sildmesh/sild/gen/sild/meta/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/descset"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/topology"
)

func TestGetServiceDescriptor(t *testing.T) {
	published := descset.Of(testpb.File_grpc_testing_test_proto)
	top := catalogTopology(t, "",
		entry(bizreg, "grpc.testing.TestService", true, published),
		entry(bizreg, "other.v1.OtherService", false, impostorSet(t)))
	meta := metav1.NewMetaServiceClient(serve(t, Config{Self: selfNode, Topology: func() *topology.Topology { return top }}))
	ctx := testCtx(t)
	resp, err := meta.GetServiceDescriptor(ctx, &metav1.GetServiceDescriptorRequest{Service: ident.Service{Subsystem: bizreg, Name: "grpc.testing.TestService"}.Proto()})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(resp.GetFileDescriptorSet(), published) {
		t.Fatal("the descriptors returned are not the ones published")
	}
	sd, err := descset.Service(resp.GetFileDescriptorSet(), "grpc.testing.TestService")
	if err != nil {
		t.Fatal(err)
	}
	want := testpb.File_grpc_testing_test_proto.Services().ByName("TestService")
	if !proto.Equal(protodesc.ToServiceDescriptorProto(sd), protodesc.ToServiceDescriptorProto(want)) {
		t.Fatalf("service descriptor %v, want %v", protodesc.ToServiceDescriptorProto(sd), protodesc.ToServiceDescriptorProto(want))
	}
	// A disabled service is hidden here as from ListMethods and reflection.
	_, err = meta.GetServiceDescriptor(ctx, &metav1.GetServiceDescriptorRequest{Service: ident.Service{Subsystem: bizreg, Name: "other.v1.OtherService"}.Proto()})
	if status.Code(err) != codes.NotFound || rpcerr.Reason(err) != rpcerr.ReasonUnknownTarget {
		t.Fatalf("disabled service: %v", err)
	}
	methods, err := meta.ListMethods(ctx, &metav1.ListMethodsRequest{Target: bizreg.Proto()})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range methods.GetMethods() {
		if m.GetService().GetServiceName() != "grpc.testing.TestService" {
			t.Fatalf("ListMethods shows %v", m)
		}
	}
}

func TestListMethodsUnknownTarget(t *testing.T) {
	top := catalogTopology(t, "", entry(bizreg, "grpc.testing.TestService", true, descset.Of(testpb.File_grpc_testing_test_proto)))
	meta := metav1.NewMetaServiceClient(serve(t, Config{Self: selfNode, Topology: func() *topology.Topology { return top }}))
	ctx := testCtx(t)
	unknown, _ := ident.ParseSubsystem("EE/GOV/3/nobody")
	_, err := meta.ListMethods(ctx, &metav1.ListMethodsRequest{Target: unknown.Proto()})
	if status.Code(err) != codes.NotFound || rpcerr.Reason(err) != rpcerr.ReasonUnknownTarget {
		t.Fatalf("unknown target: %v", err)
	}
	// A known subsystem that publishes nothing has no methods.
	resp, err := meta.ListMethods(ctx, &metav1.ListMethodsRequest{Target: licensing.Proto()})
	if err != nil || len(resp.GetMethods()) != 0 {
		t.Fatalf("subsystem without services: %v %v", resp, err)
	}
}

func TestAllowedMethodsHidesWhyTheTargetIsUnreachable(t *testing.T) {
	// The provider's node is registered at an address nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	top := catalogTopology(t, addr, entry(bizreg, "grpc.testing.TestService", true, descset.Of(testpb.File_grpc_testing_test_proto)))
	var logs bytes.Buffer
	cfg := Config{
		Self: selfNode, Topology: func() *topology.Topology { return top }, Clients: []ident.Subsystem{licensing},
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Dial: func(_ context.Context, n ident.Node) (*grpc.ClientConn, func(), error) {
			cc, err := grpc.NewClient(top.Node(n).GetAddress(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return nil, nil, err
			}
			return cc, func() { cc.Close() }, nil
		},
	}
	meta := metav1.NewMetaServiceClient(serve(t, cfg))
	_, err = meta.AllowedMethods(testCtx(t), &metav1.AllowedMethodsRequest{Client: licensing.Proto(), Target: bizreg.Proto()})
	st := status.Convert(err)
	if st.Code() != codes.Unavailable || rpcerr.Reason(err) != rpcerr.ReasonTargetUnavailable || rpcerr.Component(err) != component {
		t.Fatalf("unreachable target: %v (reason %q)", err, rpcerr.Reason(err))
	}
	for _, internal := range []string{addr, "127.0.0.1", "dial", "rpc error", "connection", "refused", "desc ="} {
		if strings.Contains(st.Message(), internal) {
			t.Fatalf("message %q leaks %q", st.Message(), internal)
		}
	}
	if !strings.Contains(st.Message(), bizreg.String()) {
		t.Fatalf("message %q does not name the target", st.Message())
	}
	// The operator's log has the detail.
	if l := logs.String(); !strings.Contains(l, addr) || !strings.Contains(l, bizregNode.String()) {
		t.Fatalf("detail not logged: %s", l)
	}
}
