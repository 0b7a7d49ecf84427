// Package raftstore is the registry's durable Raft state: a hashicorp/raft
// LogStore and StableStore on one Badger v4 database, opened with SyncWrites so
// that a log entry or a vote is on disk before raft is told it is stored.
//
// Usage:
//
//	st, err := raftstore.Open(filepath.Join(dataDir, "raft"), logger)
//	if err != nil { ... }
//	defer st.Close() // after raft.Shutdown().Error()
//	r, err := raft.NewRaft(conf, fsm, st, st, snaps, transport)
//
// Keys: log entries live under "l" + 8-byte big-endian index (so Badger's key
// order is index order and first/last are one iterator seek each), stable
// values under "s" + key. Entries are stored in a compact binary encoding of
// raft.Log (see encodeLog) that keeps every field, AppendedAt and Extensions
// included. The first and last index are cached in memory and kept up to date
// by StoreLogs and DeleteRange, so FirstIndex and LastIndex cost a mutex.
//
// Concurrency: all methods are safe for concurrent use. Durability: when
// StoreLog, StoreLogs, DeleteRange, Set or SetUint64 return nil the change is
// synced to disk. A missing stable key makes Get and GetUint64 return
// ErrKeyNotFound, whose text is exactly "not found" as raft expects.
package raftstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
)

// ErrKeyNotFound is returned by Get and GetUint64 for a key never set. Its text
// is "not found" because raft recognises a missing key by that string.
var ErrKeyNotFound = errors.New("not found")

// ErrClosed is returned by every method after Close.
var ErrClosed = errors.New("raftstore: closed")

var (
	prefixLog    = []byte("l")
	prefixStable = []byte("s")
)

// gcInterval is how often the value log is garbage-collected. Entries up to
// Badger's value threshold (1 MiB) live in the LSM tree and are reclaimed by
// compaction; only larger ones need value-log GC.
const gcInterval = 5 * time.Minute

// Store is a raft.LogStore and raft.StableStore on Badger.
type Store struct {
	db     *badger.DB
	logger *slog.Logger

	mu     sync.Mutex // serialises log writes and guards first, last, closed
	first  uint64     // 0 when there are no logs
	last   uint64
	closed bool

	stop chan struct{}
	done chan struct{}
}

var (
	_ raft.LogStore    = (*Store)(nil)
	_ raft.StableStore = (*Store)(nil)
)

// Open opens (creating if needed) the store in dir. logger receives Badger's
// messages; nil discards them.
func Open(dir string, logger *slog.Logger) (*Store, error) {
	if dir == "" {
		return nil, errors.New("open raft store: empty dir")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	opts := badger.DefaultOptions(dir).
		WithSyncWrites(true).
		WithLogger(badgerLogger{logger}).
		WithMemTableSize(16 << 20).
		WithBlockCacheSize(16 << 20).
		WithValueLogFileSize(128 << 20).
		WithNumVersionsToKeep(1).
		WithDetectConflicts(false) // writes are serialised by Store.mu
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open raft store %s: %w", dir, err)
	}
	s := &Store{db: db, logger: logger, stop: make(chan struct{}), done: make(chan struct{})}
	if err := db.View(func(txn *badger.Txn) error {
		s.first, s.last = bounds(txn)
		return nil
	}); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open raft store %s: %w", dir, err)
	}
	go s.gcLoop()
	return s, nil
}

// Close stops the background value-log GC and closes the database. It is safe
// to call more than once.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	<-s.done
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close raft store: %w", err)
	}
	return nil
}

func (s *Store) gcLoop() {
	defer close(s.done)
	t := time.NewTicker(gcInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		for {
			select {
			case <-s.stop:
				return
			default:
			}
			err := s.db.RunValueLogGC(0.5)
			if err != nil {
				if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
					s.logger.Warn("raft store value log gc", "err", err)
				}
				break
			}
		}
	}
}

// FirstIndex returns the first stored log index, or 0 if there are none.
func (s *Store) FirstIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	return s.first, nil
}

// LastIndex returns the last stored log index, or 0 if there are none.
func (s *Store) LastIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	return s.last, nil
}

// GetLog fills log with the entry at index, or returns raft.ErrLogNotFound.
func (s *Store) GetLog(index uint64, log *raft.Log) error {
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(logKey(index))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error { return decodeLog(v, log) })
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, badger.ErrKeyNotFound):
		return raft.ErrLogNotFound
	case errors.Is(err, badger.ErrDBClosed):
		return ErrClosed
	}
	return fmt.Errorf("get log %d: %w", index, err)
}

// StoreLog stores one entry durably.
func (s *Store) StoreLog(log *raft.Log) error {
	return s.StoreLogs([]*raft.Log{log})
}

// StoreLogs stores entries durably, in one synced transaction unless they are
// too large for one, in which case they are written in order in several; after
// an error a prefix of logs may be stored.
func (s *Store) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	txn := s.db.NewTransaction(true)
	defer func() { txn.Discard() }()
	lo, hi := s.first, s.last
	var buf []byte
	for i, l := range logs {
		buf = appendLog(buf[:0], l)
		// Badger keeps the value slice until commit: give each entry its own.
		val := bytes.Clone(buf)
		e := badger.NewEntry(logKey(l.Index), val)
		err := txn.SetEntry(e)
		if errors.Is(err, badger.ErrTxnTooBig) && i > 0 {
			if err = txn.Commit(); err != nil {
				return fmt.Errorf("store logs: %w", err)
			}
			s.first, s.last = lo, hi
			txn = s.db.NewTransaction(true)
			err = txn.SetEntry(e)
		}
		if err != nil {
			return fmt.Errorf("store log %d: %w", l.Index, err)
		}
		if lo == 0 || l.Index < lo {
			lo = l.Index
		}
		if l.Index > hi {
			hi = l.Index
		}
	}
	if err := txn.Commit(); err != nil {
		return fmt.Errorf("store logs: %w", err)
	}
	s.first, s.last = lo, hi
	return nil
}

// DeleteRange deletes the entries with min <= index <= max (compaction of the
// head, or removal of a conflicting tail).
func (s *Store) DeleteRange(min, max uint64) error {
	if min > max {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	defer func() {
		// Recompute the bounds from disk whatever happened: a failed delete
		// may have committed a part of the range.
		if err := s.db.View(func(txn *badger.Txn) error {
			s.first, s.last = bounds(txn)
			return nil
		}); err != nil {
			s.logger.Error("raft store: reading log bounds", "err", err)
		}
	}()
	// Collect keys in chunks and delete each chunk in its own transaction, so
	// a compaction of millions of entries stays under Badger's txn limits.
	const chunk = 10000
	from := min
	for {
		var keys [][]byte
		err := s.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: prefixLog})
			defer it.Close()
			for it.Seek(logKey(from)); it.Valid() && len(keys) < chunk; it.Next() {
				k := it.Item().KeyCopy(nil)
				if logIndex(k) > max {
					break
				}
				keys = append(keys, k)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("delete range %d-%d: %w", min, max, err)
		}
		if len(keys) == 0 {
			return nil
		}
		wb := s.db.NewWriteBatch()
		for _, k := range keys {
			if err := wb.Delete(k); err != nil {
				wb.Cancel()
				return fmt.Errorf("delete range %d-%d: %w", min, max, err)
			}
		}
		if err := wb.Flush(); err != nil {
			return fmt.Errorf("delete range %d-%d: %w", min, max, err)
		}
		last := logIndex(keys[len(keys)-1])
		if len(keys) < chunk || last >= max {
			return nil
		}
		from = last + 1
	}
}

// Set stores val under key durably.
func (s *Store) Set(key, val []byte) error {
	err := s.db.Update(func(txn *badger.Txn) error {
		return txn.Set(stableKey(key), bytes.Clone(val))
	})
	if errors.Is(err, badger.ErrDBClosed) {
		return ErrClosed
	}
	if err != nil {
		return fmt.Errorf("set %q: %w", key, err)
	}
	return nil
}

// Get returns the value stored under key, or ErrKeyNotFound.
func (s *Store) Get(key []byte) ([]byte, error) {
	var val []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(stableKey(key))
		if err != nil {
			return err
		}
		val, err = item.ValueCopy(nil)
		return err
	})
	switch {
	case err == nil:
		if val == nil {
			val = []byte{}
		}
		return val, nil
	case errors.Is(err, badger.ErrKeyNotFound):
		return nil, ErrKeyNotFound
	case errors.Is(err, badger.ErrDBClosed):
		return nil, ErrClosed
	}
	return nil, fmt.Errorf("get %q: %w", key, err)
}

// SetUint64 stores val under key durably.
func (s *Store) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 returns the number stored under key, or 0 and ErrKeyNotFound.
func (s *Store) GetUint64(key []byte) (uint64, error) {
	v, err := s.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("get uint64 %q: value has %d bytes, want 8", key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// bounds returns the first and last log index on disk (0, 0 if none).
func bounds(txn *badger.Txn) (first, last uint64) {
	it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: prefixLog})
	it.Seek(logKey(0))
	if it.Valid() {
		first = logIndex(it.Item().Key())
	}
	it.Close()
	if first == 0 {
		return 0, 0
	}
	rit := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: prefixLog, Reverse: true})
	defer rit.Close()
	rit.Seek(logKey(^uint64(0)))
	if rit.Valid() {
		last = logIndex(rit.Item().Key())
	}
	return first, last
}

func logKey(i uint64) []byte {
	return binary.BigEndian.AppendUint64(append(make([]byte, 0, 9), prefixLog...), i)
}

func logIndex(k []byte) uint64 { return binary.BigEndian.Uint64(k[len(prefixLog):]) }

func stableKey(k []byte) []byte {
	return append(append(make([]byte, 0, len(prefixStable)+len(k)), prefixStable...), k...)
}

// badgerLogger sends Badger's printf-style messages to slog. Badger is chatty
// at info level (compactions, table flushes), so that goes to debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	b.l.Error(trim(fmt.Sprintf(f, a...)), "component", "badger")
}
func (b badgerLogger) Warningf(f string, a ...any) {
	b.l.Warn(trim(fmt.Sprintf(f, a...)), "component", "badger")
}
func (b badgerLogger) Infof(f string, a ...any) {
	b.l.Debug(trim(fmt.Sprintf(f, a...)), "component", "badger")
}
func (b badgerLogger) Debugf(f string, a ...any) {
	b.l.Debug(trim(fmt.Sprintf(f, a...)), "component", "badger")
}

func trim(s string) string {
	for len(s) > 0 && s[len(s)-1] == '\n' {
		s = s[:len(s)-1]
	}
	return s
}
