package ledger

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/ledger/merkle"
)

func appendWait(t testing.TB, l *Ledger, rec *ledgerv1.Record, body *ledgerv1.Body) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	i, err := l.Append(ctx, rec, body).Wait(ctx)
	if err != nil {
		t.Fatalf("append %s: %v", rec.GetMessageId(), err)
	}
	return i
}

func TestAppendQueryExportVerify(t *testing.T) {
	p := newTestPKI(t)
	dir := t.TempDir()
	l := startLedger(t, testConfig(p, dir))
	clients := []string{"EE/GOV/1/full", "EE/GOV/1/meta", "EE/GOV/1/off"}
	users := []string{"EE38001010000", "", "EE49002020000"}
	const n = 60
	var wg sync.WaitGroup
	idx := make([]uint64, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			idx[i] = appendWait(t, l.Ledger, testRecord(i, clients[i%3], users[i%3]), testBody(i))
		}()
	}
	wg.Wait()
	if l.Size() != n {
		t.Fatalf("size %d", l.Size())
	}
	seen := map[uint64]bool{}
	for _, i := range idx {
		if seen[i] {
			t.Fatalf("index %d given twice", i)
		}
		seen[i] = true
	}

	// Queries.
	got, err := l.ByMessageID("msg-000007")
	if err != nil || len(got) != 1 || got[0].Index != idx[7] || got[0].Record.GetClient() != clients[1] {
		t.Fatalf("by message id: %v %+v", err, got)
	}
	if got, _ := l.ByMessageID("nope"); len(got) != 0 {
		t.Fatal("unknown message id found")
	}
	// Client full: records 0, 3, 6, ...; range [3 s, 12 s) holds 3, 6, 9.
	got, err = l.ByClient(clients[0], baseTime.Add(3*time.Second), baseTime.Add(12*time.Second), 0)
	if err != nil || len(got) != 3 || got[0].Record.GetMessageId() != "msg-000003" || got[2].Record.GetMessageId() != "msg-000009" {
		t.Fatalf("by client: %v %d", err, len(got))
	}
	if got, _ := l.ByClient(clients[0], time.Time{}, time.Time{}, 5); len(got) != 5 {
		t.Fatalf("limit: %d", len(got))
	}
	got, _ = l.ByService("EE/GOV/70000311/business", "business.v1.Registry", time.Time{}, time.Time{}, 0)
	if len(got) != n {
		t.Fatalf("by service: %d", len(got))
	}
	got, _ = l.ByUser(users[2], time.Time{}, baseTime.Add(10*time.Second), 0)
	if len(got) != 3 { // 2, 5, 8
		t.Fatalf("by user: %d", len(got))
	}

	// Bodies by mode.
	if b, err := l.Body(idx[0]); err != nil || !proto.Equal(b, testBody(0)) {
		t.Fatalf("full body: %v %v", err, b)
	}
	if b, err := l.Body(idx[1]); err != nil || len(b.GetRequestMessages()) != 0 || len(b.GetRequestHeaders()) != 1 {
		t.Fatalf("metadata body: %v %v", err, b)
	}
	if _, err := l.Body(idx[2]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("off body: %v", err)
	}
	// Bodies are encrypted at rest.
	if err := l.db.View(func(txn *badger.Txn) error {
		raw, err := txnRaw(txn, bodyKey(idx[0]))
		if err != nil {
			return err
		}
		if bytes.Contains(raw, []byte("request body 0")) {
			t.Error("body stored in clear")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	waitStamped(t, l.Ledger)
	b, err := l.Export("msg-000000")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := proto.Marshal(b)
	v, err := VerifyBundle(data, p.roots())
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Records) != 1 || v.Bodies != 1 || v.Origin != "EE/GOV/70000310/ss1" || v.Records[0].Record.GetMessageId() != "msg-000000" {
		t.Fatalf("verified %+v", v)
	}
	if v.Signer != "spiffe://ee.sild.test/node/GOV/70000310/ss1" {
		t.Fatalf("signer %s", v.Signer)
	}

	rep, err := l.Check(context.Background(), p.roots())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Entries != n || rep.Bodies != 40 || rep.Stamped == 0 || rep.TokensVerified != rep.Stamped {
		t.Fatalf("check: %s", rep)
	}
}

func TestProofsAgainstCheckpoints(t *testing.T) {
	p := newTestPKI(t)
	l := startLedger(t, testConfig(p, t.TempDir()))
	var roots []merkle.Hash
	for i := 0; i < 40; i++ {
		appendWait(t, l.Ledger, testRecord(i, "EE/GOV/1/off", ""), nil)
		_, r := l.Root()
		roots = append(roots, r)
	}
	for size := uint64(1); size <= 40; size++ {
		r, err := l.RootAt(size)
		if err != nil || r != roots[size-1] {
			t.Fatalf("root at %d: %v", size, err)
		}
		for i := uint64(0); i < size; i += 3 {
			s, err := l.Get(i)
			if err != nil {
				t.Fatal(err)
			}
			path, err := l.InclusionProof(i, size)
			if err != nil {
				t.Fatal(err)
			}
			hs, _ := toHashes(path)
			if err := merkle.VerifyInclusion(i, size, merkle.HashLeaf(s.Raw), hs, r); err != nil {
				t.Fatalf("inclusion %d in %d: %v", i, size, err)
			}
		}
		for m := uint64(1); m <= size; m += 2 {
			proof, err := l.ConsistencyProof(m, size)
			if err != nil {
				t.Fatal(err)
			}
			hs, _ := toHashes(proof)
			if err := merkle.VerifyConsistency(m, size, roots[m-1], r, hs); err != nil {
				t.Fatalf("consistency %d to %d: %v", m, size, err)
			}
		}
	}
	if _, err := l.InclusionProof(0, 41); err == nil {
		t.Fatal("proof beyond the tree")
	}
}

// fakeClock is a clock tests move by hand.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func TestUnstampedTooLongRefusesAppends(t *testing.T) {
	p := newTestPKI(t)
	clk := &fakeClock{}
	clk.ns.Store(time.Now().UnixNano())
	cfg := testConfig(p, t.TempDir())
	cfg.Now = clk.now
	cfg.MaxUnstamped = time.Minute
	p.failStamps.Store(true)
	l := startLedger(t, cfg)
	appendWait(t, l.Ledger, testRecord(1, "EE/GOV/1/off", ""), nil)
	clk.advance(59 * time.Second)
	appendWait(t, l.Ledger, testRecord(2, "EE/GOV/1/off", ""), nil)
	clk.advance(2 * time.Second)
	_, err := l.Append(context.Background(), testRecord(3, "EE/GOV/1/off", ""), nil).Wait(context.Background())
	if rpcerr.Reason(err) != rpcerr.ReasonLedgerUnavailable || rpcerr.Component(err) != Component {
		t.Fatalf("append after %v unstamped: %v", 61*time.Second, err)
	}
	// The limit can change while the ledger runs (a node follows its
	// configuration's lifetime): longer, and the ledger is healthy again;
	// shorter, and it is not.
	if err := l.SetMaxUnstamped(2 * time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := l.Healthy(); err != nil {
		t.Fatalf("after raising the limit: %v", err)
	}
	if err := l.SetMaxUnstamped(0); err == nil {
		t.Fatal("a zero limit was taken")
	}
	if err := l.SetMaxUnstamped(time.Minute); err != nil {
		t.Fatal(err)
	}
	if rpcerr.Reason(l.Healthy()) != rpcerr.ReasonLedgerUnavailable {
		t.Fatal("healthy after lowering the limit again")
	}
	// Once the authority answers again, appends are accepted.
	p.failStamps.Store(false)
	waitFor(t, "the ledger to become healthy", func() bool { return l.Healthy() == nil })
	appendWait(t, l.Ledger, testRecord(3, "EE/GOV/1/off", ""), nil)
	// An idle ledger whose records are all stamped stays healthy.
	waitStamped(t, l.Ledger)
	clk.advance(time.Hour)
	if err := l.Healthy(); err != nil {
		t.Fatalf("idle stamped ledger: %v", err)
	}
}

func TestStampStateSurvivesRestart(t *testing.T) {
	p := newTestPKI(t)
	dir := t.TempDir()
	clk := &fakeClock{}
	clk.ns.Store(time.Now().UnixNano())
	cfg := testConfig(p, dir)
	cfg.Now = clk.now
	cfg.MaxUnstamped = time.Minute
	p.failStamps.Store(true)
	l := startLedger(t, cfg)
	appendWait(t, l.Ledger, testRecord(1, "EE/GOV/1/off", ""), nil)
	l.stop(t)
	clk.advance(2 * time.Minute)
	l2 := startLedger(t, cfg)
	if l2.Size() != 1 {
		t.Fatalf("size after restart %d", l2.Size())
	}
	if rpcerr.Reason(l2.Healthy()) != rpcerr.ReasonLedgerUnavailable {
		t.Fatal("restart forgot the unstamped record")
	}
	p.failStamps.Store(false)
	waitFor(t, "stamp after restart", func() bool { return l2.Healthy() == nil })
	appendWait(t, l2.Ledger, testRecord(2, "EE/GOV/1/off", ""), nil)
	if _, err := l2.Check(context.Background(), p.roots()); err != nil {
		t.Fatal(err)
	}
}

func TestAppendRefuses(t *testing.T) {
	p := newTestPKI(t)
	l := startLedger(t, testConfig(p, t.TempDir()))
	ctx := context.Background()
	bad := []*ledgerv1.Record{
		nil,
		{Side: ledgerv1.Side_SIDE_CONSUMER, Client: "a", Target: "b"},
		{MessageId: "m", Client: "a", Target: "b"},
		{MessageId: "m", Side: ledgerv1.Side_SIDE_PROVIDER, Target: "b"},
		{MessageId: "m\x00", Side: ledgerv1.Side_SIDE_PROVIDER, Client: "a", Target: "b"},
	}
	for i, r := range bad {
		if _, err := l.Append(ctx, r, nil).Wait(ctx); !errors.Is(err, ErrInvalidRecord) {
			t.Errorf("record %d: %v", i, err)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := l.Append(cctx, testRecord(1, "x", ""), nil).Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
	if l.Size() != 0 {
		t.Fatal("refused record stored")
	}
	l.stop(t)
	if _, err := l.Append(ctx, testRecord(1, "x", ""), nil).Wait(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("after close: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	p := newTestPKI(t)
	other := newTestPKI(t)
	for name, mod := range map[string]func(*Config){
		"Dir":            func(c *Config) { c.Dir = "" },
		"Origin":         func(c *Config) { c.Origin = "" },
		"Signer":         func(c *Config) { c.Signer = nil },
		"SignerChain[0]": func(c *Config) { c.SignerChain = other.chain },
		"Stamp":          func(c *Config) { c.Stamp = nil },
		"MaxBatch":       func(c *Config) { c.MaxBatch = 0 },
		"CommitDelay":    func(c *Config) { c.CommitDelay = -time.Millisecond },
		"BodyKey":        func(c *Config) { c.BodyKey = nil },
		"BodyKey size":   func(c *Config) { c.BodyKey = []byte("short") },
	} {
		cfg := testConfig(p, t.TempDir())
		mod(&cfg)
		err := cfg.Validate()
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		field := name
		if i := bytes.IndexByte([]byte(name), ' '); i > 0 {
			field = name[:i]
		}
		if !bytes.Contains([]byte(err.Error()), []byte(field)) {
			t.Errorf("%s: error %q does not name the field", name, err)
		}
	}
}

func TestCheckFindsCorruption(t *testing.T) {
	p := newTestPKI(t)
	for _, tc := range []struct {
		name   string
		reason Reason
		harm   func(txn *badger.Txn) error
	}{
		{"entry changed", TreeMismatch(), func(txn *badger.Txn) error {
			raw, _ := txnRaw(txn, entryKey(3))
			raw[len(raw)-1] ^= 1
			return txn.Set(entryKey(3), raw)
		}},
		{"index removed", ReasonIndexMismatch, func(txn *badger.Txn) error {
			return txn.Delete(msgKey("msg-000004", 4))
		}},
		{"index added", ReasonIndexMismatch, func(txn *badger.Txn) error {
			return txn.Set(msgKey("msg-999", 4), nil)
		}},
		{"body removed", ReasonStoreCorrupt, func(txn *badger.Txn) error {
			return txn.Delete(bodyKey(0))
		}},
		{"body changed", ReasonBodyMismatch, func(txn *badger.Txn) error {
			raw, _ := txnRaw(txn, bodyKey(0))
			raw[20] ^= 1
			return txn.Set(bodyKey(0), raw)
		}},
		{"node changed", ReasonTreeMismatch, func(txn *badger.Txn) error {
			return txn.Set(nodeKey(merkle.Node{Level: 1, Index: 1}), make([]byte, 32))
		}},
		{"checkpoint changed", ReasonCheckpointSignature, func(txn *badger.Txn) error {
			raw, _ := txnRaw(txn, checkpointKey(8))
			sc := &ledgerv1.SignedCheckpoint{}
			if err := proto.Unmarshal(raw, sc); err != nil {
				return err
			}
			sc.Signature[10] ^= 1
			b, _ := proto.Marshal(sc)
			return txn.Set(checkpointKey(8), b)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := startLedger(t, testConfig(p, t.TempDir()))
			for i := 0; i < 8; i++ {
				appendWait(t, l.Ledger, testRecord(i, "EE/GOV/1/full", ""), testBody(i))
			}
			waitStamped(t, l.Ledger)
			if _, err := l.Check(context.Background(), p.roots()); err != nil {
				t.Fatalf("before harm: %v", err)
			}
			if err := l.db.Update(tc.harm); err != nil {
				t.Fatal(err)
			}
			_, err := l.Check(context.Background(), p.roots())
			if ReasonOf(err) != tc.reason {
				t.Fatalf("check: %v, want %s", err, tc.reason)
			}
		})
	}
}

// TreeMismatch is the reason for a changed entry: the tree no longer
// matches (a function so the table reads naturally).
func TreeMismatch() Reason { return ReasonTreeMismatch }
