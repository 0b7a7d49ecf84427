package node_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
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

	metav1 "github.com/sildmesh/sild/gen/sild/meta/v1"
	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/apikey"
	"github.com/sildmesh/sild/internal/descset"
	"github.com/sildmesh/sild/internal/promtext"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry"
	"github.com/sildmesh/sild/registry/registrytest"
)

// echo is a provider backend; calls counts the calls it received.
type echo struct {
	testpb.UnimplementedTestServiceServer
	calls *atomic.Int64
}

func (e echo) UnaryCall(_ context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	e.calls.Add(1)
	return &testpb.SimpleResponse{Payload: req.GetPayload(), Username: "business-registry"}, nil
}

func (e echo) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, s testpb.TestService_StreamingOutputCallServer) error {
	e.calls.Add(1)
	for range req.GetResponseParameters() {
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
	return nil
}

func (e echo) FullDuplexCall(s testpb.TestService_FullDuplexCallServer) error {
	e.calls.Add(1)
	for {
		req, err := s.Recv()
		if err != nil {
			return nil // io.EOF or the call was cut
		}
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

func startBackend(t *testing.T) string {
	addr, _ := startCountingBackend(t)
	return addr
}

// startCountingBackend starts an echo backend (taking messages up to
// 64 MiB, so that the nodes' limits are what is tested) and returns its
// address and its count of calls.
func startCountingBackend(t *testing.T) (string, *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.MaxRecvMsgSize(64 << 20))
	calls := new(atomic.Int64)
	testpb.RegisterTestServiceServer(s, echo{calls: calls})
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return ln.Addr().String(), calls
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// twoNodes is a registry, a consumer node A serving licensing and a
// provider node B serving the business registry with an echo backend.
type twoNodes struct {
	c                 *registrytest.Cluster
	a, b              *running
	dirA, dirB        string
	licensing, bizreg ident.Subsystem
	adminKey          string // B's admin API key
	backendCalls      *atomic.Int64
}

func startTwoNodes(t *testing.T, ctx context.Context, adjust func(*registry.Config), nodeAdjust ...func(*node.Config)) *twoNodes {
	t.Helper()
	c := registrytest.StartWith(t, 1, adjust)
	adm := c.AdminClient(c.Servers[0])
	nodeA, _ := ident.ParseNode("EE/GOV/70000311/ss1")
	nodeB, _ := ident.ParseNode("EE/GOV/70000310/ss1")
	licensing, _ := ident.ParseSubsystem("EE/GOV/70000311/licensing")
	bizreg, _ := ident.ParseSubsystem("EE/GOV/70000310/business-registry")
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
	// The provider publishes its service with its descriptors.
	if _, err := adm.PublishService(c.Ctx(ctx), &registryv1.PublishServiceRequest{
		Service: ident.Service{Subsystem: bizreg, Name: "grpc.testing.TestService"}.Proto(), Enabled: true,
		FileDescriptorSet: descset.Of(testpb.File_grpc_testing_test_proto),
	}); err != nil {
		t.Fatal(err)
	}
	adminKey, _ := apikey.Generate()
	dirA, dirB := t.TempDir(), t.TempDir()
	cfgA := nodeConfig(c, nodeA.String(), dirA, tokA)
	cfgA.Subsystems = []node.SubsystemConfig{{ID: licensing.String()}}
	cfgB := nodeConfig(c, nodeB.String(), dirB, tokB)
	backend, backendCalls := startCountingBackend(t)
	cfgB.Subsystems = []node.SubsystemConfig{{ID: bizreg.String(), Backend: backend}}
	cfgB.AdminKeys = []node.AdminKey{{Hash: apikey.Hash(adminKey), Role: "admin"}}
	for _, adj := range nodeAdjust {
		adj(&cfgA)
		adj(&cfgB)
	}
	a, b := startNode(t, cfgA), startNode(t, cfgB)
	for _, r := range []*running{a, b} {
		registrytest.WaitFor(t, 30*time.Second, "node ready", func() bool {
			code, _ := readyz(r.n)
			top := r.n.Topology()
			return code == 200 && top != nil && len(top.Hosts(licensing)) == 1 && len(top.Hosts(bizreg)) == 1
		})
	}
	return &twoNodes{c: c, a: a, b: b, dirA: dirA, dirB: dirB, licensing: licensing, bizreg: bizreg, adminKey: adminKey, backendCalls: backendCalls}
}

// grant gives licensing the whole echo service on B.
func (m *twoNodes) grant(t *testing.T, ctx context.Context) {
	t.Helper()
	admCtx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+m.adminKey)
	_, err := nodev1.NewAdminServiceClient(dial(t, m.b.n.AdminAddr())).GrantAccess(admCtx, &nodev1.GrantAccessRequest{Right: &nodev1.AccessRight{
		Client:  &nodev1.AccessClient{Kind: &nodev1.AccessClient_Subsystem{Subsystem: m.licensing.Proto()}},
		Service: ident.Service{Subsystem: m.bizreg, Name: "grpc.testing.TestService"}.Proto(),
	}})
	if err != nil {
		t.Fatal(err)
	}
}

// call makes a unary call from licensing to the business registry via A.
func (m *twoNodes) call(t *testing.T, ctx context.Context, msgID string) (*testpb.SimpleResponse, error) {
	md := metadata.Pairs("sild-client", m.licensing.String(), "sild-target", m.bizreg.String(), "sild-user-id", "EE38001085718", "sild-purpose", "licence-check")
	if msgID != "" {
		md.Set("sild-message-id", msgID)
	}
	client := testpb.NewTestServiceClient(dial(t, m.a.n.ConsumerAddr()))
	return client.UnaryCall(metadata.NewOutgoingContext(ctx, md), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("70000310")}})
}

func TestExchangeThroughTwoNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	m := startTwoNodes(t, ctx, nil)
	a, b, licensing, bizreg := m.a, m.b, m.licensing, m.bizreg
	client := testpb.NewTestServiceClient(dial(t, a.n.ConsumerAddr()))
	call := func(msgID string) (*testpb.SimpleResponse, error) { return m.call(t, ctx, msgID) }
	// No access right yet: the provider refuses.
	_, err := call("")
	if status.Code(err) != codes.PermissionDenied || rpcerr.Reason(err) != rpcerr.ReasonAccessDenied {
		t.Fatalf("call without access right: %v (reason %q)", err, rpcerr.Reason(err))
	}
	if n := m.backendCalls.Load(); n != 0 {
		t.Fatalf("backend called %d times without an access right", n)
	}
	// B's operator grants licensing the service over B's admin API.
	m.grant(t, ctx)
	// The metaservice on A asks B which methods licensing may call.
	allowed, err := metav1.NewMetaServiceClient(dial(t, a.n.ConsumerAddr())).AllowedMethods(ctx, &metav1.AllowedMethodsRequest{Client: licensing.Proto(), Target: bizreg.Proto()})
	if err != nil || len(allowed.GetMethods()) == 0 {
		t.Fatalf("allowed methods: %v %v", allowed, err)
	}
	resp, err := call("msg-1")
	if err != nil {
		t.Fatalf("call through two nodes: %v", err)
	}
	if string(resp.GetPayload().GetBody()) != "70000310" || resp.GetUsername() != "business-registry" {
		t.Fatalf("answer %v", resp)
	}
	// The same message id again is a replay.
	if _, err := call("msg-1"); rpcerr.Reason(err) != rpcerr.ReasonReplayed {
		t.Fatalf("replayed message id: %v", err)
	}
	if n := m.backendCalls.Load(); n != 1 {
		t.Fatalf("backend called %d times, want 1: the replay reached it", n)
	}
	// Server streaming works through the mesh too.
	md := metadata.Pairs("sild-client", licensing.String(), "sild-target", bizreg.String())
	stream, err := client.StreamingOutputCall(metadata.NewOutgoingContext(ctx, md), &testpb.StreamingOutputCallRequest{
		ResponseParameters: make([]*testpb.ResponseParameters, 3), Payload: &testpb.Payload{Body: []byte("x")},
	})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		if _, err := stream.Recv(); err != nil {
			if !strings.Contains(err.Error(), "EOF") && status.Code(err) != codes.OK {
				t.Fatalf("stream: %v", err)
			}
			break
		}
		n++
	}
	if n != 3 {
		t.Fatalf("%d stream messages, want 3", n)
	}
	if n := m.backendCalls.Load(); n != 2 {
		t.Fatalf("backend called %d times, want 2", n)
	}
	// Both ledgers hold the exchange, with both signatures.
	for name, r := range map[string]*running{"consumer": a, "provider": b} {
		recs, err := r.n.Ledger().ByMessageID("msg-1")
		if err != nil || len(recs) != 2 { // the exchange and the refused replay
			t.Fatalf("%s ledger: %d records, %v", name, len(recs), err)
		}
		rec := recs[0].Record
		if rec.GetStatusCode() != 0 || recs[1].Record.GetStatusReason() != rpcerr.ReasonReplayed {
			t.Fatalf("%s records: %v / %v", name, rec, recs[1].Record)
		}
		if rec.GetUserId() != "EE38001085718" || rec.GetPurpose() != "licence-check" || rec.GetConsumerSignature() == nil || rec.GetProviderSignature() == nil {
			t.Fatalf("%s record: %v", name, rec)
		}
		// The admin listener's /metrics counts what the ledger and the
		// signer did: records per commit, digests per signature.
		st := r.n.Ledger().Stats()
		metrics, err := promtext.Scrape(ctx, "http://"+r.n.AdminAddr()+"/metrics")
		if err != nil {
			t.Fatal(err)
		}
		if st.Records < 3 || metrics["sild_ledger_records_total"] != float64(st.Records) || metrics["sild_ledger_commits_total"] != float64(st.Commits) ||
			metrics["sild_signer_digests_total"] < 3 || metrics["sild_signer_signatures_total"] < 1 || metrics["sild_node_config_version"] < 1 ||
			metrics["sild_verifier_root_checks_total"] < 1 {
			t.Fatalf("%s metrics %v, ledger stats %+v", name, metrics, st)
		}
		// Every call each side handled, by outcome: the refusal without an
		// access right, the exchange and the stream, the replay.
		side := map[string]string{"consumer": "consumer", "provider": "provider"}[name]
		calls := func(code codes.Code, reason string) float64 {
			return metrics[fmt.Sprintf("sild_exchanges_total{code=%q,reason=%q,side=%q}", code.String(), reason, side)]
		}
		if calls(codes.OK, "") != 2 || calls(codes.PermissionDenied, rpcerr.ReasonAccessDenied) != 1 ||
			calls(codes.AlreadyExists, rpcerr.ReasonReplayed) != 1 || metrics[fmt.Sprintf("sild_exchange_duration_seconds_count{side=%q}", side)] != 4 {
			t.Fatalf("%s exchange metrics %v", name, metrics)
		}
	}
}

func TestRegistryDownUntilConfigExpires(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	m := startTwoNodes(t, ctx, func(c *registry.Config) { c.ConfigTTL, c.ConfigRefresh = 5*time.Second, time.Second })
	m.grant(t, ctx)
	registrytest.WaitFor(t, 10*time.Second, "grant in effect", func() bool { _, err := m.call(t, ctx, ""); return err == nil })
	for _, s := range m.c.Live() {
		m.c.Stop(s)
	}
	// The cached configuration carries on.
	if _, err := m.call(t, ctx, ""); err != nil {
		t.Fatalf("call with the registry down: %v", err)
	}
	// Until it expires: then a clear refusal.
	registrytest.WaitFor(t, 20*time.Second, "CONFIG_EXPIRED", func() bool {
		_, err := m.call(t, ctx, "")
		return rpcerr.Reason(err) == rpcerr.ReasonConfigExpired
	})
	// Refused without reaching B's backend.
	before := m.backendCalls.Load()
	for range 3 {
		if _, err := m.call(t, ctx, ""); rpcerr.Reason(err) != rpcerr.ReasonConfigExpired {
			t.Fatalf("call with an expired configuration: %v", err)
		}
	}
	if n := m.backendCalls.Load() - before; n != 0 {
		t.Fatalf("backend called %d times with an expired configuration", n)
	}
}

// TestRootRotationUnderTraffic: the ecosystem's root CA rotates while two
// nodes exchange; they accept the configurations signed under the new root
// and keep exchanging through all three phases.
func TestRootRotationUnderTraffic(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	// Nodes renew every ~2 s here, so that they hold certificates of the new
	// root before the old one is dropped (in production: within the SVID
	// lifetime, which is what an operator waits for before finish).
	m := startTwoNodes(t, ctx, nil, func(c *node.Config) { c.RenewBefore = 24*time.Hour - 2*time.Second })
	m.grant(t, ctx)
	registrytest.WaitFor(t, 10*time.Second, "grant in effect", func() bool { _, err := m.call(t, ctx, ""); return err == nil })
	adm := m.c.AdminClient(m.c.Servers[0])
	var newRoot *x509.Certificate
	for _, phase := range []registryv1.CARotationPhase{
		registryv1.CARotationPhase_CA_ROTATION_PHASE_PREPARE,
		registryv1.CARotationPhase_CA_ROTATION_PHASE_ACTIVATE,
		registryv1.CARotationPhase_CA_ROTATION_PHASE_FINISH,
	} {
		resp, err := adm.RotateCA(m.c.Ctx(ctx), &registryv1.RotateCARequest{Phase: phase})
		if err != nil {
			t.Fatalf("%s: %v", phase, err)
		}
		if phase == registryv1.CARotationPhase_CA_ROTATION_PHASE_PREPARE {
			// Operators refresh the pinned bundle after prepare.
			var roots []*x509.Certificate
			for _, der := range resp.GetRoots() {
				c, _ := x509.ParseCertificate(der)
				roots = append(roots, c)
			}
			m.c.Roots = roots
			newRoot = roots[1]
		}
		if phase == registryv1.CARotationPhase_CA_ROTATION_PHASE_FINISH {
			continue // checked below, after the nodes renewed
		}
		want := len(resp.GetRoots())
		for _, r := range []*running{m.a, m.b} {
			registrytest.WaitFor(t, 10*time.Second, phase.String()+" reaches "+r.n.ID().String(), func() bool {
				top := r.n.Topology()
				return top != nil && len(top.Roots) == want
			})
		}
		if _, err := m.call(t, ctx, ""); err != nil {
			t.Fatalf("exchange after %s: %v", phase, err)
		}
		if phase == registryv1.CARotationPhase_CA_ROTATION_PHASE_ACTIVATE {
			// Both nodes renew under the new root.
			for _, dir := range []string{m.dirA, m.dirB} {
				registrytest.WaitFor(t, 20*time.Second, "renewal under the new root", func() bool {
					for _, f := range []string{"svid.crt", "signing.crt"} {
						pemBytes, err := os.ReadFile(filepath.Join(dir, f))
						if err != nil {
							return false
						}
						certs, err := pki.DecodeCerts(pemBytes)
						if err != nil || len(certs) == 0 || certs[0].CheckSignatureFrom(newRoot) != nil {
							return false
						}
					}
					return true
				})
			}
		}
	}
	// After finish only the new root is trusted, and exchanges go on.
	registrytest.WaitFor(t, 10*time.Second, "exchange after finish", func() bool { _, err := m.call(t, ctx, ""); return err == nil })
}
