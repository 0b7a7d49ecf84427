package node_test

import (
	"context"
	"crypto/x509"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/apikey"
	"github.com/sildmesh/sild/internal/descset"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/ledger"
	"github.com/sildmesh/sild/node"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry"
	"github.com/sildmesh/sild/registry/registrytest"
)

func federatedRegistry(t *testing.T, instance, td string) *registrytest.Cluster {
	return registrytest.StartWith(t, 1, func(c *registry.Config) {
		c.Instance, c.TrustDomain = instance, td
		c.FederationAddr = "127.0.0.1:0"
		c.FederationRefresh = 300 * time.Millisecond
	})
}

func link(t *testing.T, ctx context.Context, from, to *registrytest.Cluster, instance, td string) {
	t.Helper()
	_, err := from.AdminClient(from.Servers[0]).AddFederationLink(from.Ctx(ctx), &registryv1.AddFederationLinkRequest{
		Instance: instance, TrustDomain: td, BundleEndpointUrl: to.Servers[0].Srv.BundleEndpointURL(),
		EndpointSpiffeId: "spiffe://" + td + "/registry/r1", RootFingerprint: pki.Fingerprint(to.Roots[0]),
	})
	if err != nil {
		t.Fatal(err)
	}
}

// register adds subsystem sub hosted by node n in registry c.
func register(t *testing.T, ctx context.Context, c *registrytest.Cluster, sub ident.Subsystem, n ident.Node) {
	t.Helper()
	adm := c.AdminClient(c.Servers[0])
	if _, err := adm.AddSubsystem(c.Ctx(ctx), &registryv1.AddSubsystemRequest{Id: sub.Proto()}); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.RegisterSubsystem(c.Ctx(ctx), &registryv1.RegisterSubsystemRequest{Subsystem: sub.Proto(), Node: n.Proto()}); err != nil {
		t.Fatal(err)
	}
}

func TestCrossBorderExchange(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	ee := federatedRegistry(t, "EE", "ee.sild.test")
	fi := federatedRegistry(t, "FI", "fi.sild.test")
	eeNode, _ := ident.ParseNode("EE/GOV/70000310/ss1")
	fiNode, _ := ident.ParseNode("FI/GOV/0245437-2/ss1")
	bizreg, _ := ident.ParseSubsystem("EE/GOV/70000310/business-registry")
	taxes, _ := ident.ParseSubsystem("EE/GOV/70000310/internal-taxes")
	fiClient, _ := ident.ParseSubsystem("FI/GOV/0245437-2/population")
	eeTok, fiTok := ee.NodeToken(ctx, eeNode), fi.NodeToken(ctx, fiNode)
	register(t, ctx, ee, bizreg, eeNode)
	register(t, ctx, ee, taxes, eeNode)
	register(t, ctx, fi, fiClient, fiNode)
	eeAdm := ee.AdminClient(ee.Servers[0])
	for _, sub := range []ident.Subsystem{bizreg, taxes} {
		if _, err := eeAdm.PublishService(ee.Ctx(ctx), &registryv1.PublishServiceRequest{
			Service: ident.Service{Subsystem: sub, Name: "grpc.testing.TestService"}.Proto(), Enabled: true,
			FileDescriptorSet: descset.Of(testpb.File_grpc_testing_test_proto),
		}); err != nil {
			t.Fatal(err)
		}
	}
	link(t, ctx, ee, fi, "FI", "fi.sild.test")
	link(t, ctx, fi, ee, "EE", "ee.sild.test")
	if _, err := eeAdm.AddExport(ee.Ctx(ctx), &registryv1.AddExportRequest{Subsystem: bizreg.Proto(), ToInstance: "FI"}); err != nil {
		t.Fatal(err)
	}

	adminKey, _ := apikey.Generate()
	backend := startBackend(t)
	eeCfg := nodeConfig(ee, eeNode.String(), t.TempDir(), eeTok)
	eeCfg.Subsystems = []node.SubsystemConfig{{ID: bizreg.String(), Backend: backend}, {ID: taxes.String(), Backend: backend}}
	eeCfg.AdminKeys = []node.AdminKey{{Hash: apikey.Hash(adminKey), Role: "admin"}}
	fiCfg := nodeConfig(fi, fiNode.String(), t.TempDir(), fiTok)
	fiCfg.Subsystems = []node.SubsystemConfig{{ID: fiClient.String()}}
	eeRun, fiRun := startNode(t, eeCfg), startNode(t, fiCfg)
	registrytest.WaitFor(t, 30*time.Second, "both nodes see each other's ecosystem", func() bool {
		et, ft := eeRun.n.Topology(), fiRun.n.Topology()
		return et != nil && ft != nil && et.Serves(fiNode, fiClient) && ft.Serves(eeNode, bizreg)
	})
	// The EE provider grants the Finnish subsystem its service.
	admCtx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+adminKey)
	for _, sub := range []ident.Subsystem{bizreg, taxes} {
		if _, err := nodev1.NewAdminServiceClient(dial(t, eeRun.n.AdminAddr())).GrantAccess(admCtx, &nodev1.GrantAccessRequest{Right: &nodev1.AccessRight{
			Client:  &nodev1.AccessClient{Kind: &nodev1.AccessClient_Subsystem{Subsystem: fiClient.Proto()}},
			Service: ident.Service{Subsystem: sub, Name: "grpc.testing.TestService"}.Proto(),
		}}); err != nil {
			t.Fatal(err)
		}
	}

	client := testpb.NewTestServiceClient(dial(t, fiRun.n.ConsumerAddr()))
	call := func(target ident.Subsystem, msgID string) error {
		md := metadata.Pairs("sild-client", fiClient.String(), "sild-target", target.String(), "sild-message-id", msgID)
		_, err := client.UnaryCall(metadata.NewOutgoingContext(ctx, md), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("x")}})
		return err
	}
	if err := call(bizreg, "fi-1"); err != nil {
		t.Fatalf("cross-border call: %v", err)
	}
	// Server streaming across the border.
	md := metadata.Pairs("sild-client", fiClient.String(), "sild-target", bizreg.String())
	stream, err := client.StreamingOutputCall(metadata.NewOutgoingContext(ctx, md), &testpb.StreamingOutputCallRequest{
		ResponseParameters: make([]*testpb.ResponseParameters, 4), Payload: &testpb.Payload{Body: []byte("y")},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for {
		_, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("cross-border stream: %v", err)
		}
		got++
	}
	if got != 4 {
		t.Fatalf("%d stream messages, want 4", got)
	}
	// Evidence on both sides.
	for name, r := range map[string]*running{"FI consumer": fiRun, "EE provider": eeRun} {
		recs, err := r.n.Ledger().ByMessageID("fi-1")
		if err != nil || len(recs) != 1 || recs[0].Record.GetConsumerSignature() == nil || recs[0].Record.GetProviderSignature() == nil {
			t.Fatalf("%s ledger: %v %v", name, recs, err)
		}
	}
	// An evidence bundle from either side verifies with the two ecosystems'
	// roots (each record carries both nodes' signatures), not with one.
	bothRoots := append(append([]*x509.Certificate{}, ee.Roots...), fi.Roots...)
	for name, r := range map[string]*running{"FI consumer": fiRun, "EE provider": eeRun} {
		// The record's checkpoint is time-stamped asynchronously: wait until
		// the exported bundle carries a stamped checkpoint and verifies.
		var data []byte
		registrytest.WaitFor(t, 20*time.Second, name+" evidence verifies with both roots", func() bool {
			b, err := r.n.Ledger().Export("fi-1")
			if err == nil {
				data, err = proto.Marshal(b)
			}
			if err == nil {
				_, err = ledger.VerifyBundle(data, bothRoots)
			}
			return err == nil
		})
		if _, err := ledger.VerifyBundle(data, ee.Roots); err == nil && name == "FI consumer" {
			t.Fatalf("%s evidence verified without the FI roots", name)
		}
	}
	// A subsystem EE did not export is not reachable from FI.
	if err := call(taxes, "fi-2"); status.Code(err) != codes.NotFound || rpcerr.Reason(err) != rpcerr.ReasonUnknownTarget {
		t.Fatalf("call to a subsystem not exported: %v", err)
	}
	// An ecosystem that is not linked at all.
	lv, _ := ident.ParseSubsystem("LV/GOV/1/registry")
	if err := call(lv, "fi-3"); rpcerr.Reason(err) != rpcerr.ReasonFederationInactive {
		t.Fatalf("call to an unlinked ecosystem: %v", err)
	}
	// EE suspends the link: calls stop with FEDERATION_INACTIVE; resumed,
	// they work again.
	setSuspended := func(s bool) {
		if _, err := eeAdm.SetFederationLinkSuspended(ee.Ctx(ctx), &registryv1.SetFederationLinkSuspendedRequest{Instance: "FI", Suspended: s}); err != nil {
			t.Fatal(err)
		}
	}
	// An open bidi stream across the border...
	md = metadata.Pairs("sild-client", fiClient.String(), "sild-target", bizreg.String())
	bidi, err := client.FullDuplexCall(metadata.NewOutgoingContext(ctx, md))
	if err != nil {
		t.Fatal(err)
	}
	if err := bidi.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("z")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := bidi.Recv(); err != nil {
		t.Fatalf("bidi across the border: %v", err)
	}
	setSuspended(true)
	// ...is closed when the link is suspended.
	if _, err := bidi.Recv(); rpcerr.Reason(err) != rpcerr.ReasonFederationInactive {
		t.Fatalf("open stream after suspension: %v (reason %q)", err, rpcerr.Reason(err))
	}
	n := 0
	registrytest.WaitFor(t, 20*time.Second, "calls refused after suspension", func() bool {
		n++
		return rpcerr.Reason(call(bizreg, "fi-s"+string(rune('a'+n%26))+time.Now().Format("150405.000000"))) == rpcerr.ReasonFederationInactive
	})
	setSuspended(false)
	registrytest.WaitFor(t, 20*time.Second, "calls work after resumption", func() bool {
		return call(bizreg, "fi-r"+time.Now().Format("150405.000000")) == nil
	})
}
