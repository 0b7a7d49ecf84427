package ledger

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/tsa"
)

// testPKI is an ecosystem: a CA, its time-stamping authority and a node's
// signing identity.
type testPKI struct {
	ca     *pki.CA
	auth   *tsa.Authority
	key    crypto.Signer
	chain  []*x509.Certificate
	stamps atomic.Int64
	// failStamps makes Stamp fail while set.
	failStamps atomic.Bool
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	now := time.Now()
	ca, err := pki.NewCA(td, "EE root", 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	tkey, _ := pki.NewKey()
	tcert, err := ca.Issue(pki.KindTSA, tkey.Public(), spiffeid.RequireFromPath(td, "/registry/tsa"), time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	tcfg := tsa.DefaultConfig()
	tcfg.Signer, tcfg.Cert = tkey, tcert
	auth, err := tsa.New(tcfg)
	if err != nil {
		t.Fatal(err)
	}
	skey, _ := pki.NewKey()
	scert, err := ca.Issue(pki.KindSigning, skey.Public(), spiffeid.RequireFromPath(td, "/node/GOV/70000310/ss1"), time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{ca: ca, auth: auth, key: skey, chain: []*x509.Certificate{scert}}
}

func (p *testPKI) roots() []*x509.Certificate { return []*x509.Certificate{p.ca.Cert} }

func (p *testPKI) stamp(_ context.Context, digest []byte) ([]byte, error) {
	if p.failStamps.Load() {
		return nil, errors.New("authority unreachable")
	}
	p.stamps.Add(1)
	return p.auth.Stamp(digest)
}

var testBodyKey = []byte("0123456789abcdef0123456789abcdef")

func testConfig(p *testPKI, dir string) Config {
	cfg := DefaultConfig()
	cfg.Dir = dir
	cfg.Origin = "EE/GOV/70000310/ss1"
	cfg.Signer, cfg.SignerChain = p.key, p.chain
	cfg.Stamp = p.stamp
	cfg.CheckpointInterval = 20 * time.Millisecond
	cfg.BodyKey = testBodyKey
	cfg.BodyModes = map[string]BodyMode{
		"EE/GOV/1/full": BodyFull,
		"EE/GOV/1/meta": BodyMetadata,
	}
	return cfg
}

// running is a ledger whose Run goroutine stops at test cleanup.
type running struct {
	*Ledger
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func (r *running) stop(t testing.TB) {
	r.once.Do(func() {
		r.cancel()
		if err := <-r.done; err != nil {
			t.Errorf("run: %v", err)
		}
		if err := r.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
}

func startLedger(t testing.TB, cfg Config) *running {
	t.Helper()
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Ledger: l, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- l.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

var baseTime = time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)

func testRecord(i int, client, user string) *ledgerv1.Record {
	req := sha256.Sum256([]byte(fmt.Sprintf("request %d", i)))
	resp := sha256.Sum256([]byte(fmt.Sprintf("response %d", i)))
	return &ledgerv1.Record{
		MessageId:      fmt.Sprintf("msg-%06d", i),
		Side:           ledgerv1.Side_SIDE_CONSUMER,
		Client:         client,
		Target:         "EE/GOV/70000311/business",
		Service:        "business.v1.Registry",
		Method:         "GetCompany",
		UserId:         user,
		Purpose:        "licence check",
		RequestDigest:  req[:],
		ResponseDigest: resp[:],
		RequestCount:   1,
		ResponseCount:  1,
		StartTime:      timestamppb.New(baseTime.Add(time.Duration(i) * time.Second)),
		EndTime:        timestamppb.New(baseTime.Add(time.Duration(i)*time.Second + time.Millisecond)),
		PeerNode:       "EE/GOV/70000311/ss1",
	}
}

func testBody(i int) *ledgerv1.Body {
	return &ledgerv1.Body{
		RequestHeaders:   []*ledgerv1.Header{{Key: "sild-client", Value: []byte("x")}},
		ResponseTrailers: []*ledgerv1.Header{{Key: "grpc-status", Value: []byte("0")}},
		RequestMessages:  [][]byte{[]byte(fmt.Sprintf("request body %d", i))},
		ResponseMessages: [][]byte{[]byte(fmt.Sprintf("response body %d", i))},
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitStamped waits until a time-stamped checkpoint covers the whole tree.
func waitStamped(t testing.TB, l *Ledger) {
	t.Helper()
	size := l.Size()
	waitFor(t, "a time-stamped checkpoint", func() bool {
		sc, err := l.Checkpoint(size)
		return err == nil && len(sc.GetTimestampToken()) > 0
	})
}
