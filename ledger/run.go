package ledger

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	"github.com/sildmesh/sild/internal/linger"
)

func timestamppbOf(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

// checkpointPrefix is prepended to a serialized Checkpoint before signing.
const checkpointPrefix = "sild-ledger-checkpoint-v1\n"

// Run commits appends, signs checkpoints and gets them time-stamped until
// ctx ends. It returns nil when ctx ends; appends still queued then fail
// with ErrClosed. Run may be called once.
func (l *Ledger) Run(ctx context.Context) error {
	if l.readOnly {
		return ErrReadOnly
	}
	started := false
	l.runOnce.Do(func() { started = true })
	if !started {
		return errors.New("ledger: Run called twice")
	}
	stampReq := make(chan *ledgerv1.SignedCheckpoint, 1)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); l.checkpointer(ctx, stampReq) }()
	go func() { defer wg.Done(); l.stamper(ctx, stampReq) }()
	if l.cfg.Retention > 0 {
		wg.Add(1)
		go func() { defer wg.Done(); l.archiver(ctx) }()
	}
	batch := make([]*pending, 0, l.cfg.MaxBatch)
	delay := linger.OnBusyCPU(l.cfg.CommitDelay, commitSiblings)
	if l.cfg.busy != nil {
		delay.Busy = l.cfg.busy
	}
	wait := time.NewTimer(0)
	<-wait.C
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			l.failQueued()
			return nil
		case p := <-l.in:
			batch = append(batch[:0], p)
		gather:
			for len(batch) < l.cfg.MaxBatch {
				select {
				case p := <-l.in:
					batch = append(batch, p)
				default:
					break gather
				}
			}
			if d := delay.Wait(len(batch), time.Now()); d > 0 && len(batch) < l.cfg.MaxBatch {
				wait.Reset(d)
				before := len(batch)
			linger:
				for len(batch) < l.cfg.MaxBatch {
					select {
					case p := <-l.in:
						batch = append(batch, p)
					case <-wait.C:
						break linger
					case <-ctx.Done(): // commit what came; the loop then stops
						break linger
					}
				}
				wait.Stop()
				delay.Waited(len(batch) - before)
			}
			delay.Closed(len(batch), time.Now())
			l.commit(batch)
		}
	}
}

// A commit waits for more records (Config.CommitDelay) only when at least
// commitSiblings more are expected meanwhile, at the recent rate (and the
// CPU is busy: linger.OnBusyCPU).
const commitSiblings = 2

func (l *Ledger) failQueued() {
	close(l.stopped) // wakes appends blocked on a full queue
	l.closeMu.Lock()
	l.closed = true
	l.closeMu.Unlock()
	for {
		select {
		case p := <-l.in:
			p.fut.err = ErrClosed
			close(p.fut.done)
		default:
			return
		}
	}
}

func (l *Ledger) checkpointer(ctx context.Context, stampReq chan<- *ledgerv1.SignedCheckpoint) {
	t := time.NewTicker(l.cfg.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.finalCheckpoint()
			return
		case <-t.C:
		}
		if err := l.checkpoint(stampReq); err != nil {
			l.logger.Error("ledger checkpoint failed", "err", err)
		}
	}
}

// finalCheckpointTimeout bounds the time-stamp of the checkpoint taken at
// shutdown.
const finalCheckpointTimeout = 5 * time.Second

// finalCheckpoint signs a checkpoint of everything committed when the
// ledger stops, and tries once to have it time-stamped, so that records
// appended just before a shutdown can be exported at once.
func (l *Ledger) finalCheckpoint() {
	req := make(chan *ledgerv1.SignedCheckpoint, 1)
	if err := l.checkpoint(req); err != nil {
		l.logger.Error("ledger final checkpoint failed", "err", err)
		return
	}
	select {
	case sc := <-req:
		ctx, cancel := context.WithTimeout(context.Background(), min(l.cfg.StampTimeout, finalCheckpointTimeout))
		defer cancel()
		if err := l.stamp(ctx, sc); err != nil {
			l.logger.Warn("ledger final checkpoint not time-stamped; it will be at the next start", "err", err)
		}
	default: // nothing new to stamp
	}
}

// checkpoint signs a checkpoint of the current tree if it grew, and offers
// the latest unstamped checkpoint to the stamper.
func (l *Ledger) checkpoint(stampReq chan<- *ledgerv1.SignedCheckpoint) error {
	size, root := l.Root()
	l.hmu.Lock()
	cpSize, cpStamped := l.cpSize, l.cpStamped
	l.hmu.Unlock()
	var sc *ledgerv1.SignedCheckpoint
	switch {
	case size == 0 || size == cpSize && cpStamped:
		return nil
	case size > cpSize:
		var err error
		if sc, err = l.signCheckpoint(size, root[:]); err != nil {
			return err
		}
		b, err := marshal(sc)
		if err != nil {
			return err
		}
		if err := l.db.Update(func(txn *badger.Txn) error { return txn.Set(checkpointKey(size), b) }); err != nil {
			return fmt.Errorf("store checkpoint %d: %w", size, err)
		}
		l.hmu.Lock()
		l.cpSize, l.cpStamped = size, false
		l.hmu.Unlock()
	default:
		var err error
		if sc, err = l.Checkpoint(cpSize); err != nil {
			return err
		}
	}
	select {
	case stampReq <- sc:
	default: // the stamper is busy; retried at the next tick
	}
	return nil
}

func (l *Ledger) signCheckpoint(size uint64, root []byte) (*ledgerv1.SignedCheckpoint, error) {
	cp, err := marshal(&ledgerv1.Checkpoint{Origin: l.cfg.Origin, TreeSize: size, RootHash: root, Time: timestamppbOf(l.cfg.Now())})
	if err != nil {
		return nil, err
	}
	id := l.currentSigner()
	alg, err := algorithmOf(id.key.Public())
	if err != nil {
		return nil, err
	}
	msg := append([]byte(checkpointPrefix), cp...)
	var sig []byte
	switch alg {
	case nodev1.SignatureAlgorithm_SIGNATURE_ALGORITHM_ED25519:
		sig, err = id.key.Sign(rand.Reader, msg, crypto.Hash(0))
	default:
		h := sha256.Sum256(msg)
		sig, err = id.key.Sign(rand.Reader, h[:], crypto.SHA256)
	}
	if err != nil {
		return nil, fmt.Errorf("sign checkpoint: %w", err)
	}
	sc := &ledgerv1.SignedCheckpoint{Checkpoint: cp, Algorithm: alg, Signature: sig}
	for _, c := range id.chain {
		sc.SignerChain = append(sc.SignerChain, c.Raw)
	}
	return sc, nil
}

// signerIdentity is the key checkpoints are signed with and its chain.
type signerIdentity struct {
	key   crypto.Signer
	chain []*x509.Certificate
}

func (l *Ledger) currentSigner() *signerIdentity {
	if id := l.signer.Load(); id != nil {
		return id
	}
	return &signerIdentity{l.cfg.Signer, l.cfg.SignerChain}
}

// SetSigner replaces the checkpoint-signing key and its chain (the node's
// renewed signing certificate); later checkpoints are signed with it.
func (l *Ledger) SetSigner(key crypto.Signer, chain []*x509.Certificate) error {
	if key == nil || len(chain) == 0 {
		return errors.New("ledger: SetSigner needs a key and its chain")
	}
	if _, err := algorithmOf(key.Public()); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	if !publicKeyEqual(chain[0].PublicKey, key.Public()) {
		return errors.New("ledger: SetSigner: chain[0] does not certify the key")
	}
	l.signer.Store(&signerIdentity{key, chain})
	return nil
}

func algorithmOf(pub crypto.PublicKey) (nodev1.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve.Params().Name != "P-256" {
			return 0, fmt.Errorf("ECDSA curve %s, want P-256", k.Curve.Params().Name)
		}
		return nodev1.SignatureAlgorithm_SIGNATURE_ALGORITHM_ECDSA_P256_SHA256, nil
	case ed25519.PublicKey:
		return nodev1.SignatureAlgorithm_SIGNATURE_ALGORITHM_ED25519, nil
	}
	return 0, fmt.Errorf("key type %T, want ECDSA P-256 or Ed25519", pub)
}

// StampDigest is what the time-stamp token of a signed checkpoint covers:
// SHA-256(checkpoint || signature).
func StampDigest(sc *ledgerv1.SignedCheckpoint) []byte {
	h := sha256.New()
	h.Write(sc.GetCheckpoint())
	h.Write(sc.GetSignature())
	return h.Sum(nil)
}

func (l *Ledger) stamper(ctx context.Context, req <-chan *ledgerv1.SignedCheckpoint) {
	for {
		select {
		case <-ctx.Done():
			return
		case sc := <-req:
			if err := l.stamp(ctx, sc); err != nil {
				l.hmu.Lock()
				l.stampFails++
				n := l.stampFails
				l.hmu.Unlock()
				l.logger.Warn("ledger time-stamp failed", "failures", n, "err", err)
			}
		}
	}
}

func (l *Ledger) stamp(ctx context.Context, sc *ledgerv1.SignedCheckpoint) error {
	cp := &ledgerv1.Checkpoint{}
	if err := proto.Unmarshal(sc.GetCheckpoint(), cp); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, l.cfg.StampTimeout)
	token, err := l.cfg.Stamp(sctx, StampDigest(sc))
	cancel()
	if err != nil {
		return err
	}
	if len(token) == 0 {
		return errors.New("empty time-stamp token")
	}
	stamped := proto.Clone(sc).(*ledgerv1.SignedCheckpoint)
	stamped.TimestampToken = token
	b, err := marshal(stamped)
	if err != nil {
		return err
	}
	size := cp.GetTreeSize()
	if err := l.db.Update(func(txn *badger.Txn) error { return txn.Set(checkpointKey(size), b) }); err != nil {
		return fmt.Errorf("store time-stamp of checkpoint %d: %w", size, err)
	}
	l.hmu.Lock()
	defer l.hmu.Unlock()
	l.stampFails = 0
	if size == l.cpSize {
		l.cpStamped = true
	}
	if size > l.stamped {
		l.stamped = size
		i := 0
		for i < len(l.unstamped) && l.unstamped[i].first < size {
			i++
		}
		l.unstamped = append([]mark(nil), l.unstamped[i:]...)
	}
	return nil
}
