// Package mesh starts sild's components in-process on 127.0.0.1 — registry
// clusters (optionally federated), nodes joined through the real join flow,
// and member backends — for `sild demo`, `sild bench` and tests. Everything
// is real (Raft on Badger, mTLS with SPIFFE SVIDs, signed and durable
// ledgers); nothing depends on package testing.
//
// A Mesh owns what it starts: Close stops it all, in reverse order.
package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// stopTimeout bounds how long one component may take to stop.
const stopTimeout = 30 * time.Second

// Mesh is a set of components running in this process.
type Mesh struct {
	// Dir holds the state of every component, one folder each.
	Dir string
	// Logger receives the components' logs.
	Logger *slog.Logger

	mu      sync.Mutex
	closers []func() error
}

// New returns an empty mesh keeping state under dir; logger may be nil.
func New(dir string, logger *slog.Logger) *Mesh {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Mesh{Dir: dir, Logger: logger}
}

// OnClose registers fn to run at Close, in reverse order of registration.
func (m *Mesh) OnClose(fn func() error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closers = append(m.closers, fn)
}

// Close stops everything the mesh started and returns their errors.
func (m *Mesh) Close() error {
	m.mu.Lock()
	cs := m.closers
	m.closers = nil
	m.mu.Unlock()
	var errs []error
	for i := len(cs) - 1; i >= 0; i-- {
		errs = append(errs, cs[i]())
	}
	return errors.Join(errs...)
}

// run runs fn in a goroutine until Close, which cancels its context and
// waits for it to return.
func (m *Mesh) run(name string, fn func(ctx context.Context) error) <-chan error {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	stopped := make(chan struct{})
	go func() {
		err := fn(ctx)
		done <- err
		close(stopped)
	}()
	m.OnClose(func() error {
		cancel()
		select {
		case <-stopped:
			select {
			case err := <-done:
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
			default:
			}
			return nil
		case <-time.After(stopTimeout):
			return fmt.Errorf("%s did not stop within %s", name, stopTimeout)
		}
	})
	return done
}

// StartBackend serves a member backend on 127.0.0.1 with the services
// register adds, until Close. It returns the address.
func (m *Mesh) StartBackend(register func(*grpc.Server), opts ...grpc.ServerOption) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("backend listener: %w", err)
	}
	s := grpc.NewServer(opts...)
	register(s)
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	m.OnClose(func() error {
		s.Stop()
		if err := <-done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("backend: %w", err)
		}
		return nil
	})
	return ln.Addr().String(), nil
}

// WaitFor polls cond every 20 ms until it holds, ctx ends or d passes.
func WaitFor(ctx context.Context, d time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not after %s", what, d)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}
