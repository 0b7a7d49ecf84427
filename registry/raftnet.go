package registry

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// tlsStream is a raft.StreamLayer whose connections are mTLS between
// registry servers: the listener demands a registry SVID of our trust domain
// and so does the dialer.
type tlsStream struct {
	net.Listener
	client *tls.Config
}

var _ raft.StreamLayer = (*tlsStream)(nil)

func (s *tlsStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	c, err := tls.DialWithDialer(d, "tcp", string(addr), s.client)
	if err != nil {
		return nil, fmt.Errorf("raft dial %s: %w", addr, err)
	}
	return c, nil
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
