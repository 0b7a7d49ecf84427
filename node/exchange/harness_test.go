package exchange

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/descset"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/ledger"
	"github.com/sildmesh/sild/node/access"
	"github.com/sildmesh/sild/node/envelope"
	"github.com/sildmesh/sild/node/sign"
	"github.com/sildmesh/sild/node/topology"
	"github.com/sildmesh/sild/pki"
)

// backend is a real grpc TestService behind the provider node.
type backend struct {
	testpb.UnimplementedTestServiceServer
	calls     atomic.Int64
	cancelled chan struct{}
}

func echoMD(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("x-echo"); len(v) > 0 {
		_ = grpc.SetHeader(ctx, metadata.Pairs("x-hdr", v[0]))
		grpc.SetTrailer(ctx, metadata.Pairs("x-trl", v[0]))
	}
	if v := md.Get(envelope.HeaderClient); len(v) > 0 {
		grpc.SetTrailer(ctx, metadata.Pairs("x-seen-client", v[0]))
	}
}

func (b *backend) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	b.calls.Add(1)
	echoMD(ctx)
	if s := req.GetResponseStatus(); s != nil {
		return nil, status.Error(codes.Code(s.GetCode()), s.GetMessage())
	}
	if string(req.GetPayload().GetBody()) == "block" {
		<-ctx.Done()
		close(b.cancelled)
		return nil, ctx.Err()
	}
	if dl, ok := ctx.Deadline(); ok {
		return &testpb.SimpleResponse{Username: dl.UTC().Format(time.RFC3339Nano), Payload: req.GetPayload()}, nil
	}
	return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
}

func (b *backend) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, s testpb.TestService_StreamingOutputCallServer) error {
	b.calls.Add(1)
	echoMD(s.Context())
	for _, p := range req.GetResponseParameters() {
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: bytes.Repeat([]byte{'x'}, int(p.GetSize()))}}); err != nil {
			return err
		}
	}
	if st := req.GetResponseStatus(); st != nil {
		return status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	return nil
}

func (b *backend) StreamingInputCall(s testpb.TestService_StreamingInputCallServer) error {
	b.calls.Add(1)
	n := 0
	for {
		req, err := s.Recv()
		if err == io.EOF {
			return s.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: int32(n)})
		}
		if err != nil {
			return err
		}
		n += len(req.GetPayload().GetBody())
	}
}

func (b *backend) FullDuplexCall(s testpb.TestService_FullDuplexCallServer) error {
	b.calls.Add(1)
	echoMD(s.Context())
	for {
		req, err := s.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

// memRecorder keeps records in memory; it stands in for the ledger, which
// has its own tests. fail makes Record fail.
type memRecorder struct {
	mu     sync.Mutex
	recs   []*ledgerv1.Record
	bodies map[string]*ledgerv1.Body // by message id
	fail   atomic.Bool
}

func (m *memRecorder) Record(_ context.Context, r *ledgerv1.Record, body *ledgerv1.Body) error {
	if m.fail.Load() {
		return io.ErrClosedPipe
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recs = append(m.recs, proto.Clone(r).(*ledgerv1.Record))
	if body != nil {
		if m.bodies == nil {
			m.bodies = map[string]*ledgerv1.Body{}
		}
		m.bodies[r.GetMessageId()] = proto.Clone(body).(*ledgerv1.Body)
	}
	return nil
}

// body returns the body recorded with message id, nil if none.
func (m *memRecorder) body(id string) *ledgerv1.Body {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bodies[id]
}

func (m *memRecorder) find(id string) *ledgerv1.Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.recs {
		if r.GetMessageId() == id {
			return r
		}
	}
	return nil
}

func (m *memRecorder) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.recs)
}

var (
	td = spiffeid.RequireTrustDomainFromString("ee.sild.test")

	nodeA = mustNode("EE/GOV/70000310/ss1")
	nodeB = mustNode("EE/COM/70000311/ss1")
	nodeC = mustNode("EE/COM/70000312/ss1")

	licensing = mustSub("EE/GOV/70000310/licensing") // on A, granted
	archive   = mustSub("EE/GOV/70000310/archive")   // on A, no right
	bank      = mustSub("EE/COM/70000312/bank")      // on C, granted
	ghost     = mustSub("EE/GOV/70000399/ghost")     // nowhere
	registry  = mustSub("EE/COM/70000311/registry")  // on B, the target
	empty     = mustSub("EE/COM/70000311/empty")     // no node

	testService = "grpc.testing.TestService"
)

func mustNode(s string) ident.Node {
	n, err := ident.ParseNode(s)
	if err != nil {
		panic(err)
	}
	return n
}

func mustSub(s string) ident.Subsystem {
	n, err := ident.ParseSubsystem(s)
	if err != nil {
		panic(err)
	}
	return n
}

// testNode is one node's identity: SVID and message signer.
type testNode struct {
	id      ident.Node
	spiffe  spiffeid.ID
	svid    *pki.SVIDSource
	signer  *sign.Signer
	signKey string // key hash of the signing key
}

func newTestNode(t testing.TB, ca *pki.CA, n ident.Node, now time.Time) *testNode {
	t.Helper()
	return newTestNodeIn(t, ca, td, n, now)
}

// newTestNodeIn is newTestNode in trust domain tdn (whose CA ca is).
func newTestNodeIn(t testing.TB, ca *pki.CA, tdn spiffeid.TrustDomain, n ident.Node, now time.Time) *testNode {
	t.Helper()
	id, err := ident.NodeSPIFFEID(tdn, n)
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue(pki.KindSVID, key.Public(), id, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := pki.NewSVID(key, cert)
	if err != nil {
		t.Fatal(err)
	}
	// Ed25519 message-signing keys, as the node daemon makes them.
	_, skey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	scert, err := ca.Issue(pki.KindSigning, skey.Public(), id, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := sign.New(sign.Config{Key: skey, Chain: []*x509.Certificate{scert}, IncludeChain: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = signer.Close() })
	kh, err := pki.KeyHash(skey.Public())
	if err != nil {
		t.Fatal(err)
	}
	return &testNode{id: n, spiffe: id, svid: pki.NewSVIDSource(svid), signer: signer, signKey: kh}
}

// mesh is consumer node A and provider node B with a backend; node C is a
// third registered node that calls B directly.
type mesh struct {
	ca           *pki.CA
	bundles      *pki.BundleSource
	a, b, c      *testNode
	gc           *registryv1.GlobalConfig
	topoA, topoB atomic.Pointer[topology.Topology]
	be           *backend
	beAddr       string
	bAddr        string
	recA, recB   *memRecorder
	ledA, ledB   *ledger.Ledger
	store        *access.Store
	aConn        *grpc.ClientConn
	prov         *Provider
	cons         *Consumer
	client       testpb.TestServiceClient // through A
	direct       testpb.TestServiceClient // to the backend
}

func serve(t testing.TB, lis net.Listener, s *grpc.Server) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Go(func() { _ = s.Serve(lis) })
	t.Cleanup(func() { s.Stop(); wg.Wait() })
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

func dialPlain(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func nodeRecord(n *testNode, addr string) *registryv1.Node {
	return &registryv1.Node{Id: n.id.Proto(), Address: addr, SigningKeyHash: n.signKey,
		State: registryv1.NodeState_NODE_STATE_ACTIVE, SpiffeId: n.spiffe.String()}
}

func newMesh(t testing.TB) *mesh { t.Helper(); return newMeshWith(t, false) }

// newMeshWith builds the mesh; with realLedgers both nodes record into real
// ledgers (ledA, ledB) instead of recA and recB.
// newMeshWith starts the mesh with real ledgers or in-memory recorders;
// adjust, if any, changes both sides' Config before they start.
func newMeshWith(t testing.TB, realLedgers bool, adjust ...func(*Config)) *mesh {
	t.Helper()
	now := time.Now()
	ca, err := pki.NewCA(td, "EE test root", 24*time.Hour, now.Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{ca: ca, recA: &memRecorder{}, recB: &memRecorder{},
		be: &backend{cancelled: make(chan struct{})}}
	m.bundles = pki.NewBundleSource(x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.Cert}))
	m.a = newTestNode(t, ca, nodeA, now.Add(-time.Minute))
	m.b = newTestNode(t, ca, nodeB, now.Add(-time.Minute))
	m.c = newTestNode(t, ca, nodeC, now.Add(-time.Minute))
	var recorderA, recorderB Recorder = m.recA, m.recB
	if realLedgers {
		m.ledA, recorderA = startLedger(t, ca, m.a)
		m.ledB, recorderB = startLedger(t, ca, m.b)
	}

	beLis := listen(t)
	m.beAddr = beLis.Addr().String()
	bes := grpc.NewServer(grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(64<<20))
	testpb.RegisterTestServiceServer(bes, m.be)
	serve(t, beLis, bes)

	bLis := listen(t)
	m.bAddr = bLis.Addr().String()
	m.gc = &registryv1.GlobalConfig{
		Instance: "EE", TrustDomain: td.Name(), Version: 1,
		IssuedAt: timestamppb.New(now), ExpiresAt: timestamppb.New(now.Add(time.Hour)),
		TrustBundle: [][]byte{ca.Cert.Raw},
		Nodes: []*registryv1.Node{
			nodeRecord(m.a, "127.0.0.1:1"), nodeRecord(m.b, m.bAddr), nodeRecord(m.c, "127.0.0.1:1"),
		},
		Subsystems: []*registryv1.Subsystem{
			{Id: licensing.Proto(), Nodes: []*identv1.NodeId{nodeA.Proto()}},
			{Id: archive.Proto(), Nodes: []*identv1.NodeId{nodeA.Proto()}},
			{Id: bank.Proto(), Nodes: []*identv1.NodeId{nodeC.Proto()}},
			{Id: registry.Proto(), Nodes: []*identv1.NodeId{nodeB.Proto()}},
			{Id: empty.Proto()},
		},
		Services: []*registryv1.CatalogEntry{
			{Service: ident.Service{Subsystem: registry, Name: testService}.Proto(), Enabled: true,
				FileDescriptorSet: descset.Of(testpb.File_grpc_testing_test_proto)},
			{Service: ident.Service{Subsystem: registry, Name: "grpc.testing.UnimplementedService"}.Proto(), Enabled: false},
		},
	}
	m.setTopo(t, &m.topoA, m.gc)
	m.setTopo(t, &m.topoB, m.gc)

	store, err := access.Open(access.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	m.store = store
	for _, c := range []ident.Subsystem{licensing, bank} {
		if _, _, err := store.Grant(access.Right{Client: access.SubsystemClient(c), Service: ident.Service{Subsystem: registry, Name: testService}}); err != nil {
			t.Fatal(err)
		}
	}

	pcfg := DefaultConfig()
	pcfg.Node, pcfg.Topology = nodeB, m.topoB.Load
	pcfg.SVID, pcfg.Bundles, pcfg.Signer, pcfg.Verifier = m.b.svid, m.bundles, m.b.signer, sign.NewVerifier(0)
	pcfg.Recorder, pcfg.Access = recorderB, store
	pcfg.Backends = map[ident.Subsystem]string{registry: m.beAddr}
	for _, f := range adjust {
		f(&pcfg)
	}
	prov, err := NewProvider(pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = prov.Close() })
	m.prov = prov
	serve(t, bLis, grpc.NewServer(prov.ServerOptions()...))

	ccfg := DefaultConfig()
	ccfg.Node, ccfg.Topology = nodeA, m.topoA.Load
	ccfg.SVID, ccfg.Bundles, ccfg.Signer, ccfg.Verifier = m.a.svid, m.bundles, m.a.signer, sign.NewVerifier(0)
	ccfg.Recorder = recorderA
	ccfg.Clients = []ident.Subsystem{licensing, archive}
	for _, f := range adjust {
		f(&ccfg)
	}
	cons, err := NewConsumer(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cons.Close() })
	m.cons = cons
	aLis := listen(t)
	serve(t, aLis, grpc.NewServer(cons.ServerOptions()...))

	m.aConn = dialPlain(t, aLis.Addr().String())
	m.client = testpb.NewTestServiceClient(m.aConn)
	m.direct = testpb.NewTestServiceClient(dialPlain(t, m.beAddr))
	return m
}

func (m *mesh) setTopo(t testing.TB, p *atomic.Pointer[topology.Topology], gc *registryv1.GlobalConfig) {
	t.Helper()
	topo, err := topology.New(gc)
	if err != nil {
		t.Fatal(err)
	}
	p.Store(topo)
}

// dialAs connects to B's exchange listener with node n's SVID.
func (m *mesh) dialAs(t testing.TB, n *testNode) *grpc.ClientConn {
	t.Helper()
	tc := tlsconfig.MTLSClientConfig(n.svid, m.bundles, tlsconfig.AuthorizeID(m.b.spiffe))
	c, err := grpc.NewClient(m.bAddr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// echoedStream starts a bidirectional stream from licensing to registry
// with message id id and has one message echoed through the mesh.
func (m *mesh) echoedStream(t testing.TB, id string) testpb.TestService_FullDuplexCallClient {
	t.Helper()
	s, err := m.client.FullDuplexCall(as(ctxT(t), licensing, registry, envelope.HeaderMessageID, id))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatalf("first answer: %v", err)
	}
	return s
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// as is a call context from client to target, with extra header pairs.
func as(ctx context.Context, client, target ident.Subsystem, kv ...string) context.Context {
	kv = append([]string{envelope.HeaderClient, client.String(), envelope.HeaderTarget, target.String()}, kv...)
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// wantRefusal checks err's code, reason and component.
func wantRefusal(t testing.TB, err error, code codes.Code, reason, component string) {
	t.Helper()
	if status.Code(err) != code || rpcerr.Reason(err) != reason || rpcerr.Component(err) != component {
		t.Fatalf("got %v (reason %q, component %q), want %v %s from %s", err, rpcerr.Reason(err), rpcerr.Component(err), code, reason, component)
	}
}
