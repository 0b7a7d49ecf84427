package node_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	v1reflection "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	metav1 "github.com/sildmesh/sild/gen/sild/meta/v1"
	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
)

// reflectedMethod asks the node's server reflection, as grpcurl does, for
// the descriptor of method (a full name) published by target.
func reflectedMethod(t *testing.T, ctx context.Context, conn *grpc.ClientConn, target ident.Subsystem, method protoreflect.FullName) protoreflect.MethodDescriptor {
	t.Helper()
	stream, err := v1reflection.NewServerReflectionClient(conn).ServerReflectionInfo(metadata.AppendToOutgoingContext(ctx, "sild-target", target.String()))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.CloseSend()
	err = stream.Send(&v1reflection.ServerReflectionRequest{MessageRequest: &v1reflection.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: string(method)}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	set := &descriptorpb.FileDescriptorSet{}
	for _, b := range resp.GetFileDescriptorResponse().GetFileDescriptorProto() {
		fd := &descriptorpb.FileDescriptorProto{}
		if err := proto.Unmarshal(b, fd); err != nil {
			t.Fatal(err)
		}
		set.File = append(set.File, fd)
	}
	files, err := protodesc.NewFiles(set)
	if err != nil {
		t.Fatalf("reflected files for %s: %v (%v)", method, err, resp)
	}
	d, err := files.FindDescriptorByName(method)
	if err != nil {
		t.Fatalf("%s not reflected: %v", method, err)
	}
	return d.(protoreflect.MethodDescriptor)
}

func TestMetaServicesAndReflectionThroughTwoNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	m := startTwoNodes(t, ctx, nil)
	conn := dial(t, m.a.n.ConsumerAddr())
	meta := metav1.NewMetaServiceClient(conn)
	allowed := func() []string {
		t.Helper()
		resp, err := meta.AllowedMethods(ctx, &metav1.AllowedMethodsRequest{Client: m.licensing.Proto(), Target: m.bizreg.Proto()})
		if err != nil {
			t.Fatalf("allowed methods: %v", err)
		}
		var out []string
		for _, mid := range resp.GetMethods() {
			if svc, _ := ident.ServiceFromProto(mid.GetService()); svc.Subsystem != m.bizreg {
				t.Fatalf("method of another subsystem: %v", mid)
			}
			out = append(out, mid.GetService().GetServiceName()+"/"+mid.GetMethodName())
		}
		return out
	}
	if got := allowed(); len(got) != 0 {
		t.Fatalf("allowed without any right: %v", got)
	}
	// B's operator grants licensing one method of the service.
	admCtx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+m.adminKey)
	_, err := nodev1.NewAdminServiceClient(dial(t, m.b.n.AdminAddr())).GrantAccess(admCtx, &nodev1.GrantAccessRequest{Right: &nodev1.AccessRight{
		Client:     &nodev1.AccessClient{Kind: &nodev1.AccessClient_Subsystem{Subsystem: m.licensing.Proto()}},
		Service:    ident.Service{Subsystem: m.bizreg, Name: "grpc.testing.TestService"}.Proto(),
		MethodName: "UnaryCall",
	}})
	if err != nil {
		t.Fatal(err)
	}
	if got := allowed(); strings.Join(got, " ") != "grpc.testing.TestService/UnaryCall" {
		t.Fatalf("allowed with a right to UnaryCall only: %v", got)
	}

	// A member system that knows nothing but the service's name encodes
	// a call from the descriptors the node reflects, and the call goes
	// through both nodes to the backend.
	md := reflectedMethod(t, ctx, conn, m.bizreg, "grpc.testing.TestService.UnaryCall")
	req := dynamicpb.NewMessage(md.Input())
	payload := dynamicpb.NewMessage(md.Input().Fields().ByName("payload").Message())
	payload.Set(payload.Descriptor().Fields().ByName("body"), protoreflect.ValueOfBytes([]byte("70000310")))
	req.Set(md.Input().Fields().ByName("payload"), protoreflect.ValueOfMessage(payload))
	resp := dynamicpb.NewMessage(md.Output())
	callCtx := metadata.AppendToOutgoingContext(ctx, "sild-client", m.licensing.String(), "sild-target", m.bizreg.String())
	if err := conn.Invoke(callCtx, "/grpc.testing.TestService/UnaryCall", req, resp); err != nil {
		t.Fatalf("dynamic call: %v", err)
	}
	out := md.Output().Fields()
	body := resp.Get(out.ByName("payload")).Message().Get(md.Input().Fields().ByName("payload").Message().Fields().ByName("body")).Bytes()
	if string(body) != "70000310" || resp.Get(out.ByName("username")).String() != "business-registry" {
		t.Fatalf("dynamic call answered %v", resp)
	}
	// A method without a right is refused, dynamic or not.
	empty := reflectedMethod(t, ctx, conn, m.bizreg, "grpc.testing.TestService.EmptyCall")
	err = conn.Invoke(callCtx, "/grpc.testing.TestService/EmptyCall", dynamicpb.NewMessage(empty.Input()), dynamicpb.NewMessage(empty.Output()))
	if status.Code(err) != codes.PermissionDenied || rpcerr.Reason(err) != rpcerr.ReasonAccessDenied {
		t.Fatalf("call without a right: %v", err)
	}

	// With B gone, AllowedMethods says so without B's address or why the
	// connection failed.
	m.b.stop(t)
	_, err = meta.AllowedMethods(ctx, &metav1.AllowedMethodsRequest{Client: m.licensing.Proto(), Target: m.bizreg.Proto()})
	st := status.Convert(err)
	if st.Code() != codes.Unavailable || rpcerr.Reason(err) != rpcerr.ReasonTargetUnavailable {
		t.Fatalf("allowed methods with the provider's node down: %v", err)
	}
	for _, internal := range []string{"127.0.0.1", "dial", "rpc error", "connection", "desc ="} {
		if strings.Contains(st.Message(), internal) {
			t.Fatalf("message %q leaks %q", st.Message(), internal)
		}
	}
}
