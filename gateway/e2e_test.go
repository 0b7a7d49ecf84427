package gateway_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/sildmesh/sild/gateway"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/apikey"
	"github.com/sildmesh/sild/internal/descset"
	"github.com/sildmesh/sild/ledger"
	"github.com/sildmesh/sild/node"
	"github.com/sildmesh/sild/registry/registrytest"
)

// testService is a provider backend (grpc.testing.TestService).
type testService struct {
	testpb.UnimplementedTestServiceServer
}

func (testService) UnaryCall(_ context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if s := req.GetResponseStatus(); s != nil {
		return nil, status.Error(codes.Code(s.GetCode()), s.GetMessage())
	}
	return &testpb.SimpleResponse{Payload: req.GetPayload(), Username: "business-registry"}, nil
}

func (testService) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, s testpb.TestService_StreamingOutputCallServer) error {
	for range req.GetResponseParameters() {
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
	return nil
}

func dialInsecure(t testing.TB, addr string) *grpc.ClientConn {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// mesh is a registry, consumer node A serving licensing, provider node B
// serving the business registry (a TestService backend, published in the
// catalogue, licensing granted); REST calls go to A's consumer port.
type mesh struct {
	a, b              *node.Node
	licensing, bizreg ident.Subsystem
	rest              string // base URL of A's REST consumer
	roots             []*x509.Certificate
	grpcConn          *grpc.ClientConn
}

// With legacy, B's backend is a JSON/HTTP one (jsonBackend, test.v1.Echo)
// behind the node's REST provider.
func startMesh(t testing.TB, legacy bool) *mesh {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c := registrytest.Start(t, 1)
	adm := c.AdminClient(c.Servers[0])
	nodeA, _ := ident.ParseNode("EE/GOV/70000311/ss1")
	nodeB, _ := ident.ParseNode("EE/GOV/70000310/ss1")
	licensing, _ := ident.ParseSubsystem("EE/GOV/70000311/licensing")
	bizreg, _ := ident.ParseSubsystem("EE/GOV/70000310/business-registry")
	svc := ident.Service{Subsystem: bizreg, Name: "grpc.testing.TestService"}
	descriptors := descset.Of(testpb.File_grpc_testing_test_proto)
	if legacy {
		svc.Name = "test.v1.Echo"
		descriptors, _ = proto.Marshal(&descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{
			protodesc.ToFileDescriptorProto(timestamppb.File_google_protobuf_timestamp_proto), echoFile()}})
	}
	tokA, tokB := c.NodeToken(ctx, nodeA), c.NodeToken(ctx, nodeB)
	for _, r := range []struct {
		sub ident.Subsystem
		n   ident.Node
	}{{licensing, nodeA}, {bizreg, nodeB}} {
		if _, err := adm.AddSubsystem(c.Ctx(ctx), &registryv1.AddSubsystemRequest{Id: r.sub.Proto()}); err != nil {
			t.Fatal(err)
		}
		if _, err := adm.RegisterSubsystem(c.Ctx(ctx), &registryv1.RegisterSubsystemRequest{Subsystem: r.sub.Proto(), Node: r.n.Proto()}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := adm.PublishService(c.Ctx(ctx), &registryv1.PublishServiceRequest{
		Service: svc.Proto(), FileDescriptorSet: descriptors, Enabled: true,
	}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	backend := grpc.NewServer()
	testpb.RegisterTestServiceServer(backend, testService{})
	go backend.Serve(ln)
	t.Cleanup(backend.Stop)

	adminKey, _ := apikey.Generate()
	config := func(id ident.Node, dir, token string, sub node.SubsystemConfig) node.Config {
		cfg := node.DefaultConfig()
		cfg.Node, cfg.Registry, cfg.TrustBundle, cfg.JoinToken, cfg.DataDir = id.String(), c.Live()[0].Srv.APIAddr(), c.BundleFile(), token, dir
		cfg.ConsumerListen, cfg.ExchangeListen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
		cfg.Subsystems = []node.SubsystemConfig{sub}
		cfg.CheckpointInterval = 200 * time.Millisecond
		cfg.AdminKeys = []node.AdminKey{{Hash: apikey.Hash(adminKey), Role: "admin"}}
		if os.Getenv("SILD_TEST_LOG") != "" {
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		}
		return cfg
	}
	start := func(cfg node.Config) *node.Node {
		n, err := node.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		nctx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- n.Run(nctx) }()
		t.Cleanup(func() {
			stop()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("node: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("node did not stop")
			}
		})
		return n
	}
	a := start(config(nodeA, t.TempDir(), tokA, node.SubsystemConfig{ID: licensing.String()}))
	backendAddr := ln.Addr().String()
	if legacy {
		backendAddr = jsonBackend(t)
	}
	b := start(config(nodeB, t.TempDir(), tokB, node.SubsystemConfig{ID: bizreg.String(), Backend: backendAddr}))
	for _, n := range []*node.Node{a, b} {
		registrytest.WaitFor(t, 60*time.Second, "node ready with the catalogue", func() bool {
			top := n.Topology()
			return top != nil && len(top.Hosts(licensing)) == 1 && len(top.Hosts(bizreg)) == 1 && top.Service(svc) != nil
		})
	}
	// B's operator grants licensing the service, over B's admin REST API.
	grant := fmt.Sprintf(`{"client":{"subsystem":{"member":{"instance":"EE","memberClass":"GOV","memberCode":"70000311"},"subsystemCode":"licensing"}},
		"service":{"subsystem":{"member":{"instance":"EE","memberClass":"GOV","memberCode":"70000310"},"subsystemCode":"business-registry"},"serviceName":%q}}`, svc.Name)
	if a := call(t, "POST", "http://"+b.AdminAddr()+"/v1/access", adminKey, grant); a.code != 200 {
		t.Fatalf("grant over REST: %d %s", a.code, a.raw)
	}
	conn := dialInsecure(t, a.ConsumerAddr())
	// The REST consumer is the node's own: HTTP/1.1 on its consumer port.
	return &mesh{roots: c.Roots, a: a, b: b, licensing: licensing, bizreg: bizreg, rest: "http://" + a.ConsumerAddr() + "/r1/EE/GOV/70000310/business-registry/" + svc.Name + "/", grpcConn: conn}
}

// TestConsumerThroughTwoNodes: a REST consumer calls a gRPC provider through
// two real nodes; both ledgers record the exchange like a gRPC one.
func TestConsumerThroughTwoNodes(t *testing.T) {
	m := startMesh(t, false)
	h := map[string]string{"Sild-Client": m.licensing.String(), "Sild-User-Id": "EE38001085718", "Sild-Purpose": "licence-check",
		"Sild-Message-Id": "rest-1", "Content-Type": "application/json"}
	body := base64.StdEncoding.EncodeToString([]byte("70000310"))
	a := restPost(t, m.rest+"UnaryCall", h, `{"payload":{"body":"`+body+`"}}`)
	want(t, "unary through two nodes", a, 200, "", "")
	if a.body["username"] != "business-registry" || a.body["payload"].(map[string]any)["body"] != body {
		t.Fatalf("answer %s", a.raw)
	}
	// The same message id again: the mesh's refusal keeps its reason.
	want(t, "replay", restPost(t, m.rest+"UnaryCall", h, `{}`), 409, "MESSAGE_REPLAYED", "")

	h["Sild-Message-Id"] = "rest-2"
	a = restPost(t, m.rest+"StreamingOutputCall", h, `{"responseParameters":[{},{},{}],"payload":{"body":"eA=="}}`)
	want(t, "server streaming through two nodes", a, 200, "", "")
	if lines := ndjson(t, a.raw); len(lines) != 3 || lines[2]["result"].(map[string]any)["payload"].(map[string]any)["body"] != "eA==" {
		t.Fatalf("stream: %s", a.raw)
	}
	// The backend's own refusal reaches the REST caller as a gRPC caller
	// gets it: its code (as HTTP status) and its message, not relabelled
	// as the bridge's.
	h["Sild-Message-Id"] = "rest-3"
	a = restPost(t, m.rest+"UnaryCall", h, `{"responseStatus":{"code":9,"message":"tax period 2025 is closed"}}`)
	want(t, "backend refusal", a, 400, "", "")
	if a.body["code"] != float64(codes.FailedPrecondition) || a.body["message"] != "tax period 2025 is closed" || a.body["details"] != nil && len(a.body["details"].([]any)) != 0 {
		t.Fatalf("backend refusal through the bridge: %s", a.raw)
	}
	// A client the node does not serve.
	h2 := map[string]string{"Sild-Client": "EE/GOV/70000310/business-registry"}
	want(t, "client not served", restPost(t, m.rest+"UnaryCall", h2, `{}`), 403, "UNKNOWN_CLIENT", "")

	// Both ledgers hold the REST exchange, signed by both nodes, as for gRPC.
	for name, n := range map[string]*node.Node{"consumer": m.a, "provider": m.b} {
		recs, err := n.Ledger().ByMessageID("rest-1")
		if err != nil || len(recs) != 2 {
			t.Fatalf("%s ledger: %d records, %v", name, len(recs), err)
		}
		rec := recs[0].Record
		if rec.GetStatusCode() != 0 || rec.GetUserId() != "EE38001085718" || rec.GetPurpose() != "licence-check" ||
			rec.GetConsumerSignature() == nil || rec.GetProviderSignature() == nil || rec.GetMethod() == "" {
			t.Fatalf("%s record: %v", name, rec)
		}
	}
}

// BenchmarkConsumer compares a unary call through two nodes made by the REST
// bridge with the same call made over gRPC, in the same run.
func BenchmarkConsumer(b *testing.B) {
	m := startMesh(b, false)
	var seq atomic.Int64
	payload := `{"payload":{"body":"` + base64.StdEncoding.EncodeToString(make([]byte, 1024)) + `"}}`
	b.Run("grpc", func(b *testing.B) {
		client := testpb.NewTestServiceClient(m.grpcConn)
		req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 1024)}}
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				md := metadata.Pairs("sild-client", m.licensing.String(), "sild-target", m.bizreg.String(), "sild-message-id", fmt.Sprintf("g-%d", seq.Add(1)))
				if _, err := client.UnaryCall(metadata.NewOutgoingContext(context.Background(), md), req); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("rest", func(b *testing.B) {
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				req, _ := http.NewRequest("POST", m.rest+"UnaryCall", strings.NewReader(payload))
				req.Header.Set("Sild-Client", m.licensing.String())
				req.Header.Set("Sild-Message-Id", fmt.Sprintf("r-%d", seq.Add(1)))
				resp, err := client.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Errorf("HTTP %d", resp.StatusCode)
					return
				}
			}
		})
	})
}

// TestRESTToRESTThroughTwoNodes: a REST consumer calls a JSON/HTTP provider
// backend through two real nodes; neither side speaks gRPC, the mesh does.
func TestRESTToRESTThroughTwoNodes(t *testing.T) {
	m := startMesh(t, true)
	h := map[string]string{"Sild-Client": m.licensing.String(), "Sild-Message-Id": "legacy-1", "Sild-User-Id": "EE38001085718", "Sild-Purpose": "licence-check"}
	a := restPost(t, m.rest+"Echo", h, `{"text":"70000310","at":"2026-11-23T10:00:00Z"}`)
	want(t, "REST to REST", a, 200, "", "")
	for k, v := range map[string]any{"text": "70000310", "client": m.licensing.String(), "messageId": "legacy-1",
		"userId": "EE38001085718", "purpose": "licence-check", "at": "2026-11-23T10:00:00Z"} {
		if a.body[k] != v {
			t.Errorf("%s = %v, want %v (%s)", k, a.body[k], v, a.raw)
		}
	}
	h["Sild-Message-Id"] = "legacy-2"
	a = restPost(t, m.rest+"Repeat", h, `{"text":"s","times":2}`)
	if want(t, "REST to REST stream", a, 200, "", ""); len(ndjson(t, a.raw)) != 2 {
		t.Fatalf("stream: %s", a.raw)
	}
	h["Sild-Message-Id"] = "legacy-3"
	want(t, "backend refusal", restPost(t, m.rest+"Echo", h, `{"text":"forbidden"}`), 403, gateway.ReasonBackendError, "")
	// Both ledgers' evidence of the REST exchange verifies offline, as
	// `sild ledger verify` does it (ledger.VerifyBundle).
	for name, n := range map[string]*node.Node{"consumer": m.a, "provider": m.b} {
		recs, err := n.Ledger().ByMessageID("legacy-1")
		if err != nil || len(recs) != 1 || recs[0].Record.GetStatusCode() != 0 ||
			recs[0].Record.GetConsumerSignature() == nil || recs[0].Record.GetProviderSignature() == nil {
			t.Fatalf("%s ledger: %v %v", name, recs, err)
		}
		var data []byte
		registrytest.WaitFor(t, 60*time.Second, name+" evidence time-stamped", func() bool {
			b, err := n.Ledger().Export("legacy-1")
			if err != nil || len(b.GetCheckpoint().GetTimestampToken()) == 0 {
				return false
			}
			data, _ = proto.Marshal(b)
			return true
		})
		v, err := ledger.VerifyBundle(data, m.roots)
		if err != nil || v.RecordSignatures < 2 {
			t.Fatalf("%s evidence: %+v %v", name, v, err)
		}
	}
}
