// Package ledger is a sild node's evidence log: one record per exchange and
// side, kept durably in Badger and made tamper-evident as the leaves of an
// RFC 6962 Merkle tree.
//
// Append returns a Future that resolves once the record is durable: a single
// committer goroutine gathers whatever appends are waiting (up to
// Config.MaxBatch) into one synced Badger transaction (group commit). Each
// leaf is a serialized ledgerv1.Entry (index, serialized Record, digest of
// the kept Body, append time); the hashes of the complete subtrees of 16
// leaves or more are stored with the entries in the same transaction (the
// smaller ones are recomputed from the entries), so that any prefix the
// ledger ever acknowledged is a consistent tree.
//
// At Config.CheckpointInterval the ledger signs a Checkpoint (origin, tree
// size, root, time) with Config.Signer and asks Config.Stamp, asynchronously,
// for an RFC 3161 token over SHA-256(checkpoint || signature); one token
// covers every record up to the checkpoint. When a record has waited for a
// time-stamp longer than Config.MaxUnstamped, Append refuses new records with
// rpcerr reason LEDGER_UNAVAILABLE until a stamp succeeds again, as X-Road
// stops exchanges when time-stamping has failed too long.
//
// Bodies are kept per subsystem (Config.BodyModes): off, metadata (headers
// and trailers only) or full (also every message), always encrypted at rest
// with AES-256-GCM under Config.BodyKey.
//
// Export builds an EvidenceBundle for a message id (records, bodies,
// inclusion proofs, a time-stamped signed checkpoint with the signer's chain);
// VerifyBundle checks one offline against a trust bundle and names what
// failed; Check is a full consistency check of a ledger directory. The
// time-stamp token of a bundle also checks on its own with OpenSSL:
//
//	openssl ts -verify -digest <hex> -in token.tsr -token_in -CAfile trust.pem
//
// where <hex> is SHA-256(checkpoint || signature) as printed by
// `sild ledger verify -v` (which also writes the token with --token-out).
//
// Retention (archive.go): Archive, or Run with Config.Retention, moves the
// oldest records that a time-stamped checkpoint covers into hash-linked
// archive files (records, encrypted bodies, the checkpoint and each
// record's inclusion proof) and prunes them, keeping the tree's hashes so
// that the root, new checkpoints and the proofs of kept records are
// unchanged. VerifyArchiveChain checks archive files offline;
// ExportArchived makes the evidence bundle of an archived message.
package ledger

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/grpc/codes"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/ledger/merkle"
)

// Component is the rpcerr component of ledger refusals.
const Component = "ledger"

// BodyMode is how much of an exchange's content the ledger keeps.
type BodyMode int

const (
	// BodyOff keeps no body, only the record with its digests.
	BodyOff BodyMode = iota
	// BodyMetadata keeps request headers, response headers and trailers.
	BodyMetadata
	// BodyFull keeps the metadata and every message.
	BodyFull
)

func (m BodyMode) String() string {
	switch m {
	case BodyOff:
		return "off"
	case BodyMetadata:
		return "metadata"
	case BodyFull:
		return "full"
	}
	return fmt.Sprintf("bodymode(%d)", int(m))
}

// ParseBodyMode parses "off", "metadata" or "full".
func ParseBodyMode(s string) (BodyMode, error) {
	switch s {
	case "off":
		return BodyOff, nil
	case "metadata":
		return BodyMetadata, nil
	case "full":
		return BodyFull, nil
	}
	return 0, fmt.Errorf("body mode %q: want off, metadata or full", s)
}

// StampFunc returns an RFC 3161 token over digest (SHA-256), for example
// tsa.Request against the registry's authority.
type StampFunc func(ctx context.Context, digest []byte) (token []byte, err error)

// Config configures a ledger.
type Config struct {
	// Dir is the Badger directory.
	Dir string
	// Origin names the node whose ledger this is (e.g. EE/GOV/70000310/ss1);
	// it goes into every checkpoint.
	Origin string
	// Signer signs checkpoints (ECDSA P-256 or Ed25519); SignerChain certifies
	// it, leaf first (pki.KindSigning), and goes into every checkpoint.
	Signer      crypto.Signer
	SignerChain []*x509.Certificate
	// Stamp gets time-stamp tokens for checkpoints.
	Stamp StampFunc
	// CheckpointInterval is how often a checkpoint is signed when the tree
	// grew, and how often a failed time-stamp is retried (default 1 s).
	CheckpointInterval time.Duration
	// StampTimeout bounds one call of Stamp (default 30 s).
	StampTimeout time.Duration
	// MaxUnstamped is how long a record may wait for a time-stamp before
	// appends fail with LEDGER_UNAVAILABLE (default 10 min).
	MaxUnstamped time.Duration
	// MaxBatch is the most records per synced transaction (default 1000).
	MaxBatch int
	// CommitDelay is how long a commit may wait for more records to share
	// its sync (default 1 ms; 0 never waits). It waits only while the
	// process keeps 60% of its CPUs (GOMAXPROCS) busy, appends arrive fast
	// enough that at least two more are expected in that time, and others
	// are queued or the last wait gained some (see linger.Policy). A sync
	// costs about 0.1 ms of CPU on a virtual machine's disk, so a busy
	// node gets more done; a node with CPU to spare, and a lone caller,
	// are never delayed.
	CommitDelay time.Duration
	// busy replaces the CPU measure that decides whether a commit may wait
	// (tests).
	busy func(time.Time) bool
	// BodyKey is the AES-256 key (32 bytes) bodies are encrypted with; it is
	// required when any body is kept.
	BodyKey []byte
	// BodyModes is the body mode per local subsystem (the client on the
	// consumer side, the target on the provider side), by canonical string;
	// DefaultBodyMode applies to the others.
	BodyModes       map[string]BodyMode
	DefaultBodyMode BodyMode
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger (default: discard).
	Logger *slog.Logger
	// Retention, when positive, makes Run archive every ArchiveInterval the
	// records that ended longer than Retention ago into ArchiveDir (see
	// Archive). Zero keeps every record.
	Retention       time.Duration
	ArchiveDir      string
	ArchiveInterval time.Duration
}

// DefaultConfig returns a Config with every default set; Dir, Origin,
// Signer, SignerChain and Stamp remain to be filled in.
func DefaultConfig() Config {
	return Config{
		CheckpointInterval: time.Second,
		StampTimeout:       30 * time.Second,
		MaxUnstamped:       10 * time.Minute,
		MaxBatch:           1000,
		CommitDelay:        time.Millisecond,
		DefaultBodyMode:    BodyOff,
		Now:                time.Now,
		ArchiveInterval:    time.Hour,
	}
}

// LogValue keeps the body key out of logs.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(slog.String("dir", c.Dir), slog.String("origin", c.Origin),
		slog.Duration("checkpoint_interval", c.CheckpointInterval), slog.Duration("max_unstamped", c.MaxUnstamped),
		slog.Int("max_batch", c.MaxBatch), slog.Bool("body_key", len(c.BodyKey) > 0))
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	switch {
	case c.Dir == "":
		return errors.New("ledger config: Dir is required")
	case c.Origin == "":
		return errors.New("ledger config: Origin is required")
	case c.Signer == nil:
		return errors.New("ledger config: Signer is required")
	case len(c.SignerChain) == 0:
		return errors.New("ledger config: SignerChain is required")
	case c.Stamp == nil:
		return errors.New("ledger config: Stamp is required")
	case c.CheckpointInterval <= 0:
		return errors.New("ledger config: CheckpointInterval must be positive")
	case c.StampTimeout <= 0:
		return errors.New("ledger config: StampTimeout must be positive")
	case c.MaxUnstamped <= 0:
		return errors.New("ledger config: MaxUnstamped must be positive")
	case c.MaxBatch <= 0:
		return errors.New("ledger config: MaxBatch must be positive")
	case c.CommitDelay < 0:
		return errors.New("ledger config: CommitDelay must not be negative")
	case c.Now == nil:
		return errors.New("ledger config: Now is required")
	case c.Retention < 0:
		return errors.New("ledger config: Retention must not be negative")
	case c.Retention > 0 && c.ArchiveDir == "":
		return errors.New("ledger config: ArchiveDir is required with Retention")
	case c.Retention > 0 && c.ArchiveInterval <= 0:
		return errors.New("ledger config: ArchiveInterval must be positive with Retention")
	}
	if _, err := algorithmOf(c.Signer.Public()); err != nil {
		return fmt.Errorf("ledger config: Signer: %w", err)
	}
	if !publicKeyEqual(c.SignerChain[0].PublicKey, c.Signer.Public()) {
		return errors.New("ledger config: SignerChain[0] does not certify Signer")
	}
	needKey := c.DefaultBodyMode != BodyOff
	for sub, m := range c.BodyModes {
		if m < BodyOff || m > BodyFull {
			return fmt.Errorf("ledger config: BodyModes[%q]: unknown mode %d", sub, int(m))
		}
		needKey = needKey || m != BodyOff
	}
	if c.DefaultBodyMode < BodyOff || c.DefaultBodyMode > BodyFull {
		return fmt.Errorf("ledger config: DefaultBodyMode: unknown mode %d", int(c.DefaultBodyMode))
	}
	if len(c.BodyKey) != 0 && len(c.BodyKey) != 32 {
		return fmt.Errorf("ledger config: BodyKey must be 32 bytes, got %d", len(c.BodyKey))
	}
	if needKey && len(c.BodyKey) == 0 {
		return errors.New("ledger config: BodyKey is required when bodies are kept")
	}
	return nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	switch a := a.(type) {
	case *ecdsa.PublicKey:
		return a.Equal(b)
	case ed25519.PublicKey:
		return a.Equal(b)
	}
	return false
}

// Errors of the ledger.
var (
	// ErrClosed: the ledger is not running (Run has returned).
	ErrClosed = errors.New("ledger closed")
	// ErrInvalidRecord: the record lacks a required field or holds a NUL.
	ErrInvalidRecord = errors.New("invalid ledger record")
	// ErrNotFound: no such record, body or checkpoint.
	ErrNotFound = errors.New("not found")
	// ErrReadOnly: the ledger was opened with OpenReader.
	ErrReadOnly = errors.New("ledger opened read-only")
	// ErrNoLedger: OpenReader was given a directory that holds no ledger.
	ErrNoLedger = errors.New("no ledger in this directory")
)

// unavailable is the error appends get while the ledger cannot make records
// durable or time-stamped.
func unavailable(msg string) error {
	return rpcerr.New(codes.Unavailable, rpcerr.ReasonLedgerUnavailable, Component, msg)
}

// Future is the outcome of one Append.
type Future struct {
	done  chan struct{}
	index uint64
	err   error
}

func resolved(err error) *Future {
	f := &Future{done: make(chan struct{}), err: err}
	close(f.done)
	return f
}

// Done is closed once the append is durable or has failed.
func (f *Future) Done() <-chan struct{} { return f.done }

// Wait blocks until the record is durable, returning its leaf index, or
// until the append failed or ctx ended. A record whose Wait returned nil
// survives any crash.
func (f *Future) Wait(ctx context.Context) (uint64, error) {
	select {
	case <-f.done:
		return f.index, f.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

type pending struct {
	rec     []byte
	msgID   string
	parties []party // the party indexes it goes into
	start   time.Time
	body    []byte // serialized Body, nil if none
	certs   []span // certificates in rec, stored apart (certs.go)
	fut     *Future
}

// mark is the first record of a committed batch and when it was appended.
type mark struct {
	first uint64
	at    time.Time
}

// Ledger is an open evidence log. Append, the queries and the proofs are
// safe for concurrent use.
type Ledger struct {
	cfg      Config
	db       *badger.DB
	aead     cipher.AEAD
	logger   *slog.Logger
	readOnly bool

	in      chan *pending
	stopped chan struct{} // closed when Run stops committing
	runOnce sync.Once
	// closeMu orders Append's enqueue against Run's final drain: once
	// closed is set under the write lock, nothing more is enqueued.
	closeMu sync.RWMutex
	closed  bool

	mu  sync.RWMutex
	rng *merkle.Range // committed tree

	certs *certStore // certificates stored; the committer's

	signer atomic.Pointer[signerIdentity] // set by SetSigner

	amu sync.Mutex // serializes Archive

	commits, records atomic.Uint64 // counted by commit

	hmu          sync.Mutex
	maxUnstamped time.Duration // Config.MaxUnstamped, or as SetMaxUnstamped changed it
	stamped      uint64        // size of the latest time-stamped checkpoint
	unstamped    []mark        // committed batches not covered by a time-stamp
	cpSize       uint64        // size of the latest signed checkpoint
	cpStamped    bool
	stampFails   int
}

// New opens (or creates) the ledger in cfg.Dir. Appends are made durable
// only while Run runs.
func New(cfg Config) (*Ledger, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l, err := open(cfg, false)
	if err != nil {
		return nil, err
	}
	if err := l.finishPrune(); err != nil {
		_ = l.db.Close()
		return nil, fmt.Errorf("open ledger %s: %w", cfg.Dir, err)
	}
	return l, nil
}

// OpenReader opens an existing ledger directory for queries, export,
// Check and Archive, without signing or appending; a directory without a
// ledger is refused with ErrNoLedger (nothing is created). bodyKey may be
// nil (bodies are then not readable).
func OpenReader(dir string, bodyKey []byte, logger *slog.Logger) (*Ledger, error) {
	if dir == "" {
		return nil, errors.New("open ledger: empty dir")
	}
	if len(bodyKey) != 0 && len(bodyKey) != 32 {
		return nil, fmt.Errorf("open ledger: body key must be 32 bytes, got %d", len(bodyKey))
	}
	// Badger would create an empty store in a mistyped directory, and a
	// check of it would pass: refuse a directory that holds no ledger.
	if _, err := os.Stat(filepath.Join(dir, "MANIFEST")); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("open ledger %s: %w (give the ledger directory of a node's data, e.g. <data_dir>/ledger)", dir, ErrNoLedger)
		}
		return nil, fmt.Errorf("open ledger: %w", err)
	}
	cfg := DefaultConfig()
	cfg.Dir, cfg.BodyKey, cfg.Logger = dir, bodyKey, logger
	return open(cfg, true)
}

func open(cfg Config, readOnly bool) (*Ledger, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	opts := badger.DefaultOptions(cfg.Dir).
		WithSyncWrites(true).
		WithLogger(badgerLogger{logger}).
		WithMemTableSize(32 << 20).
		WithBlockCacheSize(16 << 20).
		WithNumVersionsToKeep(1).
		WithDetectConflicts(false) // one committer goroutine writes
	db, err := badger.Open(opts)
	if err != nil && readOnly && strings.Contains(err.Error(), "directory lock") {
		return nil, fmt.Errorf("open ledger %s: in use by a running node (stop it or work on a copy; a running node answers export and query through its admin listener, --node-admin): %w", cfg.Dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open ledger %s: %w", cfg.Dir, err)
	}
	l := &Ledger{cfg: cfg, db: db, logger: logger, readOnly: readOnly, maxUnstamped: cfg.MaxUnstamped,
		in: make(chan *pending, 4*max(cfg.MaxBatch, 1)), stopped: make(chan struct{})}
	if len(cfg.BodyKey) != 0 {
		block, err := aes.NewCipher(cfg.BodyKey)
		if err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("open ledger: body key: %w", err)
		}
		l.aead, _ = cipher.NewGCM(block)
	}
	if err := l.load(); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open ledger %s: %w", cfg.Dir, err)
	}
	return l, nil
}

// load rebuilds the in-memory state from the store.
func (l *Ledger) load() error {
	return l.db.View(func(txn *badger.Txn) error {
		size, err := getSize(txn)
		if err != nil {
			return err
		}
		get := txnNodes(txn)
		var peaks []merkle.Hash
		for _, n := range merkle.PeakNodes(size) {
			h, err := get(n)
			if err != nil {
				return fmt.Errorf("tree of size %d: %w", size, err)
			}
			peaks = append(peaks, h)
		}
		l.rng, err = merkle.NewRange(size, peaks)
		if err != nil {
			return err
		}
		if l.certs, err = loadCerts(txn); err != nil {
			return err
		}
		// Latest checkpoint and latest time-stamped checkpoint.
		it := txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: []byte{pfxCheckpoint}})
		defer it.Close()
		first := true
		for it.Seek(checkpointKey(^uint64(0))); it.Valid(); it.Next() {
			cpSize := keyUint(it.Item().Key()[1:])
			sc, err := itemCheckpoint(it.Item())
			if err != nil {
				return err
			}
			if first {
				l.cpSize, l.cpStamped, first = cpSize, len(sc.GetTimestampToken()) > 0, false
			}
			if len(sc.GetTimestampToken()) > 0 {
				l.stamped = cpSize
				break
			}
		}
		if size > l.stamped {
			e, err := txnEntry(txn, l.stamped)
			if err != nil {
				return err
			}
			l.unstamped = []mark{{first: l.stamped, at: e.GetAppendTime().AsTime()}}
		}
		return nil
	})
}

// Close closes the store. Call it after Run has returned.
func (l *Ledger) Close() error {
	if err := l.db.Close(); err != nil {
		return fmt.Errorf("close ledger: %w", err)
	}
	return nil
}

// Stats are counters of a Ledger since it was opened.
type Stats struct {
	Commits uint64 // synced transactions of appended records
	Records uint64 // records they appended
}

// Stats returns the counters so far; Records/Commits is the mean batch.
// Records includes at least the records of the commits counted (a commit
// adds its records first, and Stats reads the commits first), so that the
// ratio of two snapshots' differences is never below 1 by a race.
func (l *Ledger) Stats() Stats {
	commits := l.commits.Load()
	return Stats{Commits: commits, Records: l.records.Load()}
}

// Size returns the number of durable records.
func (l *Ledger) Size() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.rng.Size()
}

// Root returns the current tree size and root hash.
func (l *Ledger) Root() (uint64, merkle.Hash) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.rng.Size(), l.rng.Root()
}

// Healthy reports nil when appends are accepted, or the LEDGER_UNAVAILABLE
// error they would get.
func (l *Ledger) Healthy() error {
	l.hmu.Lock()
	defer l.hmu.Unlock()
	if len(l.unstamped) > 0 {
		if wait := l.cfg.Now().Sub(l.unstamped[0].at); wait > l.maxUnstamped {
			return unavailable("time-stamping has failed for too long")
		}
	}
	return nil
}

// SetMaxUnstamped replaces Config.MaxUnstamped (d must be positive) while
// the ledger runs: Healthy and Append measure the records waiting for a
// time-stamp against d from now on.
func (l *Ledger) SetMaxUnstamped(d time.Duration) error {
	if d <= 0 {
		return errors.New("ledger: MaxUnstamped must be positive")
	}
	l.hmu.Lock()
	l.maxUnstamped = d
	l.hmu.Unlock()
	return nil
}

// Append logs rec, with body as configured for the local subsystem (body may
// be nil). The Future resolves once the record is durable, or with an error:
// ErrInvalidRecord, ErrClosed, the context's error, or LEDGER_UNAVAILABLE
// (an rpcerr.Error, ready to return to a gRPC caller) when records cannot be
// made durable or time-stamped. rec and body are not retained.
func (l *Ledger) Append(ctx context.Context, rec *ledgerv1.Record, body *ledgerv1.Body) *Future {
	if l.readOnly {
		return resolved(ErrReadOnly)
	}
	if err := ctx.Err(); err != nil {
		return resolved(err)
	}
	if err := validRecord(rec); err != nil {
		return resolved(err)
	}
	if err := l.Healthy(); err != nil {
		return resolved(err)
	}
	p := &pending{
		msgID:   rec.GetMessageId(),
		parties: partiesOf(rec),
		fut:     &Future{done: make(chan struct{})},
	}
	if st := rec.GetStartTime(); st != nil {
		p.start = st.AsTime() // else indexed by append time
	}
	var err error
	if p.rec, err = marshal(rec); err != nil {
		return resolved(fmt.Errorf("%w: %v", ErrInvalidRecord, err))
	}
	p.certs = certSpans(p.rec)
	if kept := l.keep(rec, body); kept != nil {
		if p.body, err = marshal(kept); err != nil {
			return resolved(fmt.Errorf("%w: body: %v", ErrInvalidRecord, err))
		}
	}
	l.closeMu.RLock()
	defer l.closeMu.RUnlock()
	if l.closed {
		return resolved(ErrClosed)
	}
	select {
	case l.in <- p:
		return p.fut
	case <-ctx.Done():
		return resolved(ctx.Err())
	case <-l.stopped:
		return resolved(ErrClosed)
	}
}

func validRecord(rec *ledgerv1.Record) error {
	if rec == nil {
		return fmt.Errorf("%w: nil", ErrInvalidRecord)
	}
	if rec.GetMessageId() == "" {
		return fmt.Errorf("%w: empty message id", ErrInvalidRecord)
	}
	if rec.GetSide() != ledgerv1.Side_SIDE_CONSUMER && rec.GetSide() != ledgerv1.Side_SIDE_PROVIDER {
		return fmt.Errorf("%w: side %v", ErrInvalidRecord, rec.GetSide())
	}
	if rec.GetClient() == "" || rec.GetTarget() == "" {
		return fmt.Errorf("%w: client and target are required", ErrInvalidRecord)
	}
	for _, s := range []string{rec.GetMessageId(), rec.GetClient(), rec.GetTarget(), rec.GetService(), rec.GetUserId()} {
		if strings.IndexByte(s, 0) >= 0 {
			return fmt.Errorf("%w: NUL in identifier", ErrInvalidRecord)
		}
	}
	return nil
}

// BodyMode is what the ledger keeps of the bodies of subsystem local's
// exchanges (Config.BodyModes, else Config.DefaultBodyMode).
func (l *Ledger) BodyMode(local string) BodyMode {
	if mode, ok := l.cfg.BodyModes[local]; ok {
		return mode
	}
	return l.cfg.DefaultBodyMode
}

// KeepsBodies reports whether the ledger keeps anything of some
// subsystem's bodies (a body mode other than off).
func (l *Ledger) KeepsBodies() bool {
	if l.cfg.DefaultBodyMode != BodyOff {
		return true
	}
	for _, m := range l.cfg.BodyModes {
		if m != BodyOff {
			return true
		}
	}
	return false
}

// keep returns what of body the configuration keeps for rec, or nil.
func (l *Ledger) keep(rec *ledgerv1.Record, body *ledgerv1.Body) *ledgerv1.Body {
	if body == nil {
		return nil
	}
	local := rec.GetClient()
	if rec.GetSide() == ledgerv1.Side_SIDE_PROVIDER {
		local = rec.GetTarget()
	}
	switch l.BodyMode(local) {
	case BodyMetadata:
		return &ledgerv1.Body{RequestHeaders: body.GetRequestHeaders(), ResponseHeaders: body.GetResponseHeaders(), ResponseTrailers: body.GetResponseTrailers()}
	case BodyFull:
		return body
	}
	return nil
}
