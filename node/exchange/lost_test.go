package exchange

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/internal/rpcerr"
)

// cutProxy forwards TCP connections to target until cut closes them all,
// as a network failure would.
type cutProxy struct {
	lis    net.Listener
	mu     sync.Mutex
	target string
	conns  []net.Conn
}

func newCutProxy(t *testing.T) *cutProxy {
	p := &cutProxy{lis: listen(t)}
	t.Cleanup(func() { _ = p.lis.Close(); p.cut() })
	go func() {
		for {
			c, err := p.lis.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				p.mu.Unlock()
				_ = c.Close()
				continue
			}
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); _ = u.Close() }()
			go func() { _, _ = io.Copy(c, u); _ = c.Close() }()
		}
	}()
	return p
}

func (p *cutProxy) addr() string { return p.lis.Addr().String() }

func (p *cutProxy) to(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // a reset, not a clean close
		}
		_ = c.Close()
	}
	p.conns = nil
}

// lostMidCall starts a bidirectional stream through the mesh, has one
// message echoed, cuts p's connections and returns the stream's error.
func lostMidCall(t *testing.T, m *mesh, p *cutProxy, id string) error {
	t.Helper()
	s := m.echoedStream(t, id)
	p.cut()
	for {
		if _, err := s.Recv(); err != nil {
			return err
		}
	}
}

// wantNoInternalText fails if err's message tells of the network.
func wantNoInternalText(t *testing.T, err error) {
	t.Helper()
	for _, s := range []string{"127.0.0.1", "tcp", "read", "reset", "transport", "connection error"} {
		if strings.Contains(err.Error(), s) {
			t.Fatalf("error carries internal text %q: %v", s, err)
		}
	}
}

// The connection to the provider's node breaks mid-call: the member system
// gets TARGET_UNAVAILABLE, not grpc's text about this network's sockets.
func TestProviderNodeLostMidCall(t *testing.T) {
	m := newMesh(t)
	p := newCutProxy(t)
	p.to(m.bAddr)
	gc := proto.Clone(m.gc).(*registryv1.GlobalConfig)
	for _, n := range gc.Nodes {
		if n.GetAddress() == m.bAddr {
			n.Address = p.addr()
		}
	}
	m.setTopo(t, &m.topoA, gc)
	err := lostMidCall(t, m, p, "lost-node")
	wantRefusal(t, err, codes.Unavailable, rpcerr.ReasonTargetUnavailable, ComponentConsumer)
	wantNoInternalText(t, err)
}

// The connection to the backend breaks mid-call: the provider's node
// answers TARGET_UNAVAILABLE, signed, and tells the other organisation
// nothing of its network.
func TestBackendLostMidCall(t *testing.T) {
	p := newCutProxy(t)
	m := newMeshWith(t, false, func(c *Config) {
		if c.Backends != nil {
			c.Backends[registry] = p.addr()
		}
	})
	p.to(m.beAddr)
	err := lostMidCall(t, m, p, "lost-backend")
	wantRefusal(t, err, codes.Unavailable, rpcerr.ReasonTargetUnavailable, ComponentProvider)
	wantNoInternalText(t, err)
	if rec := m.recA.find("lost-backend"); rec.GetProviderSignature() == nil {
		t.Fatalf("the provider's answer was not signed and recorded: %v", rec)
	}
}
