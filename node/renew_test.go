package node_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/ledger"
	"github.com/sildmesh/sild/node"
	"github.com/sildmesh/sild/registry"
	"github.com/sildmesh/sild/registry/registrytest"
)

// renewEvery makes nodes renew their identity about every d (the registry
// issues for 24 h).
func renewEvery(d time.Duration) func(*node.Config) {
	return func(c *node.Config) { c.RenewBefore = 24*time.Hour - d }
}

// signingKeys makes a call with message id msgID and returns the keys the
// consumer node (A) and the provider node (B) signed it with, from A's
// ledger record.
func (m *twoNodes) signingKeys(t *testing.T, ctx context.Context, msgID string) (a, b string, err error) {
	t.Helper()
	if _, err := m.call(t, ctx, msgID); err != nil {
		return "", "", err
	}
	recs, err := m.a.n.Ledger().ByMessageID(msgID)
	if err != nil || len(recs) != 1 {
		t.Fatalf("A's record of %s: %v, %v", msgID, recs, err)
	}
	r := recs[0].Record
	return r.GetConsumerSignature().GetKeyId(), r.GetProviderSignature().GetKeyId(), nil
}

// A bidirectional stream outlives two renewals of both nodes' identities
// (SVIDs and signing keys): it ends normally, with both nodes' signatures
// made with keys that the configurations of its start did not know. An
// exchange signed before the renewals still verifies offline.
func TestStreamAcrossRenewals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	m := startTwoNodes(t, ctx, nil, renewEvery(2*time.Second))
	m.grant(t, ctx)
	registrytest.WaitFor(t, 10*time.Second, "grant in effect", func() bool { _, err := m.call(t, ctx, ""); return err == nil })
	keyA, keyB, err := m.signingKeys(t, ctx, "before-renewals")
	if err != nil {
		t.Fatal(err)
	}

	md := metadata.Pairs("sild-client", m.licensing.String(), "sild-target", m.bizreg.String(), "sild-message-id", "long-stream")
	stream, err := testpb.NewTestServiceClient(dial(t, m.a.n.ConsumerAddr())).FullDuplexCall(metadata.NewOutgoingContext(ctx, md))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip := func(i int) {
		t.Helper()
		body := []byte(fmt.Sprint("message ", i))
		if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		resp, err := stream.Recv()
		if err != nil || !bytes.Equal(resp.GetPayload().GetBody(), body) {
			t.Fatalf("answer %d: %v, %v (reason %q)", i, resp, err, rpcerr.Reason(err))
		}
	}
	// Until both nodes have signed with two newer keys.
	seenA, seenB := map[string]bool{keyA: true}, map[string]bool{keyB: true}
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; len(seenA) < 3 || len(seenB) < 3; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("keys used within a minute: A %d, B %d; want 3 each", len(seenA), len(seenB))
		}
		roundTrip(i)
		a, b, err := m.signingKeys(t, ctx, fmt.Sprint("probe-", i))
		if err != nil {
			t.Fatalf("call during the renewals: %v (reason %q)", err, rpcerr.Reason(err))
		}
		seenA[a], seenB[b] = true, true
		time.Sleep(100 * time.Millisecond) // pace the probes
	}
	roundTrip(-1)
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("stream across renewals ended with %v (reason %q)", err, rpcerr.Reason(err))
	}
	for _, r := range []*running{m.a, m.b} {
		recs, err := r.n.Ledger().ByMessageID("long-stream")
		if err != nil || len(recs) != 1 {
			t.Fatalf("%s's record of the stream: %v, %v", r.n.ID(), recs, err)
		}
		rec := recs[0].Record
		cons, prov := rec.GetConsumerSignature().GetKeyId(), rec.GetProviderSignature().GetKeyId()
		if rec.GetStatusCode() != 0 || cons == "" || prov == "" || cons == keyA || prov == keyB {
			t.Fatalf("%s's record of the stream: status %d, signed by %q and %q (the keys at its start: %q, %q)",
				r.n.ID(), rec.GetStatusCode(), cons, prov, keyA, keyB)
		}
	}

	// Evidence signed with the keys of before verifies offline.
	registrytest.WaitFor(t, 30*time.Second, "evidence of before the renewals, time-stamped, verifies", func() bool {
		b, err := m.a.n.Ledger().Export("before-renewals")
		if err != nil || len(b.GetCheckpoint().GetTimestampToken()) == 0 {
			return false
		}
		data, err := proto.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		v, err := ledger.VerifyBundle(data, m.c.Roots)
		if err != nil {
			t.Fatalf("evidence of before the renewals: %v", err)
		}
		return v.RecordSignatures == 2
	})
}

// Many concurrent unary calls while both nodes renew every two seconds:
// every one succeeds.
func TestUnaryCallsDuringRenewals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	m := startTwoNodes(t, ctx, nil, renewEvery(2*time.Second))
	m.grant(t, ctx)
	registrytest.WaitFor(t, 10*time.Second, "grant in effect", func() bool { _, err := m.call(t, ctx, ""); return err == nil })

	client := testpb.NewTestServiceClient(dial(t, m.a.n.ConsumerAddr()))
	call := func(id string) error {
		md := metadata.Pairs("sild-client", m.licensing.String(), "sild-target", m.bizreg.String(), "sild-message-id", id)
		_, err := client.UnaryCall(metadata.NewOutgoingContext(ctx, md), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(id)}})
		return err
	}
	var calls, failed atomic.Int64
	var mu sync.Mutex
	var firstErr error
	keysA, keysB := map[string]bool{}, map[string]bool{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				calls.Add(1)
				id := fmt.Sprintf("unary-%d-%d", w, i)
				var err error
				if i%20 == 0 {
					var a, b string
					if a, b, err = m.signingKeys(t, ctx, id); err == nil {
						mu.Lock()
						keysA[a], keysB[b] = true, true
						mu.Unlock()
					}
				} else {
					err = call(id)
				}
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("call %s: %w (reason %q)", id, err, rpcerr.Reason(err))
					}
					mu.Unlock()
				}
			}
		})
	}
	// Until both nodes have signed with three keys each (two renewals).
	registrytest.WaitFor(t, 60*time.Second, "three signing keys of each node in use", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(keysA) >= 3 && len(keysB) >= 3 || firstErr != nil
	})
	close(stop)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d calls failed during renewals; first: %v", n, calls.Load(), firstErr)
	}
	t.Logf("%d calls, signing keys: A %d, B %d", calls.Load(), len(keysA), len(keysB))
}

// syncBuffer is a bytes.Buffer for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// renew_before at or above the lifetime of the certificates the registry
// issues would renew at once, over and over: the node renews at half-life
// instead and says why.
func TestRenewBeforeBeyondLifetime(t *testing.T) {
	c := registrytest.StartWith(t, 1, func(cfg *registry.Config) { cfg.NodeSVIDTTL = time.Minute })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	self, _ := ident.ParseNode("EE/GOV/70000310/ss1")
	dir := t.TempDir()
	cfg := nodeConfig(c, self.String(), dir, c.NodeToken(ctx, self))
	cfg.RenewBefore = 2 * time.Minute
	var logs syncBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	r := startNode(t, cfg)
	registrytest.WaitFor(t, 30*time.Second, "node ready", func() bool { code, _ := readyz(r.n); return code == 200 })
	first, err := os.ReadFile(filepath.Join(dir, "svid.crt"))
	if err != nil {
		t.Fatal(err)
	}
	// Half-life is 30 s away; a node renewing in a loop renews hundreds of
	// times a second.
	time.Sleep(time.Second)
	now, err := os.ReadFile(filepath.Join(dir, "svid.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "identity installed"); !bytes.Equal(first, now) || n != 1 {
		t.Fatalf("the node renewed within a second of joining (%d identities installed)", n)
	}
	if !strings.Contains(logs.String(), "renew_before is not shorter than the lifetime") {
		t.Fatalf("no warning about renew_before in the log:\n%s", logs.String())
	}
}

// After a renewal a node goes on signing with its previous key for a
// while, so that the other nodes, which may receive the configuration
// listing its new key a little later, still accept its signatures; the
// configuration lists both keys meanwhile. Then it signs with the new key.
func TestSigningKeySwitchWaitsForTheConfiguration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	m := startTwoNodes(t, ctx, nil, renewEvery(4*time.Second)) // a grace of 1 s
	m.grant(t, ctx)
	registrytest.WaitFor(t, 10*time.Second, "grant in effect", func() bool { _, err := m.call(t, ctx, ""); return err == nil })
	keyA, _, err := m.signingKeys(t, ctx, "before")
	if err != nil {
		t.Fatal(err)
	}
	self := m.a.n.ID()
	svid, err := os.ReadFile(filepath.Join(m.dirA, "svid.crt"))
	if err != nil {
		t.Fatal(err)
	}
	// The renewal: A stored its new certificates, and its configuration
	// lists the new key, the old one as previous.
	registrytest.WaitFor(t, 30*time.Second, "A's renewal", func() bool {
		rec := m.a.n.Topology().Node(self)
		now, err := os.ReadFile(filepath.Join(m.dirA, "svid.crt"))
		return err == nil && !bytes.Equal(now, svid) && rec.GetSigningKeyHash() != keyA && rec.GetPreviousSigningKeyHash() == keyA
	})
	newKey := m.a.n.Topology().Node(self).GetSigningKeyHash()
	if a, _, err := m.signingKeys(t, ctx, "just after"); err != nil || a != keyA {
		t.Fatalf("just after the renewal A signed with %q (%v), want its previous key %q", a, err, keyA)
	}
	registrytest.WaitFor(t, 10*time.Second, "A signs with its new key", func() bool {
		a, _, err := m.signingKeys(t, ctx, fmt.Sprint("after-", time.Now().UnixNano()))
		if err != nil {
			t.Fatal(err)
		}
		return a == newKey
	})
}
