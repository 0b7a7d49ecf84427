package meta

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
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
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	metav1 "github.com/sildmesh/sild/gen/sild/meta/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/descset"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/topology"
)

var (
	selfNode, _   = ident.ParseNode("EE/GOV/1/ss1")
	bizregNode, _ = ident.ParseNode("EE/GOV/2/ss1")
	licensing, _  = ident.ParseSubsystem("EE/GOV/1/licensing")
	bizreg, _     = ident.ParseSubsystem("EE/GOV/2/bizreg")
)

// catalogTopology is a configuration in which licensing (client, on this
// node) and bizreg (hosted by bizregNode at bizregAddr) exist and bizreg
// publishes entries.
func catalogTopology(t *testing.T, bizregAddr string, entries ...*registryv1.CatalogEntry) *topology.Topology {
	t.Helper()
	top, err := topology.New(&registryv1.GlobalConfig{
		Instance: "EE", TrustDomain: "ee.sild.test", Version: 1, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)),
		Nodes: []*registryv1.Node{
			{Id: selfNode.Proto(), State: registryv1.NodeState_NODE_STATE_ACTIVE},
			{Id: bizregNode.Proto(), State: registryv1.NodeState_NODE_STATE_ACTIVE, Address: bizregAddr},
		},
		Subsystems: []*registryv1.Subsystem{
			{Id: licensing.Proto(), Nodes: []*identv1.NodeId{selfNode.Proto()}},
			{Id: bizreg.Proto(), Nodes: []*identv1.NodeId{bizregNode.Proto()}},
		},
		Services: entries,
	})
	if err != nil {
		t.Fatal(err)
	}
	return top
}

func entry(sub ident.Subsystem, service string, enabled bool, set []byte) *registryv1.CatalogEntry {
	return &registryv1.CatalogEntry{Service: ident.Service{Subsystem: sub, Name: service}.Proto(), Enabled: enabled, FileDescriptorSet: set}
}

// impostorSet is a FileDescriptorSet whose files have the paths of
// grpc.testing's test.proto and messages.proto but define
// other.v1.OtherService and the message it takes, the one importing the
// other as in grpc.testing.
func impostorSet(t *testing.T) []byte {
	t.Helper()
	messages := testpb.File_grpc_testing_messages_proto
	set := &descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{{
		Name:    proto.String(messages.Path()),
		Package: proto.String("other.v1"),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{
			Name:  proto.String("Ping"),
			Field: []*descriptorpb.FieldDescriptorProto{{Name: proto.String("text"), JsonName: proto.String("text"), Number: proto.Int32(1), Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()}},
		}},
	}, {
		Name:       proto.String(testpb.File_grpc_testing_test_proto.Path()),
		Package:    proto.String("other.v1"),
		Syntax:     proto.String("proto3"),
		Dependency: []string{messages.Path()},
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name:   proto.String("OtherService"),
			Method: []*descriptorpb.MethodDescriptorProto{{Name: proto.String("Echo"), InputType: proto.String(".other.v1.Ping"), OutputType: proto.String(".other.v1.Ping")}},
		}},
	}}}
	raw, err := proto.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := descset.Service(raw, "other.v1.OtherService"); err != nil {
		t.Fatal(err)
	}
	return raw
}

// serve serves the consumer side for cfg on loopback and returns a
// connection to it.
func serve(t *testing.T, cfg Config) *grpc.ClientConn {
	t.Helper()
	s := grpc.NewServer()
	NewConsumer(cfg).Register(s)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Server reflection's methods: v1, and v1alpha, which some clients still
// speak; its messages are v1's on the wire.
const (
	reflectionV1      = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
	reflectionV1Alpha = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
)

// reflectOn opens a reflection stream on method with sild-target target
// ("" for none) and returns a func that asks one question on it.
func reflectOn(t *testing.T, conn *grpc.ClientConn, method, target string) func(*v1reflection.ServerReflectionRequest) *v1reflection.ServerReflectionResponse {
	t.Helper()
	ctx := testCtx(t)
	if target != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "sild-target", target)
	}
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, method)
	if err != nil {
		t.Fatal(err)
	}
	return func(req *v1reflection.ServerReflectionRequest) *v1reflection.ServerReflectionResponse {
		t.Helper()
		if err := stream.SendMsg(req); err != nil {
			t.Fatal(err)
		}
		resp := &v1reflection.ServerReflectionResponse{}
		if err := stream.RecvMsg(resp); err != nil {
			t.Fatal(err)
		}
		return resp
	}
}

func reflectV1(t *testing.T, conn *grpc.ClientConn, target string) func(*v1reflection.ServerReflectionRequest) *v1reflection.ServerReflectionResponse {
	t.Helper()
	return reflectOn(t, conn, reflectionV1, target)
}

func symbolRequest(symbol string) *v1reflection.ServerReflectionRequest {
	return &v1reflection.ServerReflectionRequest{MessageRequest: &v1reflection.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: symbol}}
}

// filesOf links the files of a reflection answer, as a reflection client
// such as grpcurl does; the answer must hold every file needed.
func filesOf(t *testing.T, resp *v1reflection.ServerReflectionResponse) *descriptorpb.FileDescriptorSet {
	t.Helper()
	if e := resp.GetErrorResponse(); e != nil {
		t.Fatalf("reflection error: %s (%s)", e.GetErrorMessage(), codes.Code(e.GetErrorCode()))
	}
	set := &descriptorpb.FileDescriptorSet{}
	for _, b := range resp.GetFileDescriptorResponse().GetFileDescriptorProto() {
		fd := &descriptorpb.FileDescriptorProto{}
		if err := proto.Unmarshal(b, fd); err != nil {
			t.Fatal(err)
		}
		set.File = append(set.File, fd)
	}
	return set
}

// describe resolves symbol on a fresh stream, as `grpcurl describe` does,
// and returns its descriptor.
func describe(t *testing.T, conn *grpc.ClientConn, target, symbol string) protoreflect.Descriptor {
	t.Helper()
	set := filesOf(t, reflectV1(t, conn, target)(symbolRequest(symbol)))
	files, err := protodesc.NewFiles(set)
	if err != nil {
		t.Fatalf("files reflected for %s do not link: %v", symbol, err)
	}
	d, err := files.FindDescriptorByName(protoreflect.FullName(symbol))
	if err != nil {
		t.Fatalf("%s not in the files reflected for it: %v", symbol, err)
	}
	return d
}

func TestReflectionDescribesServicesWhoseFilesSharePaths(t *testing.T) {
	real := descset.Of(testpb.File_grpc_testing_test_proto)
	for name, entries := range map[string][]*registryv1.CatalogEntry{
		"impostor published first": {entry(bizreg, "other.v1.OtherService", true, impostorSet(t)), entry(bizreg, "grpc.testing.TestService", true, real)},
		"impostor published last":  {entry(bizreg, "grpc.testing.TestService", true, real), entry(bizreg, "other.v1.OtherService", true, impostorSet(t))},
	} {
		t.Run(name, func(t *testing.T) {
			var logs bytes.Buffer
			top := catalogTopology(t, "", entries...)
			conn := serve(t, Config{Self: selfNode, Topology: func() *topology.Topology { return top }, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			for _, target := range []string{bizreg.String(), ""} {
				names := map[string]bool{}
				for _, s := range reflectV1(t, conn, target)(&v1reflection.ServerReflectionRequest{MessageRequest: &v1reflection.ServerReflectionRequest_ListServices{}}).GetListServicesResponse().GetService() {
					names[s.GetName()] = true
				}
				if !names["grpc.testing.TestService"] || !names["other.v1.OtherService"] {
					t.Fatalf("target %q: listed %v", target, names)
				}
				sd, ok := describe(t, conn, target, "grpc.testing.TestService").(protoreflect.ServiceDescriptor)
				if !ok || sd.Methods().ByName("UnaryCall") == nil || sd.Methods().ByName("FullDuplexCall") == nil {
					t.Fatalf("target %q: TestService described as %v", target, sd)
				}
				od, ok := describe(t, conn, target, "other.v1.OtherService").(protoreflect.ServiceDescriptor)
				if !ok || od.Methods().ByName("Echo") == nil {
					t.Fatalf("target %q: OtherService described as %v", target, od)
				}
				// A method, as grpcurl asks for it before a call.
				if md, ok := describe(t, conn, target, "other.v1.OtherService.Echo").(protoreflect.MethodDescriptor); !ok || md.Input().FullName() != "other.v1.Ping" {
					t.Fatalf("target %q: Echo described as %v", target, md)
				}
				describeOnOneStream(t, conn, target, "grpc.testing.TestService", "other.v1.OtherService")
			}
			// The operator learns of the clashes, with both services named.
			l := logs.String()
			for _, want := range []string{"path=grpc/testing/test.proto", "path=grpc/testing/messages.proto", "other.v1.OtherService", "grpc.testing.TestService"} {
				if !strings.Contains(l, want) {
					t.Fatalf("clash not logged (%s): %s", want, l)
				}
			}
		})
	}
}

// describeOnOneStream asks for services on one stream, as a client that
// keeps the first file it gets under each path (grpcurl's does), and
// checks that the files it then has link and define them all.
func describeOnOneStream(t *testing.T, conn *grpc.ClientConn, target string, services ...protoreflect.FullName) {
	t.Helper()
	ask, cache := reflectV1(t, conn, target), map[string]*descriptorpb.FileDescriptorProto{}
	for _, service := range services {
		for _, fd := range filesOf(t, ask(symbolRequest(string(service)))).GetFile() {
			if cache[fd.GetName()] == nil {
				cache[fd.GetName()] = fd
			}
		}
	}
	set := &descriptorpb.FileDescriptorSet{}
	for _, fd := range cache {
		set.File = append(set.File, fd)
	}
	files, err := protodesc.NewFiles(set)
	if err != nil {
		t.Fatalf("target %q: the files reflected on one stream do not link: %v", target, err)
	}
	for _, service := range services {
		if _, err := files.FindDescriptorByName(service); err != nil {
			t.Fatalf("target %q: %s not among the files reflected on one stream: %v", target, service, err)
		}
	}
}

func TestReflectionSharesFilesThatDifferOnlyInOptions(t *testing.T) {
	// Another service imports grpc.testing's messages.proto compiled with
	// other file options, as the well-known types compiled by different
	// protoc versions are.
	messages := protodesc.ToFileDescriptorProto(testpb.File_grpc_testing_messages_proto)
	messages.Options = &descriptorpb.FileOptions{GoPackage: proto.String("example.com/elsewhere/testing"), JavaPackage: proto.String("com.example")}
	reader := &descriptorpb.FileDescriptorProto{
		Name: proto.String("other/v1/reader.proto"), Package: proto.String("other.v1"), Syntax: proto.String("proto3"),
		Dependency: []string{messages.GetName()},
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name:   proto.String("Reader"),
			Method: []*descriptorpb.MethodDescriptorProto{{Name: proto.String("Read"), InputType: proto.String(".grpc.testing.SimpleRequest"), OutputType: proto.String(".grpc.testing.SimpleResponse")}},
		}},
	}
	raw, err := proto.Marshal(&descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{messages, reader}})
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	top := catalogTopology(t, "", entry(bizreg, "grpc.testing.TestService", true, descset.Of(testpb.File_grpc_testing_test_proto)), entry(bizreg, "other.v1.Reader", true, raw))
	conn := serve(t, Config{Self: selfNode, Topology: func() *topology.Topology { return top }, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	describeOnOneStream(t, conn, bizreg.String(), "grpc.testing.TestService", "other.v1.Reader")
	if logs.Len() != 0 {
		t.Fatalf("logged: %s", logs.String())
	}
}

func TestReflectionResolvesErrorInfo(t *testing.T) {
	top := catalogTopology(t, "", entry(bizreg, "grpc.testing.TestService", true, descset.Of(testpb.File_grpc_testing_test_proto)))
	conn := serve(t, Config{Self: selfNode, Topology: func() *topology.Topology { return top }})
	// A refusal from the node, with its ErrorInfo detail...
	_, err := metav1.NewMetaServiceClient(conn).ListMethods(testCtx(t), &metav1.ListMethodsRequest{Target: &identv1.SubsystemId{}})
	st := status.Convert(err)
	if len(st.Proto().GetDetails()) != 1 {
		t.Fatalf("refusal %v has no detail", err)
	}
	detail := st.Proto().GetDetails()[0]
	// ...which a client that knows only what reflection tells it can read,
	// as grpcurl does when it prints an error.
	name := protoreflect.FullName(strings.TrimPrefix(detail.GetTypeUrl(), "type.googleapis.com/"))
	if name != "google.rpc.ErrorInfo" {
		t.Fatalf("detail type %q", detail.GetTypeUrl())
	}
	md, ok := describe(t, conn, bizreg.String(), string(name)).(protoreflect.MessageDescriptor)
	if !ok {
		t.Fatalf("%s is not a message", name)
	}
	msg := dynamicpb.NewMessage(md)
	if err := proto.Unmarshal(detail.GetValue(), msg); err != nil {
		t.Fatal(err)
	}
	if got := msg.Get(md.Fields().ByName("reason")).String(); got != rpcerr.ReasonInvalidIdentifier {
		t.Fatalf("reason read through reflection: %q", got)
	}
	// Without a target too.
	describe(t, conn, "", string(name))
}

func TestReflectionV1Alpha(t *testing.T) {
	top := catalogTopology(t, "", entry(bizreg, "grpc.testing.TestService", true, descset.Of(testpb.File_grpc_testing_test_proto)))
	conn := serve(t, Config{Self: selfNode, Topology: func() *topology.Topology { return top }})
	ask := reflectOn(t, conn, reflectionV1Alpha, bizreg.String())
	var names []string
	for _, s := range ask(&v1reflection.ServerReflectionRequest{MessageRequest: &v1reflection.ServerReflectionRequest_ListServices{}}).GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	if strings.Join(names, " ") != "grpc.testing.TestService sild.meta.v1.MetaService" {
		t.Fatalf("v1alpha lists %v", names)
	}
	files, err := protodesc.NewFiles(filesOf(t, ask(symbolRequest("grpc.testing.TestService"))))
	if err != nil {
		t.Fatalf("v1alpha files: %v", err)
	}
	d, err := files.FindDescriptorByName("grpc.testing.TestService.UnaryCall")
	if err != nil || d.(protoreflect.MethodDescriptor).Input().FullName() != "grpc.testing.SimpleRequest" {
		t.Fatalf("UnaryCall over v1alpha: %v %v", d, err)
	}
}
