package registry_test

import (
	"context"
	"testing"
	"time"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry/gconf"
	"github.com/sildmesh/sild/registry/registrytest"
)

// TestRenewalKeepsThePreviousSigningKey: the configuration lists the
// signing key a renewal replaced next to the new one, so that what the node
// signed before it switched keys still verifies; the next renewal drops it,
// and a new join or the node's removal clears it.
func TestRenewalKeepsThePreviousSigningKey(t *testing.T) {
	c := registrytest.Start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := c.AdminClient(c.Servers[0])
	if _, err := admin.AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: memberID("70000310")}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AddNode(c.Ctx(ctx), &registryv1.AddNodeRequest{Id: nodeID}); err != nil {
		t.Fatal(err)
	}
	anon := registryv1.NewNodeServiceClient(nodeConn(t, c, c.Servers[0], nil, nil))
	join := func() (nodeKeys, *registryv1.JoinResponse) {
		t.Helper()
		tok, err := admin.CreateJoinToken(c.Ctx(ctx), &registryv1.CreateJoinTokenRequest{Node: nodeID})
		if err != nil {
			t.Fatal(err)
		}
		k := newNodeKeys(t)
		resp, err := anon.Join(ctx, &registryv1.JoinRequest{Token: tok.GetToken(), Node: nodeID, SvidCsr: k.svidCSR, SigningCsr: k.signCSR, Address: "127.0.0.1:7443"})
		if err != nil {
			t.Fatalf("join: %v", err)
		}
		return k, resp
	}
	hash := func(k nodeKeys) string {
		t.Helper()
		h, err := pki.KeyHash(k.sign.Public())
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	var nodes registryv1.NodeServiceClient // as the node, once joined
	// record returns the node's record in the registry's state, once the
	// published configuration lists the same keys.
	record := func() *registryv1.Node {
		t.Helper()
		got, err := admin.ListNodes(c.Ctx(ctx), &registryv1.ListNodesRequest{})
		if err != nil || len(got.GetNodes()) != 1 {
			t.Fatalf("list nodes: %v, %v", got, err)
		}
		rec := got.GetNodes()[0]
		registrytest.WaitFor(t, 10*time.Second, "configuration with the node's keys", func() bool {
			resp, err := nodes.GetConfig(ctx, &registryv1.GetConfigRequest{})
			if err != nil {
				return false
			}
			cfg, err := gconf.Verify(resp.GetConfig(), c.Roots, time.Now())
			if err != nil || len(cfg.GetNodes()) != 1 {
				return false
			}
			n := cfg.GetNodes()[0]
			return n.GetSigningKeyHash() == rec.GetSigningKeyHash() && n.GetPreviousSigningKeyHash() == rec.GetPreviousSigningKeyHash() &&
				n.GetState() == rec.GetState()
		})
		return rec
	}
	want := func(what string, rec *registryv1.Node, current, previous string) {
		t.Helper()
		if rec.GetSigningKeyHash() != current || rec.GetPreviousSigningKeyHash() != previous {
			t.Fatalf("%s: keys %q, previous %q; want %q, previous %q", what, rec.GetSigningKeyHash(), rec.GetPreviousSigningKeyHash(), current, previous)
		}
	}

	k0, resp := join()
	nodes = registryv1.NewNodeServiceClient(nodeConn(t, c, c.Servers[0], k0.svid, resp.GetCertificates().GetSvidChain()))
	want("after join", record(), hash(k0), "")
	renew := func() nodeKeys {
		t.Helper()
		k := newNodeKeys(t)
		if _, err := nodes.Renew(ctx, &registryv1.RenewRequest{SvidCsr: k.svidCSR, SigningCsr: k.signCSR}); err != nil {
			t.Fatalf("renew: %v", err)
		}
		return k
	}
	k1 := renew()
	want("after a renewal", record(), hash(k1), hash(k0))
	k2 := renew()
	want("after a second renewal", record(), hash(k2), hash(k1))

	k3, _ := join() // e.g. after the node lost its data directory
	want("after a new join", record(), hash(k3), "")

	if _, err := admin.RemoveNode(c.Ctx(ctx), &registryv1.RemoveNodeRequest{Id: nodeID}); err != nil {
		t.Fatal(err)
	}
	rec := record()
	if rec.GetState() != registryv1.NodeState_NODE_STATE_REVOKED || rec.GetPreviousSigningKeyHash() != "" {
		t.Fatalf("removed node: %v", rec)
	}
}
