// Package sign is the batch message signing of a sild node, as X-Road does it:
// digests submitted concurrently are collected into batches, each batch
// becomes the leaves of an RFC 6962 Merkle tree, and the node signs only the
// tree's root. Every caller gets the one root signature with its own leaf
// index and inclusion path, so the cost of a signature is shared by everything
// that queued while the previous one was being computed.
//
// The signed bytes are "sild-batch-v1" || uint64be(tree size) || root. ECDSA
// P-256 keys sign SHA-256 of them, Ed25519 keys sign them as they are.
// Verify recomputes the root from a digest and its path, checks the root
// signature and checks that the signer's certificate is a signing
// certificate (pki.KindSigning) of the given roots, valid at a given time.
//
// Signatures travel between nodes (as the last message of each direction of
// an exchange, see node/exchange) and in ledger records as the protobuf
// message sild.node.v1.BatchSignature; Unmarshal is strict and accepts only
// the canonical encoding of a well-formed signature.
//
// Wiring in the node daemon: one Signer per node, made from the signing key
// and certificate the registry issued (New; SetIdentity after a renewal;
// Close on shutdown). The sending side signs the head of its envelope.Chain
// and sends Signature.Marshal(); the receiving side decodes it (Unmarshal)
// and checks it with one shared Verifier against the sender's signing
// certificate and the trust bundle of the current global configuration,
// before passing the message on. Both keep the signature in the ledger
// record.
package sign

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sildmesh/sild/internal/linger"
	"github.com/sildmesh/sild/pki"
)

// Errors of this package, checked with errors.Is.
var (
	// ErrClosed is returned by Sign after Close.
	ErrClosed = errors.New("signer closed")
	// ErrDigestSize is returned for a digest that is not HashSize bytes.
	ErrDigestSize = fmt.Errorf("digest must be %d bytes", HashSize)
	// ErrKey is returned for a key of an unsupported type.
	ErrKey = errors.New("unsupported signing key: want ECDSA P-256 or Ed25519")
)

// Defaults of Config.
const (
	DefaultMaxBatch = 512
	DefaultWorkers  = 1
	DefaultLinger   = time.Millisecond
)

// lingerSiblings is how many more digests must be expected within
// Config.Linger for a batch to wait for them; maxLingerDelay bounds
// Config.Linger (Close waits for a batch that waits).
const (
	lingerSiblings = 2
	maxLingerDelay = time.Second
)

// signedPrefix is the domain separation prefix of the signed bytes.
const signedPrefix = "sild-batch-v1"

// Config configures a Signer.
type Config struct {
	// Key is the node's message-signing key: ECDSA P-256 or Ed25519.
	Key crypto.Signer
	// Chain is the signing certificate (issued by pki as KindSigning) and its
	// intermediates, leaf first. It may be empty if signatures go with the
	// key id only.
	Chain []*x509.Certificate
	// IncludeChain puts the DER chain into every signature. Without it only
	// the key id is sent, and the verifier must know the certificate (e.g.
	// from the global configuration or from an earlier message).
	IncludeChain bool
	// MaxBatch is the most digests one root signature covers (default
	// DefaultMaxBatch).
	MaxBatch int
	// Workers is how many batches may be signed at the same time (default
	// DefaultWorkers). One is best on small machines: the fewer signatures,
	// the bigger the batches.
	Workers int
	// Linger is how long a batch may wait for more digests (default
	// DefaultLinger; negative: never). It waits only while the process
	// keeps most of its CPUs busy and digests arrive fast (see
	// linger.OnBusyCPU): then fewer signatures are made here and, above
	// all, fewer verified by the receiving nodes, at that much latency. A
	// node with CPU to spare, and a lone caller, are never held.
	Linger time.Duration
	// busy replaces the CPU measure that decides whether a batch may wait
	// (tests).
	busy func(time.Time) bool
}

// identity is a key with its certificate chain, swapped as a whole.
type identity struct {
	key   crypto.Signer
	alg   Algorithm
	keyID string
	chain [][]byte
}

func newIdentity(key crypto.Signer, chain []*x509.Certificate, include bool) (*identity, error) {
	if key == nil {
		return nil, fmt.Errorf("%w: no key", ErrKey)
	}
	alg, err := algorithmOf(key.Public())
	if err != nil {
		return nil, err
	}
	keyID, err := pki.KeyHash(key.Public())
	if err != nil {
		return nil, err
	}
	if len(chain) > 0 {
		leafID, err := pki.KeyHash(chain[0].PublicKey)
		if err != nil || leafID != keyID {
			return nil, errors.New("signing certificate does not certify the signing key")
		}
	}
	if include && len(chain) == 0 {
		return nil, errors.New("IncludeChain set without a certificate chain")
	}
	if len(chain) > maxChain {
		return nil, fmt.Errorf("certificate chain longer than %d", maxChain)
	}
	id := &identity{key: key, alg: alg, keyID: keyID}
	if include {
		for _, c := range chain {
			if len(c.Raw) > maxCertLen {
				return nil, fmt.Errorf("certificate longer than %d bytes", maxCertLen)
			}
			id.chain = append(id.chain, c.Raw)
		}
	}
	return id, nil
}

func algorithmOf(pub crypto.PublicKey) (Algorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return AlgECDSAP256SHA256, nil
		}
	case ed25519.PublicKey:
		return AlgEd25519, nil
	}
	return 0, fmt.Errorf("%w: got %T", ErrKey, pub)
}

// signedBytes is what a root signature covers.
func signedBytes(size uint64, root *[HashSize]byte) []byte {
	b := make([]byte, 0, len(signedPrefix)+8+HashSize)
	b = append(b, signedPrefix...)
	b = binary.BigEndian.AppendUint64(b, size)
	return append(b, root[:]...)
}

type result struct {
	sig *Signature
	err error
}

type request struct {
	ctx    context.Context
	digest [HashSize]byte
	res    chan result // buffered, receives exactly one result
}

// Signer batch-signs digests. It is safe for concurrent use; Close stops it.
//
// There are no background workers: a caller that finds no batch being
// signed (or fewer than Config.Workers) signs the pending digests itself, so
// a lone caller pays no hand-off. If digests queued up meanwhile, it starts
// a goroutine to sign them and returns with its own signature; that
// goroutine keeps signing while digests keep coming, and exits when the
// queue is empty.
type Signer struct {
	id       atomic.Pointer[identity]
	include  bool
	maxBatch int
	workers  int

	mu       sync.Mutex
	pending  []*request     // FIFO, each with a caller waiting
	signing  int            // batches being signed
	lingered int            // scheduling rounds the current leader waited for company
	delay    *linger.Policy // when a batch waits for more digests; used under mu
	closed   bool
	wg       sync.WaitGroup // every signing caller or goroutine

	batches, digests atomic.Uint64
	largest          atomic.Uint64
}

// New validates cfg and returns a Signer.
func New(cfg Config) (*Signer, error) {
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.Workers == 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.Linger == 0 {
		cfg.Linger = DefaultLinger
	}
	if cfg.MaxBatch < 1 || cfg.MaxBatch > MaxTreeSize {
		return nil, fmt.Errorf("new signer: MaxBatch must be in 1..%d", MaxTreeSize)
	}
	if cfg.Workers < 1 {
		return nil, errors.New("new signer: Workers must be positive")
	}
	if cfg.Linger > maxLingerDelay {
		return nil, fmt.Errorf("new signer: Linger must be at most %s", maxLingerDelay)
	}
	id, err := newIdentity(cfg.Key, cfg.Chain, cfg.IncludeChain)
	if err != nil {
		return nil, fmt.Errorf("new signer: %w", err)
	}
	s := &Signer{include: cfg.IncludeChain, maxBatch: cfg.MaxBatch, workers: cfg.Workers,
		delay: linger.OnBusyCPU(max(cfg.Linger, 0), lingerSiblings)}
	if cfg.busy != nil {
		s.delay.Busy = cfg.busy
	}
	s.id.Store(id)
	return s, nil
}

// SetIdentity replaces the key and certificate chain (after a renewal).
// Batches started before keep the old ones.
func (s *Signer) SetIdentity(key crypto.Signer, chain []*x509.Certificate) error {
	id, err := newIdentity(key, chain, s.include)
	if err != nil {
		return fmt.Errorf("set signer identity: %w", err)
	}
	s.id.Store(id)
	return nil
}

// KeyID is "sha256:<hex>" of the current signing key's SubjectPublicKeyInfo.
func (s *Signer) KeyID() string { return s.id.Load().keyID }

// Stats are counters of a Signer.
type Stats struct {
	Batches  uint64 // root signatures made
	Digests  uint64 // digests signed
	Largest  uint64 // largest batch
	MaxBatch int
}

// Stats returns the counters so far.
func (s *Signer) Stats() Stats {
	return Stats{Batches: s.batches.Load(), Digests: s.digests.Load(), Largest: s.largest.Load(), MaxBatch: s.maxBatch}
}

// queued is the number of digests waiting for a batch.
func (s *Signer) queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// Sign returns a signature over digest (a SHA-256 sum). It joins the next
// batch and waits for it to be signed; if ctx ends first it returns ctx's
// error and the digest may or may not have been signed.
func (s *Signer) Sign(ctx context.Context, digest []byte) (*Signature, error) {
	if len(digest) != HashSize {
		return nil, ErrDigestSize
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r := &request{ctx: ctx, res: make(chan result, 1)}
	copy(r.digest[:], digest)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	s.pending = append(s.pending, r)
	lead := s.signing < s.workers
	if lead {
		s.signing++
		s.wg.Add(1)
	}
	s.mu.Unlock()
	if lead {
		s.lead(r)
	}
	select {
	case res := <-r.res:
		return res.sig, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// lead signs pending batches until own (nil for a goroutine) is answered,
// then hands what is left to a goroutine, or stops when nothing is left. The
// caller has counted itself in s.signing and s.wg.
func (s *Signer) lead(own *request) {
	defer s.wg.Done()
	waited := false // the last round waited for company
	for {
		s.mu.Lock()
		if s.closed {
			for _, r := range s.pending {
				r.res <- result{err: ErrClosed}
			}
			s.pending = nil
		}
		if len(s.pending) == 0 {
			s.signing--
			s.mu.Unlock()
			return
		}
		if own != nil && len(own.res) > 0 {
			// Our signature is ready: let a goroutine carry on.
			s.wg.Add(1)
			s.mu.Unlock()
			go s.lead(nil)
			return
		}
		if len(s.pending) == 1 && s.lingered < maxLinger {
			// One digest alone: give goroutines about to call Sign one
			// scheduling round to join this batch (one signature, and one
			// verification at the receiver, then covers them all).
			s.lingered++
			s.mu.Unlock()
			runtime.Gosched()
			continue
		}
		s.lingered = 0
		if !waited && len(s.pending) < s.maxBatch {
			if d := s.delay.Wait(len(s.pending), time.Now()); d > 0 {
				// Digests come fast and CPU is short: let more join, then
				// look again (another worker may have taken them).
				before := len(s.pending)
				s.mu.Unlock()
				time.Sleep(d)
				s.mu.Lock()
				s.delay.Waited(len(s.pending) - before)
				s.mu.Unlock()
				waited = true
				continue
			}
		}
		waited = false
		n := min(len(s.pending), s.maxBatch)
		s.delay.Closed(n, time.Now())
		batch := make([]*request, n)
		copy(batch, s.pending)
		rest := copy(s.pending, s.pending[n:])
		clear(s.pending[rest:])
		s.pending = s.pending[:rest]
		s.mu.Unlock()
		s.signBatch(batch)
	}
}

// maxLinger is how many scheduling rounds a leader holding a single digest
// yields for others to join its batch.
const maxLinger = 1

// Close stops signing after the batches being signed; digests still queued
// get ErrClosed, and Sign refuses new ones. It returns once no signing is
// going on.
func (s *Signer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// signBatch signs one batch and answers every request in it.
func (s *Signer) signBatch(batch []*request) {
	// Callers that gave up are not signed for.
	live := batch[:0]
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.res <- result{err: err}
			continue
		}
		live = append(live, r)
	}
	n := len(live)
	if n == 0 {
		return
	}
	id := s.id.Load()
	leaves := make([][HashSize]byte, n)
	for i, r := range live {
		leaves[i] = leafHash(r.digest[:])
	}
	depth := bits.Len64(uint64(n - 1))
	backing := make([][HashSize]byte, n*depth)
	paths := make([][][HashSize]byte, n)
	for i := range paths {
		paths[i] = backing[i*depth : i*depth : (i+1)*depth]
	}
	root := buildTree(leaves, paths)
	rootSig, err := id.sign(signedBytes(uint64(n), &root))
	if err != nil {
		err = fmt.Errorf("sign batch root: %w", err)
		for _, r := range live {
			r.res <- result{err: err}
		}
		return
	}
	for i, r := range live {
		r.res <- result{sig: &Signature{
			Algorithm:     id.alg,
			RootSignature: rootSig,
			Chain:         id.chain,
			KeyID:         id.keyID,
			LeafIndex:     uint64(i),
			TreeSize:      uint64(n),
			Path:          paths[i],
		}}
	}
	s.digests.Add(uint64(n)) // before batches, which Stats reads first
	s.batches.Add(1)
	for {
		l := s.largest.Load()
		if uint64(n) <= l || s.largest.CompareAndSwap(l, uint64(n)) {
			break
		}
	}
}

func (id *identity) sign(msg []byte) ([]byte, error) {
	if id.alg == AlgEd25519 {
		return id.key.Sign(rand.Reader, msg, crypto.Hash(0))
	}
	sum := sha256.Sum256(msg)
	return id.key.Sign(rand.Reader, sum[:], crypto.SHA256)
}
