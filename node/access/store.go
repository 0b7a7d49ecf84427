package access

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/proto"

	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	"github.com/sildmesh/sild/ident"
)

// Errors of the store, checked with errors.Is.
var (
	// ErrNotFound is returned by Revoke for a right that does not exist.
	ErrNotFound = errors.New("access right not found")
	// ErrInvalid wraps every validation error of a right or filter.
	ErrInvalid = errors.New("invalid access right")
	// ErrCorrupt is returned by Open when stored data does not decode.
	ErrCorrupt = errors.New("corrupt access store")
)

// keyPrefix starts the Badger key of every right.
const keyPrefix = "ar/"

// Config configures a Store.
type Config struct {
	// Dir is the Badger directory (created if missing).
	Dir string
	// Logger receives Badger's messages and the store's; nil discards them.
	Logger *slog.Logger
	// Now is the clock of GrantedAt; nil means time.Now.
	Now func() time.Time
}

// Store holds a node's access rights. It is safe for concurrent use: writes
// are serialised, Allowed and List read an immutable snapshot.
type Store struct {
	db  *badger.DB
	log *slog.Logger
	now func() time.Time

	mu  sync.Mutex // serialises Grant and Revoke
	idx atomic.Pointer[index]
}

// Open opens (or creates) the store in cfg.Dir and loads every right into
// the in-memory index.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("open access store: Dir is empty")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	opts := badger.DefaultOptions(cfg.Dir).
		WithSyncWrites(true).
		WithLogger(badgerLogger{cfg.Logger}).
		WithMemTableSize(4 << 20).
		WithBlockCacheSize(4 << 20).
		WithIndexCacheSize(4 << 20).
		WithValueLogFileSize(16 << 20).
		WithValueThreshold(4 << 10). // rights are small: keep them in the LSM tree
		WithNumVersionsToKeep(1).
		WithDetectConflicts(false) // writes are serialised by Store.mu
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open access store %s: %w", cfg.Dir, err)
	}
	s := &Store{db: db, log: cfg.Logger, now: cfg.Now}
	idx, n, err := load(db)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open access store %s: %w", cfg.Dir, err)
	}
	s.idx.Store(idx)
	s.log.Info("access rights loaded", "dir", cfg.Dir, "rights", n)
	return s, nil
}

// Close closes the database. The store must not be used afterwards.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close access store: %w", err)
	}
	return nil
}

func load(db *badger.DB) (*index, int, error) {
	idx := &index{services: map[ident.Service]*serviceRights{}}
	n := 0
	err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 100, Prefix: []byte(keyPrefix)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			var p nodev1.AccessRight
			if err := item.Value(func(v []byte) error { return proto.Unmarshal(v, &p) }); err != nil {
				return fmt.Errorf("%w: key %q: %v", ErrCorrupt, item.Key(), err)
			}
			r, err := RightFromProto(&p, "right")
			if err != nil {
				return fmt.Errorf("%w: key %q: %v", ErrCorrupt, item.Key(), err)
			}
			if string(item.Key()) != string(key(r)) {
				return fmt.Errorf("%w: key %q holds right %s", ErrCorrupt, item.Key(), r)
			}
			idx.services[r.Service] = idx.services[r.Service].with(r)
			n++
		}
		return nil
	})
	return idx, n, err
}

// key is the Badger key of r: prefix, service, method and client, so that
// the rights of one service sort together.
func key(r Right) []byte {
	kind := "s"
	if r.Client.IsGroup() {
		kind = "g"
	}
	return []byte(keyPrefix + r.Service.String() + "\x00" + r.Method + "\x00" + kind + r.Client.String())
}

func invalid(err error) error { return fmt.Errorf("%w: %w", ErrInvalid, err) }

// Grant stores r (its GrantedAt is set to now) and returns it. If the same
// right exists already, Grant returns the stored one and created false and
// writes nothing. The right is durable when Grant returns.
func (s *Store) Grant(r Right) (stored Right, created bool, err error) {
	if err := r.Validate(); err != nil {
		return Right{}, false, invalid(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	idx := s.idx.Load()
	if at, ok := idx.services[r.Service].lookup(r.Client, r.Method); ok {
		r.GrantedAt = at
		return r, false, nil
	}
	r.GrantedAt = s.now().UTC()
	val, err := proto.MarshalOptions{Deterministic: true}.Marshal(r.Proto())
	if err != nil {
		return Right{}, false, fmt.Errorf("grant %s: %w", r, err)
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(key(r), val) }); err != nil {
		return Right{}, false, fmt.Errorf("grant %s: %w", r, err)
	}
	s.idx.Store(idx.replace(r.Service, idx.services[r.Service].with(r)))
	s.log.Info("access granted", "client", r.Client.String(), "service", r.Service.String(), "method", r.Method)
	return r, true, nil
}

// Revoke removes exactly the right r names (client, service, method;
// GrantedAt is ignored), or returns ErrNotFound. Revoking a whole-service
// right leaves per-method rights in place. The removal is durable when Revoke
// returns.
func (s *Store) Revoke(r Right) error {
	if err := r.Validate(); err != nil {
		return invalid(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	idx := s.idx.Load()
	sr := idx.services[r.Service]
	if _, ok := sr.lookup(r.Client, r.Method); !ok {
		return fmt.Errorf("revoke %s: %w", r, ErrNotFound)
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(key(r)) }); err != nil {
		return fmt.Errorf("revoke %s: %w", r, err)
	}
	s.idx.Store(idx.replace(r.Service, sr.without(r)))
	s.log.Info("access revoked", "client", r.Client.String(), "service", r.Service.String(), "method", r.Method)
	return nil
}

// Filter selects rights in List. Zero fields match everything.
type Filter struct {
	// Client matches rights granted to exactly this client (a subsystem
	// filter does not match rights of the groups the subsystem is in).
	Client *Client
	// Subsystem matches rights on services of this provider subsystem.
	Subsystem *ident.Subsystem
	// Service matches rights on this service.
	Service *ident.Service
	// Method matches rights on this one method (not whole-service rights).
	Method string
}

// Validate reports whether the fields set in f are well formed.
func (f Filter) Validate() error {
	if f.Client != nil {
		if err := f.Client.Validate(); err != nil {
			return fieldErr("client", err)
		}
	}
	if f.Subsystem != nil {
		if err := f.Subsystem.Validate(); err != nil {
			return fieldErr("subsystem", err)
		}
	}
	if f.Service != nil {
		if err := f.Service.Validate(); err != nil {
			return fieldErr("service", err)
		}
	}
	if f.Method != "" {
		if err := ident.CheckMethodName(f.Method); err != nil {
			return fieldErr("method_name", err)
		}
	}
	return nil
}

// List returns the rights matching f, sorted by service, method and client.
func (s *Store) List(f Filter) ([]Right, error) {
	if err := f.Validate(); err != nil {
		return nil, invalid(err)
	}
	var out []Right
	idx := s.idx.Load()
	for svc, sr := range idx.services {
		if f.Service != nil && svc != *f.Service {
			continue
		}
		if f.Subsystem != nil && svc.Subsystem != *f.Subsystem {
			continue
		}
		add := func(method string, cs clientSet) {
			if f.Method != "" && method != f.Method {
				return
			}
			for sub, at := range cs.subs {
				if f.Client == nil || (!f.Client.IsGroup() && f.Client.Subsystem == sub) {
					out = append(out, Right{Client: Client{Subsystem: sub}, Service: svc, Method: method, GrantedAt: at})
				}
			}
			for g, at := range cs.groups {
				if f.Client == nil || (f.Client.IsGroup() && f.Client.Group.String() == g) {
					gr, _ := ParseGroup(g)
					out = append(out, Right{Client: Client{Group: gr}, Service: svc, Method: method, GrantedAt: at})
				}
			}
		}
		add("", sr.all)
		for m, cs := range sr.methods {
			add(m, cs)
		}
	}
	slices.SortFunc(out, func(a, b Right) int {
		if c := strings.Compare(a.Service.String(), b.Service.String()); c != 0 {
			return c
		}
		if c := strings.Compare(a.Method, b.Method); c != 0 {
			return c
		}
		return strings.Compare(a.Client.String(), b.Client.String())
	})
	return out, nil
}

// Allowed reports whether client, a member of the global groups
// clientGroups (each INSTANCE:CODE, as from MemberGroups), may call method of
// target: by a right on the whole service or on that method, granted to the
// client itself or to one of its groups. It takes no lock and does not
// allocate. An empty method matches whole-service rights only.
func (s *Store) Allowed(client ident.Subsystem, clientGroups []string, target ident.Service, method string) bool {
	sr := s.idx.Load().services[target]
	if sr == nil {
		return false
	}
	if sr.all.has(client, clientGroups) {
		return true
	}
	if method == "" {
		return false
	}
	cs, ok := sr.methods[method]
	return ok && cs.has(client, clientGroups)
}

// AllowedMethods reports what client (with clientGroups) may call of target:
// all is true if every method is allowed; otherwise methods lists the
// methods granted one by one, sorted.
func (s *Store) AllowedMethods(client ident.Subsystem, clientGroups []string, target ident.Service) (all bool, methods []string) {
	sr := s.idx.Load().services[target]
	if sr == nil {
		return false, nil
	}
	if sr.all.has(client, clientGroups) {
		return true, nil
	}
	for m, cs := range sr.methods {
		if cs.has(client, clientGroups) {
			methods = append(methods, m)
		}
	}
	slices.Sort(methods)
	return false, methods
}

// index is an immutable snapshot of all rights, by service.
type index struct {
	services map[ident.Service]*serviceRights
}

// replace returns a copy of idx with the rights of svc replaced (removed if
// sr is empty).
func (idx *index) replace(svc ident.Service, sr *serviceRights) *index {
	out := &index{services: make(map[ident.Service]*serviceRights, len(idx.services)+1)}
	for k, v := range idx.services {
		out.services[k] = v
	}
	if sr.empty() {
		delete(out.services, svc)
	} else {
		out.services[svc] = sr
	}
	return out
}

// serviceRights are the rights on one service; immutable once published.
type serviceRights struct {
	all     clientSet
	methods map[string]clientSet
}

// clientSet holds clients with the time each was granted.
type clientSet struct {
	subs   map[ident.Subsystem]time.Time
	groups map[string]time.Time // by Group.String()
}

func (cs clientSet) has(client ident.Subsystem, groups []string) bool {
	if _, ok := cs.subs[client]; ok {
		return true
	}
	if len(cs.groups) == 0 {
		return false
	}
	for _, g := range groups {
		if _, ok := cs.groups[g]; ok {
			return true
		}
	}
	return false
}

func (cs clientSet) get(c Client) (time.Time, bool) {
	if c.IsGroup() {
		t, ok := cs.groups[c.Group.String()]
		return t, ok
	}
	t, ok := cs.subs[c.Subsystem]
	return t, ok
}

func (cs clientSet) len() int { return len(cs.subs) + len(cs.groups) }

func (cs clientSet) clone() clientSet {
	out := clientSet{subs: make(map[ident.Subsystem]time.Time, len(cs.subs)), groups: make(map[string]time.Time, len(cs.groups))}
	for k, v := range cs.subs {
		out.subs[k] = v
	}
	for k, v := range cs.groups {
		out.groups[k] = v
	}
	return out
}

func (sr *serviceRights) empty() bool {
	return sr == nil || (sr.all.len() == 0 && len(sr.methods) == 0)
}

func (sr *serviceRights) lookup(c Client, method string) (time.Time, bool) {
	if sr == nil {
		return time.Time{}, false
	}
	if method == "" {
		return sr.all.get(c)
	}
	return sr.methods[method].get(c)
}

// clone copies sr's top level and the client set of method (the only one
// about to change); other client sets are shared, being immutable.
func (sr *serviceRights) clone(method string) *serviceRights {
	out := &serviceRights{methods: map[string]clientSet{}}
	if sr != nil {
		out.all = sr.all
		for m, cs := range sr.methods {
			out.methods[m] = cs
		}
	}
	if method == "" {
		out.all = out.all.clone()
	} else {
		out.methods[method] = out.methods[method].clone()
	}
	return out
}

// with returns a copy of sr with r added.
func (sr *serviceRights) with(r Right) *serviceRights {
	out := sr.clone(r.Method)
	cs := out.all
	if r.Method != "" {
		cs = out.methods[r.Method]
	}
	if r.Client.IsGroup() {
		cs.groups[r.Client.Group.String()] = r.GrantedAt
	} else {
		cs.subs[r.Client.Subsystem] = r.GrantedAt
	}
	return out
}

// without returns a copy of sr with r removed.
func (sr *serviceRights) without(r Right) *serviceRights {
	out := sr.clone(r.Method)
	cs := out.all
	if r.Method != "" {
		cs = out.methods[r.Method]
	}
	if r.Client.IsGroup() {
		delete(cs.groups, r.Client.Group.String())
	} else {
		delete(cs.subs, r.Client.Subsystem)
	}
	if r.Method != "" && cs.len() == 0 {
		delete(out.methods, r.Method)
	}
	return out
}

// badgerLogger sends Badger's messages to slog.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	b.l.Error(strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "badger")
}
func (b badgerLogger) Warningf(f string, a ...any) {
	b.l.Warn(strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "badger")
}
func (b badgerLogger) Infof(f string, a ...any) {
	b.l.Debug(strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "badger")
}
func (b badgerLogger) Debugf(f string, a ...any) {
	b.l.Debug(strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "badger")
}
