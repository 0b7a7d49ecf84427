package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/sildmesh/sild/gateway"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/topology"
)

// echoFile is the test service test.v1.Echo: Echo (unary), Repeat (server
// streaming), Upload (client streaming). It imports a well-known type that
// the published set does not carry.
func echoFile() *descriptorpb.FileDescriptorProto {
	str := descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()
	i32 := descriptorpb.FieldDescriptorProto_TYPE_INT32.Enum()
	msg := descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum()
	opt := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
	rep := descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum()
	field := func(name string, n int32, t *descriptorpb.FieldDescriptorProto_Type, l *descriptorpb.FieldDescriptorProto_Label, typeName string) *descriptorpb.FieldDescriptorProto {
		f := &descriptorpb.FieldDescriptorProto{Name: proto.String(name), Number: proto.Int32(n), Type: t, Label: l, JsonName: proto.String(jsonName(name))}
		if typeName != "" {
			f.TypeName = proto.String(typeName)
		}
		return f
	}
	return &descriptorpb.FileDescriptorProto{
		Name: proto.String("test/v1/echo.proto"), Package: proto.String("test.v1"), Syntax: proto.String("proto3"),
		Dependency: []string{"google/protobuf/timestamp.proto"},
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: proto.String("EchoRequest"), Field: []*descriptorpb.FieldDescriptorProto{
				field("text", 1, str, opt, ""), field("times", 2, i32, opt, ""),
				field("at", 3, msg, opt, ".google.protobuf.Timestamp"), field("tags", 4, str, rep, ""),
			}},
			{Name: proto.String("EchoResponse"), Field: []*descriptorpb.FieldDescriptorProto{
				field("text", 1, str, opt, ""), field("client", 2, str, opt, ""), field("target", 3, str, opt, ""),
				field("message_id", 4, str, opt, ""), field("at", 5, msg, opt, ".google.protobuf.Timestamp"),
				field("index", 6, i32, opt, ""), field("user_id", 7, str, opt, ""), field("purpose", 8, str, opt, ""),
			}},
		},
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name: proto.String("Echo"),
			Method: []*descriptorpb.MethodDescriptorProto{
				{Name: proto.String("Echo"), InputType: proto.String(".test.v1.EchoRequest"), OutputType: proto.String(".test.v1.EchoResponse")},
				{Name: proto.String("Repeat"), InputType: proto.String(".test.v1.EchoRequest"), OutputType: proto.String(".test.v1.EchoResponse"), ServerStreaming: proto.Bool(true)},
				{Name: proto.String("Upload"), InputType: proto.String(".test.v1.EchoRequest"), OutputType: proto.String(".test.v1.EchoResponse"), ClientStreaming: proto.Bool(true)},
				{Name: proto.String("Lookup"), InputType: proto.String(".test.v1.EchoRequest"), OutputType: proto.String(".test.v1.EchoResponse"),
					Options: httpOption(&annotations.HttpRule{Pattern: &annotations.HttpRule_Get{Get: "/things/{text}"}})},
				{Name: proto.String("Stamp"), InputType: proto.String(".test.v1.EchoRequest"), OutputType: proto.String(".test.v1.EchoResponse"),
					Options: httpOption(&annotations.HttpRule{Pattern: &annotations.HttpRule_Put{Put: "/stamps/{times}"}, Body: "at"})},
			},
		}},
	}
}

// httpOption gives a method a google.api.http rule (for the REST provider).
func httpOption(rule *annotations.HttpRule) *descriptorpb.MethodOptions {
	opts := &descriptorpb.MethodOptions{}
	proto.SetExtension(opts, annotations.E_Http, rule)
	return opts
}

func jsonName(s string) string {
	parts := strings.Split(s, "_")
	for i := 1; i < len(parts); i++ {
		parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
	}
	return strings.Join(parts, "")
}

// echoBackend is a plain gRPC server standing in for the node's consumer
// listener: it answers test.v1.Echo from the request and its metadata.
func echoBackend(t testing.TB) *grpc.ClientConn {
	t.Helper()
	if _, err := protodesc.NewFile(echoFile(), nil); err == nil {
		t.Fatal("echo file resolved without its import")
	}
	files, err := protodesc.NewFiles(&descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{
		protodesc.ToFileDescriptorProto(timestamppb.File_google_protobuf_timestamp_proto), echoFile()}})
	if err != nil {
		t.Fatal(err)
	}
	d, err := files.FindDescriptorByName("test.v1.Echo")
	if err != nil {
		t.Fatal(err)
	}
	svc := d.(protoreflect.ServiceDescriptor)
	handler := func(_ any, ss grpc.ServerStream) error {
		full, _ := grpc.MethodFromServerStream(ss)
		m := svc.Methods().ByName(protoreflect.Name(full[strings.LastIndexByte(full, '/')+1:]))
		if m == nil || !strings.HasPrefix(full, "/test.v1.Echo/") {
			return status.Error(codes.Unimplemented, "no such method")
		}
		md, _ := metadata.FromIncomingContext(ss.Context())
		get := func(k string) string {
			if v := md.Get(k); len(v) == 1 {
				return v[0]
			}
			return ""
		}
		in := dynamicpb.NewMessage(m.Input())
		if err := ss.RecvMsg(in); err != nil {
			return err
		}
		text := in.Get(m.Input().Fields().ByName("text")).String()
		if text == "refuse" {
			return rpcerr.New(codes.PermissionDenied, rpcerr.ReasonAccessDenied, "node.provider", "access denied")
		}
		answer := func(i int) *dynamicpb.Message {
			out := dynamicpb.NewMessage(m.Output())
			f := m.Output().Fields()
			out.Set(f.ByName("text"), protoreflect.ValueOfString(text))
			out.Set(f.ByName("client"), protoreflect.ValueOfString(get("sild-client")))
			out.Set(f.ByName("target"), protoreflect.ValueOfString(get("sild-target")))
			out.Set(f.ByName("message_id"), protoreflect.ValueOfString(get("sild-message-id")))
			out.Set(f.ByName("user_id"), protoreflect.ValueOfString(get("sild-user-id")))
			out.Set(f.ByName("purpose"), protoreflect.ValueOfString(get("sild-purpose")))
			out.Set(f.ByName("index"), protoreflect.ValueOfInt32(int32(i)))
			if at := m.Input().Fields().ByName("at"); in.Has(at) {
				out.Set(f.ByName("at"), in.Get(at))
			}
			return out
		}
		if !m.IsStreamingServer() {
			return ss.SendMsg(answer(0))
		}
		times := int(in.Get(m.Input().Fields().ByName("times")).Int())
		for i := range times {
			if err := ss.SendMsg(answer(i)); err != nil {
				return err
			}
			if text == "break" {
				return rpcerr.New(codes.Unavailable, rpcerr.ReasonTargetUnavailable, "node.provider", "provider went away")
			}
		}
		return nil
	}
	gs := grpc.NewServer(grpc.UnknownServiceHandler(handler))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

var provider = ident.Subsystem{Member: ident.Member{Instance: "EE", Class: "COM", Code: "11"}, Code: "echo"}

func echoTopology(t testing.TB, withEchoDescriptors bool) *topology.Topology {
	t.Helper()
	set := &descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{echoFile()}}
	if !withEchoDescriptors {
		set.File[0].Service[0].Name = proto.String("Other")
	}
	raw, err := proto.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	top, err := topology.New(&registryv1.GlobalConfig{
		Instance: "EE", TrustDomain: "ee.sild.test",
		Services: []*registryv1.CatalogEntry{
			{Service: ident.Service{Subsystem: provider, Name: "test.v1.Echo"}.Proto(), FileDescriptorSet: raw, Enabled: true},
			{Service: ident.Service{Subsystem: provider, Name: "test.v1.Off"}.Proto(), FileDescriptorSet: raw, Enabled: false},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return top
}

func restPost(t testing.TB, url string, header map[string]string, body string) answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := answer{code: resp.StatusCode, header: resp.Header, raw: raw}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &a.body); err != nil {
			t.Fatalf("answer is not JSON: %v: %s", err, raw)
		}
	}
	return a
}

func TestConsumerREST(t *testing.T) {
	conn := echoBackend(t)
	top := echoTopology(t, true)
	c, err := gateway.NewConsumer(gateway.ConsumerConfig{Conn: conn, Topology: func() *topology.Topology { return top }})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(c)
	t.Cleanup(hs.Close)
	base := hs.URL + "/r1/EE/COM/11/echo/test.v1.Echo/"
	client := map[string]string{"Sild-Client": "EE/GOV/70000310/licensing", "Content-Type": "application/json"}

	t.Run("unary", func(t *testing.T) {
		h := map[string]string{"Sild-Client": "EE/GOV/70000310/licensing", "Sild-User-Id": "EE12345", "Sild-Purpose": "audit", "Sild-Message-Id": "m-1"}
		a := restPost(t, base+"Echo", h, `{"text":"hello","at":"2026-11-23T10:00:00Z","tags":["a","b"]}`)
		want(t, "echo", a, 200, "", "")
		for k, v := range map[string]any{"text": "hello", "client": "EE/GOV/70000310/licensing", "target": "EE/COM/11/echo",
			"messageId": "m-1", "userId": "EE12345", "purpose": "audit", "at": "2026-11-23T10:00:00Z", "index": float64(0)} {
			if a.body[k] != v {
				t.Errorf("%s = %v, want %v (%s)", k, a.body[k], v, a.raw)
			}
		}
		if a.header.Get("Sild-Message-Id") != "m-1" {
			t.Errorf("Sild-Message-Id = %q", a.header.Get("Sild-Message-Id"))
		}
		// Without a message id the gateway makes one and tells it.
		a = restPost(t, base+"Echo", client, `{}`)
		want(t, "echo empty", a, 200, "", "")
		if id := a.header.Get("Sild-Message-Id"); id == "" || a.body["messageId"] != id {
			t.Errorf("generated message id %q, backend saw %v", id, a.body["messageId"])
		}
		// No body is the empty message.
		want(t, "no body", restPost(t, base+"Echo", map[string]string{"Sild-Client": client["Sild-Client"]}, ""), 200, "", "")
	})
	t.Run("server streaming", func(t *testing.T) {
		a := restPost(t, base+"Repeat", client, `{"text":"x","times":3}`)
		want(t, "repeat", a, 200, "", "")
		if ct := a.header.Get("Content-Type"); ct != "application/x-ndjson" {
			t.Fatalf("Content-Type %q", ct)
		}
		lines := ndjson(t, a.raw)
		if len(lines) != 3 {
			t.Fatalf("%d lines: %s", len(lines), a.raw)
		}
		for i, l := range lines {
			if r, _ := l["result"].(map[string]any); r["index"] != float64(i) || r["text"] != "x" {
				t.Fatalf("line %d = %v", i, l)
			}
		}
		// No answers: an empty stream.
		a = restPost(t, base+"Repeat", client, `{"times":0}`)
		if want(t, "repeat none", a, 200, "", ""); len(a.raw) != 0 {
			t.Fatalf("empty stream: %q", a.raw)
		}
		// An error after the first answer ends the stream with an error line.
		a = restPost(t, base+"Repeat", client, `{"text":"break","times":3}`)
		want(t, "repeat break", a, 200, "", "")
		lines = ndjson(t, a.raw)
		if len(lines) != 2 || lines[0]["result"] == nil {
			t.Fatalf("broken stream: %s", a.raw)
		}
		e, _ := lines[1]["error"].(map[string]any)
		if e["code"] != float64(codes.Unavailable) || !strings.Contains(string(a.raw), `"reason":"TARGET_UNAVAILABLE"`) {
			t.Fatalf("error line: %s", a.raw)
		}
	})
	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			name, path, body string
			header           map[string]string
			code             int
			reason           string
		}{
			{"mesh refusal keeps its reason", "Echo", `{"text":"refuse"}`, client, 403, "ACCESS_DENIED"},
			{"malformed JSON", "Echo", `{"text":`, client, 400, "INVALID_ARGUMENT"},
			{"wrong field type", "Echo", `{"times":"many"}`, client, 400, "INVALID_ARGUMENT"},
			{"unknown field", "Echo", `{"colour":"red"}`, client, 400, "INVALID_ARGUMENT"},
			{"bad timestamp", "Echo", `{"at":"yesterday"}`, client, 400, "INVALID_ARGUMENT"},
			{"missing Sild-Client", "Echo", `{}`, map[string]string{}, 400, "UNKNOWN_CLIENT"},
			{"invalid Sild-Client", "Echo", `{}`, map[string]string{"Sild-Client": "EE/GOV"}, 400, "INVALID_IDENTIFIER"},
			{"unknown method", "Nope", `{}`, client, 404, "UNKNOWN_METHOD"},
			{"client streaming", "Upload", `{}`, client, 501, "UNSUPPORTED_METHOD"},
			{"wrong media type", "Echo", `text=hi`, map[string]string{"Sild-Client": client["Sild-Client"], "Content-Type": "application/x-www-form-urlencoded"}, 415, "UNSUPPORTED_MEDIA_TYPE"},
			{"body over the limit", "Echo", `{"text":"` + strings.Repeat("x", gateway.DefaultMaxRequest) + `"}`, client, 413, "BODY_TOO_LARGE"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				a := restPost(t, base+tc.path, tc.header, tc.body)
				want(t, tc.name, a, tc.code, tc.reason, "")
			})
		}
		want(t, "unknown service", restPost(t, hs.URL+"/r1/EE/COM/11/echo/test.v1.Nope/Echo", client, `{}`), 404, "UNKNOWN_SERVICE", "gateway")
		want(t, "disabled service", restPost(t, hs.URL+"/r1/EE/COM/11/echo/test.v1.Off/Echo", client, `{}`), 404, "UNKNOWN_TARGET", "gateway")
		want(t, "unknown provider", restPost(t, hs.URL+"/r1/EE/COM/12/echo/test.v1.Echo/Echo", client, `{}`), 404, "UNKNOWN_SERVICE", "gateway")
		want(t, "bad provider", restPost(t, hs.URL+"/r1/EE/C%20M/11/echo/test.v1.Echo/Echo", client, `{}`), 400, "INVALID_IDENTIFIER", "gateway")
		want(t, "GET", call(t, "GET", base+"Echo", "", ""), 405, "METHOD_NOT_ALLOWED", "gateway")
		want(t, "short path", restPost(t, hs.URL+"/r1/EE/COM/11/echo/Echo", client, `{}`), 404, "NOT_FOUND", "gateway")
	})
}

func ndjson(t *testing.T, raw []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// TestConsumerCatalogueChange: descriptors follow the catalogue of the
// current topology; no configuration is a 503.
func TestConsumerCatalogueChange(t *testing.T) {
	conn := echoBackend(t)
	var top *topology.Topology
	c, err := gateway.NewConsumer(gateway.ConsumerConfig{Conn: conn, Topology: func() *topology.Topology { return top }})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(c)
	t.Cleanup(hs.Close)
	url := hs.URL + "/r1/EE/COM/11/echo/test.v1.Echo/Echo"
	client := map[string]string{"Sild-Client": "EE/GOV/70000310/licensing"}
	want(t, "no configuration", restPost(t, url, client, `{}`), 503, "UNAVAILABLE", "gateway")
	top = echoTopology(t, false)
	want(t, "descriptors without the service", restPost(t, url, client, `{}`), 502, "DESCRIPTORS_INVALID", "gateway")
	top = echoTopology(t, true)
	want(t, "fixed descriptors", restPost(t, url, client, `{"text":"hi"}`), 200, "", "")
}
