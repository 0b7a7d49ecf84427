package registry_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry"
	"github.com/sildmesh/sild/registry/registrytest"
)

// ecosystem starts a one-server registry for instance with federation on.
func ecosystem(t *testing.T, instance, td string) *registrytest.Cluster {
	return registrytest.StartWith(t, 1, func(c *registry.Config) {
		c.Instance, c.TrustDomain = instance, td
		c.FederationAddr = "127.0.0.1:0"
		c.FederationRefresh = 300 * time.Millisecond
	})
}

func linkTo(peer *registrytest.Cluster, instance, td string) *registryv1.AddFederationLinkRequest {
	return &registryv1.AddFederationLinkRequest{
		Instance: instance, TrustDomain: td,
		BundleEndpointUrl: peer.Servers[0].Srv.BundleEndpointURL(),
		EndpointSpiffeId:  "spiffe://" + td + "/registry/r1",
		RootFingerprint:   pki.Fingerprint(peer.Roots[0]),
	}
}

func linkState(t *testing.T, c *registrytest.Cluster, ctx context.Context, instance string) *registryv1.FederationLink {
	t.Helper()
	resp, err := c.AdminClient(c.Servers[0]).ListFederationLinks(c.Ctx(ctx), &registryv1.ListFederationLinksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range resp.GetLinks() {
		if l.GetInstance() == instance {
			return l
		}
	}
	return nil
}

func waitLink(t *testing.T, c *registrytest.Cluster, ctx context.Context, instance string, want registryv1.LinkState) *registryv1.FederationLink {
	t.Helper()
	var l *registryv1.FederationLink
	registrytest.WaitFor(t, 20*time.Second, instance+" link "+want.String(), func() bool {
		l = linkState(t, c, ctx, instance)
		return l.GetState() == want
	})
	return l
}

func federated(t *testing.T, c *registrytest.Cluster, ctx context.Context) map[string]*registryv1.FederatedInstance {
	t.Helper()
	resp, err := c.AdminClient(c.Servers[0]).GetGlobalConfig(c.Ctx(ctx), &registryv1.GetGlobalConfigRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*registryv1.FederatedInstance{}
	for _, f := range resp.GetConfig().GetFederated() {
		out[f.GetInstance()] = f
	}
	return out
}

func TestFederationLinkExportSuspend(t *testing.T) {
	ee := ecosystem(t, "EE", "ee.sild.test")
	fi := ecosystem(t, "FI", "fi.sild.test")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	eeAdm, fiAdm := ee.AdminClient(ee.Servers[0]), fi.AdminClient(fi.Servers[0])

	// EE links FI first: the link waits for FI to link back.
	if _, err := eeAdm.AddFederationLink(ee.Ctx(ctx), linkTo(fi, "FI", "fi.sild.test")); err != nil {
		t.Fatal(err)
	}
	waitLink(t, ee, ctx, "FI", registryv1.LinkState_LINK_STATE_WAITING_FOR_PEER)
	if len(federated(t, ee, ctx)) != 0 {
		t.Fatal("a one-sided link is in the configuration")
	}
	if _, err := fiAdm.AddFederationLink(fi.Ctx(ctx), linkTo(ee, "EE", "ee.sild.test")); err != nil {
		t.Fatal(err)
	}
	waitLink(t, fi, ctx, "EE", registryv1.LinkState_LINK_STATE_ACTIVE)
	waitLink(t, ee, ctx, "FI", registryv1.LinkState_LINK_STATE_ACTIVE)

	// EE exports its business registry to FI.
	member := &identv1.MemberId{Instance: "EE", MemberClass: "GOV", MemberCode: "70000310"}
	sub := &identv1.SubsystemId{Member: member, SubsystemCode: "business-registry"}
	for _, call := range []func() error{
		func() error {
			_, err := eeAdm.AddMember(ee.Ctx(ctx), &registryv1.AddMemberRequest{Id: member})
			return err
		},
		func() error {
			_, err := eeAdm.AddSubsystem(ee.Ctx(ctx), &registryv1.AddSubsystemRequest{Id: sub})
			return err
		},
		func() error {
			_, err := eeAdm.AddExport(ee.Ctx(ctx), &registryv1.AddExportRequest{Subsystem: sub, ToInstance: "FI"})
			return err
		},
	} {
		if err := call(); err != nil {
			t.Fatal(err)
		}
	}
	_, err := eeAdm.AddExport(ee.Ctx(ctx), &registryv1.AddExportRequest{Subsystem: sub, ToInstance: "LV"})
	if rpcerr.Reason(err) != rpcerr.ReasonNotFound {
		t.Fatalf("export to an unlinked ecosystem: %v", err)
	}
	registrytest.WaitFor(t, 20*time.Second, "FI sees EE's subsystem and roots", func() bool {
		f := federated(t, fi, ctx)["EE"]
		return f != nil && len(f.GetSubsystems()) == 1 && len(f.GetTrustBundle()) == 1 && f.GetTrustDomain() == "ee.sild.test"
	})
	// EE's own configuration tells EE's nodes what FI may call here.
	registrytest.WaitFor(t, 10*time.Second, "EE's configuration lists the export to FI", func() bool {
		ex := federated(t, ee, ctx)["FI"].GetExported()
		return len(ex) == 1 && proto.Equal(ex[0], sub)
	})
	if _, err := eeAdm.RemoveExport(ee.Ctx(ctx), &registryv1.RemoveExportRequest{Subsystem: sub, ToInstance: "FI"}); err != nil {
		t.Fatal(err)
	}
	registrytest.WaitFor(t, 10*time.Second, "the removed export gone from EE's configuration", func() bool {
		return len(federated(t, ee, ctx)["FI"].GetExported()) == 0
	})

	// Suspending on EE drops FI from EE's configuration at once, and FI
	// notices at its next check.
	if _, err := eeAdm.SetFederationLinkSuspended(ee.Ctx(ctx), &registryv1.SetFederationLinkSuspendedRequest{Instance: "FI", Suspended: true}); err != nil {
		t.Fatal(err)
	}
	if len(federated(t, ee, ctx)) != 0 {
		t.Fatal("suspended link still in EE's configuration")
	}
	waitLink(t, fi, ctx, "EE", registryv1.LinkState_LINK_STATE_WAITING_FOR_PEER)
	registrytest.WaitFor(t, 10*time.Second, "FI drops EE", func() bool { return len(federated(t, fi, ctx)) == 0 })
	// Resumed, both come back.
	if _, err := eeAdm.SetFederationLinkSuspended(ee.Ctx(ctx), &registryv1.SetFederationLinkSuspendedRequest{Instance: "FI", Suspended: false}); err != nil {
		t.Fatal(err)
	}
	waitLink(t, ee, ctx, "FI", registryv1.LinkState_LINK_STATE_ACTIVE)
	waitLink(t, fi, ctx, "EE", registryv1.LinkState_LINK_STATE_ACTIVE)
	// Removed, gone from both.
	if _, err := fiAdm.RemoveFederationLink(fi.Ctx(ctx), &registryv1.RemoveFederationLinkRequest{Instance: "EE"}); err != nil {
		t.Fatal(err)
	}
	waitLink(t, ee, ctx, "FI", registryv1.LinkState_LINK_STATE_WAITING_FOR_PEER)
}

func TestFederationLinkRefusesWrongPeer(t *testing.T) {
	ee := ecosystem(t, "EE", "ee.sild.test")
	fi := ecosystem(t, "FI", "fi.sild.test")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	eeAdm := ee.AdminClient(ee.Servers[0])

	bad := linkTo(fi, "FI", "fi.sild.test")
	bad.RootFingerprint = pki.Fingerprint(ee.Roots[0]) // not FI's root
	if _, err := eeAdm.AddFederationLink(ee.Ctx(ctx), bad); err != nil {
		t.Fatal(err)
	}
	l := waitLink(t, ee, ctx, "FI", registryv1.LinkState_LINK_STATE_FAILED)
	if !strings.Contains(l.GetStatus(), "fingerprint") {
		t.Fatalf("status %q does not name the fingerprint", l.GetStatus())
	}
	// A bundle endpoint that serves another trust domain's bundle.
	lv := linkTo(fi, "LV", "lv.sild.test")
	lv.EndpointSpiffeId = "spiffe://lv.sild.test/registry/r1"
	if _, err := eeAdm.AddFederationLink(ee.Ctx(ctx), lv); err != nil {
		t.Fatal(err)
	}
	l = waitLink(t, ee, ctx, "LV", registryv1.LinkState_LINK_STATE_FAILED)
	if !strings.Contains(l.GetStatus(), "trust domain") {
		t.Fatalf("status %q does not name the trust domain", l.GetStatus())
	}
	// Bad link requests are refused up front.
	for name, mutate := range map[string]func(*registryv1.AddFederationLinkRequest){
		"self":        func(r *registryv1.AddFederationLinkRequest) { r.Instance = "EE" },
		"http url":    func(r *registryv1.AddFederationLinkRequest) { r.BundleEndpointUrl = "http://x" },
		"endpoint id": func(r *registryv1.AddFederationLinkRequest) { r.EndpointSpiffeId = "spiffe://ee.sild.test/registry/r1" },
		"fingerprint": func(r *registryv1.AddFederationLinkRequest) { r.RootFingerprint = "md5:00" },
	} {
		r := linkTo(fi, "SE", "se.sild.test")
		r.EndpointSpiffeId = "spiffe://se.sild.test/registry/r1"
		mutate(r)
		if _, err := eeAdm.AddFederationLink(ee.Ctx(ctx), r); rpcerr.Reason(err) != rpcerr.ReasonInvalidArgument {
			t.Errorf("%s: %v", name, err)
		}
	}
	if len(federated(t, ee, ctx)) != 0 {
		t.Fatal("a failed link is in the configuration")
	}
}

// TestFederationFollowsPeerRefreshHint: a registry that re-checks its links
// rarely still follows a peer's root rotation as soon as the peer's bundle
// asks (its refresh hint), so new roots do not wait for the slow side.
func TestFederationFollowsPeerRefreshHint(t *testing.T) {
	ee := registrytest.StartWith(t, 1, func(c *registry.Config) {
		c.Instance, c.TrustDomain = "EE", "ee.sild.test"
		c.FederationAddr = "127.0.0.1:0"
		c.FederationRefresh = time.Hour // EE's own schedule: far beyond the test
	})
	fi := ecosystem(t, "FI", "fi.sild.test") // FI's bundle asks for 300ms
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	eeAdm, fiAdm := ee.AdminClient(ee.Servers[0]), fi.AdminClient(fi.Servers[0])
	// FI links first, so EE's link is active from its first fetch.
	if _, err := fiAdm.AddFederationLink(fi.Ctx(ctx), linkTo(ee, "EE", "ee.sild.test")); err != nil {
		t.Fatal(err)
	}
	if _, err := eeAdm.AddFederationLink(ee.Ctx(ctx), linkTo(fi, "FI", "fi.sild.test")); err != nil {
		t.Fatal(err)
	}
	waitLink(t, ee, ctx, "FI", registryv1.LinkState_LINK_STATE_ACTIVE)
	waitLink(t, fi, ctx, "EE", registryv1.LinkState_LINK_STATE_ACTIVE)
	if _, err := fiAdm.RotateCA(fi.Ctx(ctx), &registryv1.RotateCARequest{Phase: registryv1.CARotationPhase_CA_ROTATION_PHASE_PREPARE}); err != nil {
		t.Fatal(err)
	}
	registrytest.WaitFor(t, 20*time.Second, "EE holds FI's new root", func() bool {
		return len(linkState(t, ee, ctx, "FI").GetPeerBundle()) == 2 && len(federated(t, ee, ctx)["FI"].GetTrustBundle()) == 2
	})
}
