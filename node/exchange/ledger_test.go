package exchange

import (
	"context"
	"crypto/x509"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	"github.com/sildmesh/sild/ledger"
	"github.com/sildmesh/sild/node/envelope"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/tsa"
)

// startLedger runs a real ledger for node n (Badger on a temp dir, the
// ecosystem's time-stamping authority in process) and returns it with the
// Recorder the daemon would wire.
func startLedger(t testing.TB, ca *pki.CA, n *testNode) (*ledger.Ledger, Recorder) {
	t.Helper()
	now := time.Now().Add(-time.Minute)
	tkey, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
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
	skey, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	scert, err := ca.Issue(pki.KindSigning, skey.Public(), n.spiffe, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	cfg := ledger.DefaultConfig()
	cfg.Dir, cfg.Origin = t.TempDir(), n.id.String()
	cfg.Signer, cfg.SignerChain = skey, []*x509.Certificate{scert}
	cfg.Stamp = func(_ context.Context, d []byte) ([]byte, error) { return auth.Stamp(d) }
	l, err := ledger.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := l.Run(ctx); err != nil {
			t.Errorf("ledger run: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		_ = l.Close()
	})
	return l, RecorderFunc(func(ctx context.Context, r *ledgerv1.Record, body *ledgerv1.Body) error {
		_, err := l.Append(ctx, r, body).Wait(ctx)
		return err
	})
}

func TestRealLedgers(t *testing.T) {
	m := newMeshWith(t, true)
	for i := range 3 {
		id := fmt.Sprintf("m-ledger-%d", i)
		if _, err := m.client.UnaryCall(as(ctxT(t), licensing, registry, envelope.HeaderMessageID, id), &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
		// Released only once durable: both records are there now.
		for _, l := range []*ledger.Ledger{m.ledA, m.ledB} {
			got, err := l.ByMessageID(id)
			if err != nil || len(got) != 1 {
				t.Fatalf("%s: %d records, %v", id, len(got), err)
			}
			if codes.Code(got[0].Record.GetStatusCode()) != codes.OK || got[0].Record.GetConsumerSignature() == nil || got[0].Record.GetProviderSignature() == nil {
				t.Fatalf("record %v", got[0].Record)
			}
		}
	}
}
