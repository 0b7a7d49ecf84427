package registry

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// tlsStream is a raft.StreamLayer whose connections are mTLS between
// registry servers: the listener demands a registry SVID of our trust domain
// and so does the dialer. It can be cut off (SetPartitioned) to inject a
// network partition: open connections are closed and new ones refused.
type tlsStream struct {
	net.Listener
	client *tls.Config

	mu    sync.Mutex
	cut   bool
	conns map[*trackedConn]struct{}
}

var _ raft.StreamLayer = (*tlsStream)(nil)

var errPartitioned = errors.New("partitioned")

func (s *tlsStream) Accept() (net.Conn, error) {
	for {
		c, err := s.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if tc := s.track(c); tc != nil {
			return tc, nil
		}
	}
}

func (s *tlsStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	s.mu.Lock()
	cut := s.cut
	s.mu.Unlock()
	if cut {
		return nil, fmt.Errorf("raft dial %s: %w", addr, errPartitioned)
	}
	d := &net.Dialer{Timeout: timeout}
	c, err := tls.DialWithDialer(d, "tcp", string(addr), s.client)
	if err != nil {
		return nil, fmt.Errorf("raft dial %s: %w", addr, err)
	}
	if tc := s.track(c); tc != nil {
		return tc, nil
	}
	return nil, fmt.Errorf("raft dial %s: %w", addr, errPartitioned)
}

// track registers c, or closes it and returns nil when cut off.
func (s *tlsStream) track(c net.Conn) *trackedConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cut {
		c.Close()
		return nil
	}
	if s.conns == nil {
		s.conns = map[*trackedConn]struct{}{}
	}
	tc := &trackedConn{Conn: c, s: s}
	s.conns[tc] = struct{}{}
	return tc
}

// setCut cuts the layer off (closing every open connection) or heals it.
func (s *tlsStream) setCut(cut bool) {
	s.mu.Lock()
	s.cut = cut
	var open []*trackedConn
	if cut {
		for c := range s.conns {
			open = append(open, c)
		}
	}
	s.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
}

type trackedConn struct {
	net.Conn
	s *tlsStream
}

func (c *trackedConn) Close() error {
	c.s.mu.Lock()
	delete(c.s.conns, c)
	c.s.mu.Unlock()
	return c.Conn.Close()
}

// hclogger adapts raft's hclog output to slog: every line raft writes becomes
// one slog record at the level raft gave it.
func hclogger(l *slog.Logger, name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      hclog.Info,
		Output:     slogWriter{l},
		JSONFormat: false,
		TimeFn:     func() time.Time { return time.Time{} },
		TimeFormat: " ",
	})
}

type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	switch {
	case strings.Contains(line, "[ERROR]"):
		level = slog.LevelError
	case strings.Contains(line, "[WARN]"):
		level = slog.LevelWarn
	case strings.Contains(line, "[DEBUG]"), strings.Contains(line, "[TRACE]"):
		level = slog.LevelDebug
	}
	for _, tag := range []string{"[ERROR]", "[WARN]", "[INFO]", "[DEBUG]", "[TRACE]"} {
		line = strings.TrimSpace(strings.Replace(line, tag, "", 1))
	}
	w.l.Log(context.Background(), level, line)
	return len(p), nil
}

var _ io.Writer = slogWriter{}
