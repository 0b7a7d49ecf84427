package exchange

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/pki"
)

// signingKey is a message-signing key with its certificate, as a join or a
// renewal gives a node.
type signingKey struct {
	hash string
	use  func() // makes the node's signer sign with it
}

// issueSigningKey certifies a new signing key for n by ca, valid for ttl
// from issued.
func issueSigningKey(t *testing.T, ca *pki.CA, n *testNode, issued time.Time, ttl time.Duration) signingKey {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue(pki.KindSigning, key.Public(), n.spiffe, ttl, issued)
	if err != nil {
		t.Fatal(err)
	}
	kh, err := pki.KeyHash(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return signingKey{hash: kh, use: func() {
		if err := n.signer.SetIdentity(key, []*x509.Certificate{cert}); err != nil {
			t.Fatal(err)
		}
	}}
}

// TestSignatureKeysAcrossRenewal is the attack table of the signing keys a
// node accepts from a peer that renews: a call starts under one
// configuration, then the peer signs the end of the call with some key
// while the receiving node holds some current configuration. The keys a
// configuration lists for the peer (its signing key and the one its last
// renewal replaced) are accepted, in the configuration the call started
// with or in the current one; nothing else is, in particular not the key
// of a peer the current configuration revoked, re-registered or dropped,
// nor a key whose certificate expired or does not chain to the ecosystem's
// roots.
func TestSignatureKeysAcrossRenewal(t *testing.T) {
	var logs logBuffer
	m := newMeshWith(t, false, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	now := time.Now()
	b1 := issueSigningKey(t, m.ca, m.b, now.Add(-time.Minute), time.Hour)
	b2 := issueSigningKey(t, m.ca, m.b, now.Add(-time.Minute), time.Hour)
	b3 := issueSigningKey(t, m.ca, m.b, now.Add(-time.Minute), time.Hour)
	bExpired := issueSigningKey(t, m.ca, m.b, now.Add(-3*time.Hour), time.Hour)
	a1 := issueSigningKey(t, m.ca, m.a, now.Add(-time.Minute), time.Hour)
	a2 := issueSigningKey(t, m.ca, m.a, now.Add(-time.Minute), time.Hour)
	otherCA, err := pki.NewCA(td, "not the ecosystem's root", time.Hour, now.Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	bForeign := issueSigningKey(t, otherCA, m.b, now.Add(-time.Minute), time.Hour)

	// keys is a configuration listing the signing keys of A (Nodes[0]) and
	// B (Nodes[1]); editA and editB, if set, change their records further.
	type keys struct {
		a, aPrev, b, bPrev signingKey
		editA, editB       func(*registryv1.Node)
		dropB              bool
	}
	config := func(k keys) *registryv1.GlobalConfig {
		gc := proto.Clone(m.gc).(*registryv1.GlobalConfig)
		gc.Nodes[0].SigningKeyHash, gc.Nodes[0].PreviousSigningKeyHash = k.a.hash, k.aPrev.hash
		gc.Nodes[1].SigningKeyHash, gc.Nodes[1].PreviousSigningKeyHash = k.b.hash, k.bPrev.hash
		for i, edit := range []func(*registryv1.Node){k.editA, k.editB} {
			if edit != nil {
				edit(gc.Nodes[i])
			}
		}
		if k.dropB {
			gc.Nodes = append(gc.Nodes[:1], gc.Nodes[2:]...)
		}
		return gc
	}
	const unregistered = "not a registered signing key"
	revoke := func(n *registryv1.Node) { n.State = registryv1.NodeState_NODE_STATE_REVOKED }
	start := keys{a: a1, b: b1}
	bRenewed := keys{a: a1, b: b2, bPrev: b1}
	aRenewed := keys{a: a2, aPrev: a1, b: b1}

	for _, tc := range []struct {
		name     string
		start    keys       // both sides' configuration when the call starts
		sign     signingKey // what the renewing side signs the end of the call with
		consumer bool       // the consumer (A) renews, else the provider (B)
		current  keys       // the receiving side's configuration at the end
		refusal  string     // the component refusing, "" if the call succeeds
		why      string     // the cause it logs
	}{
		{name: "provider renewed during the call", start: start, sign: b2, current: bRenewed},
		{name: "consumer renewed during the call", start: start, sign: a2, consumer: true, current: aRenewed},
		{name: "provider still on the key its renewal replaced", start: bRenewed, sign: b1, current: bRenewed},
		{name: "consumer still on the key its renewal replaced", start: aRenewed, sign: a1, consumer: true, current: aRenewed},
		{name: "new key in no configuration yet", start: start, sign: b2, current: start, refusal: ComponentConsumer, why: unregistered},
		{name: "consumer's new key in no configuration yet", start: start, sign: a2, consumer: true, current: start, refusal: ComponentProvider, why: unregistered},
		{name: "key replaced twice", start: keys{a: a1, b: b3, bPrev: b2}, sign: b1, current: keys{a: a1, b: b3, bPrev: b2}, refusal: ComponentConsumer, why: unregistered},
		{name: "renewed, then revoked", start: start, sign: b2, refusal: ComponentConsumer, why: unregistered,
			current: keys{a: a1, b: b2, bPrev: b1, editB: revoke}},
		{name: "consumer renewed, then revoked", start: start, sign: a2, consumer: true, refusal: ComponentProvider, why: unregistered,
			current: keys{a: a2, aPrev: a1, b: b1, editA: revoke}},
		{name: "renewed, then removed", start: start, sign: b2, refusal: ComponentConsumer, why: unregistered,
			current: keys{a: a1, dropB: true}},
		{name: "another node under the identifier now", start: start, sign: b2, refusal: ComponentConsumer, why: unregistered,
			current: keys{a: a1, b: b2, editB: func(n *registryv1.Node) {
				n.SpiffeId = spiffeid.RequireFromPath(td, "/node/COM/70000311/other").String()
			}}},
		{name: "previous key's certificate expired", start: keys{a: a1, b: b2, bPrev: bExpired}, sign: bExpired,
			current: keys{a: a1, b: b2, bPrev: bExpired}, refusal: ComponentConsumer, why: "certificate has expired"},
		{name: "key certified by another CA", start: start, sign: bForeign, refusal: ComponentConsumer, why: "unknown authority",
			current: keys{a: a1, b: bForeign, bPrev: b1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a1.use()
			b1.use()
			m.setTopo(t, &m.topoA, config(tc.start))
			m.setTopo(t, &m.topoB, config(tc.start))
			id := "renewal-" + tc.name
			stream := m.echoedStream(t, id)
			// Mid-call: one side renews, the other's configuration moves on.
			tc.sign.use()
			current := config(tc.current)
			if tc.consumer {
				m.setTopo(t, &m.topoB, current)
			} else {
				m.setTopo(t, &m.topoA, current)
			}
			if err := stream.CloseSend(); err != nil {
				t.Fatal(err)
			}
			_, err := stream.Recv()
			logged := logs.take()
			if tc.refusal == "" {
				if err != io.EOF {
					t.Fatalf("call ended with %v (reason %q), want success", err, rpcerr.Reason(err))
				}
			} else {
				wantRefusal(t, err, codes.Unauthenticated, rpcerr.ReasonSignatureInvalid, tc.refusal)
				if !strings.Contains(logged, tc.why) {
					t.Fatalf("refused for another reason than %q: %s", tc.why, logged)
				}
			}
			if !tc.consumer {
				rec := m.recA.find(id)
				if rec == nil {
					t.Fatal("consumer recorded nothing")
				}
				if signed := rec.GetProviderSignature() != nil; signed != (tc.refusal == "") {
					t.Fatalf("consumer's record keeps the provider's signature: %v, want %v", signed, tc.refusal == "")
				}
				if signed := rec.GetProviderSignature(); signed != nil && signed.GetKeyId() != tc.sign.hash {
					t.Fatalf("provider signed with %s, want %s", signed.GetKeyId(), tc.sign.hash)
				}
			}
		})
	}
}

// logBuffer collects what a logger writes, for concurrent writers.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// take returns what was written since the last take.
func (b *logBuffer) take() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	b.buf.Reset()
	return s
}
