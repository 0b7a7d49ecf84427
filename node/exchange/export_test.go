package exchange

import (
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/access"
)

// changes stands in for the node's configuration watch: fire closes the
// channel Changed last returned.
type changes struct {
	mu sync.Mutex
	ch chan struct{}
}

func (c *changes) changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch == nil {
		c.ch = make(chan struct{})
	}
	return c.ch
}

func (c *changes) fire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch != nil {
		close(c.ch)
	}
	c.ch = make(chan struct{})
}

// The provider's node serves a node of a federated ecosystem only the
// subsystems its own configuration says are exported to that ecosystem,
// whatever access rights were granted and whatever the caller's own
// configuration claims; an export removed mid-call cuts the call.
func TestProviderServesForeignNodesOnlyExportedTargets(t *testing.T) {
	var ch changes
	m := newMeshWith(t, false, func(c *Config) { c.Changed = ch.changed })
	fiTD := spiffeid.RequireTrustDomainFromString("fi.sild.test")
	fi, fiCA := foreignNode(t, m, fiTD)
	fiSub := mustSub("FI/COM/70000312/records")
	if _, _, err := m.store.Grant(access.Right{Client: access.SubsystemClient(fiSub), Service: ident.Service{Subsystem: registry, Name: testService}}); err != nil {
		t.Fatal(err)
	}
	config := func(exported ...ident.Subsystem) {
		gc := proto.Clone(m.gc).(*registryv1.GlobalConfig)
		f := &registryv1.FederatedInstance{
			Instance: "FI", TrustDomain: fiTD.Name(), TrustBundle: [][]byte{fiCA.Cert.Raw}, Active: true,
			Nodes: []*registryv1.Node{{Id: fi.id.Proto(), Address: "127.0.0.1:1",
				State: registryv1.NodeState_NODE_STATE_ACTIVE, SpiffeId: fi.spiffe.String()}},
			Subsystems: []*registryv1.Subsystem{{Id: fiSub.Proto(), Nodes: []*identv1.NodeId{fi.id.Proto()}}},
		}
		for _, s := range exported {
			f.Exported = append(f.Exported, s.Proto())
		}
		gc.Federated = []*registryv1.FederatedInstance{f}
		m.setTopo(t, &m.topoB, gc)
		ch.fire()
	}
	cc := m.dialAs(t, fi)
	call := func(id, body string) error {
		return rawCallOn(t, cc, fiSub, registry, id, [][]byte{unaryFrame(t, body)}, sealWith(t, fi, nil))
	}

	config(archive) // another subsystem is exported, not the target
	wantRefusal(t, call("exp-1", "x"), codes.NotFound, rpcerr.ReasonUnknownTarget, ComponentProvider)
	if n := m.be.calls.Load(); n != 0 {
		t.Fatalf("backend called %d times for a target not exported", n)
	}
	if r := m.recB.find("exp-1"); r == nil || r.GetProviderSignature() == nil {
		t.Fatalf("the refusal was not signed and recorded: %v", r)
	}

	config(registry)
	if err := call("exp-2", "x"); err != nil {
		t.Fatalf("exported target: %v", err)
	}

	// The export is removed while a call waits in the backend.
	done := make(chan error, 1)
	go func() { done <- call("exp-3", "block") }()
	deadline := time.Now().Add(30 * time.Second)
	for m.be.calls.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the call never reached the backend")
		}
		time.Sleep(5 * time.Millisecond)
	}
	config()
	select {
	case err := <-done:
		wantRefusal(t, err, codes.NotFound, rpcerr.ReasonUnknownTarget, ComponentProvider)
	case <-time.After(30 * time.Second):
		t.Fatal("the call went on after its target's export was removed")
	}
	select {
	case <-m.be.cancelled:
	case <-time.After(30 * time.Second):
		t.Fatal("the backend call was not cancelled")
	}
}
