package gateway

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/sildmesh/sild/internal/peerstatus"
	"github.com/sildmesh/sild/registry/gconf"
)

// maxRecvMsg bounds an answer read through the loopback: a global
// configuration with its catalogues, which the admin API's GetGlobalConfig
// carries twice (signed and decoded).
const maxRecvMsg = 2 * gconf.MaxMessageBytes

// loopback is an in-memory gRPC client connection to a *grpc.Server. The
// server is reached through its ServeHTTP over HTTP/2 without TLS on a
// bufconn listener: the server's interceptors (authentication, roles) run as
// for any call, and its transport credentials (which would need a client
// that trusts the server's certificate) are not involved. Nothing leaves the
// process.
type loopback struct {
	conn *grpc.ClientConn
	hs   *http.Server
	lis  *bufconn.Listener
	done chan struct{}
	once sync.Once
}

func newLoopback(srv *grpc.Server) (*loopback, error) {
	l := &loopback{lis: bufconn.Listen(1 << 20), done: make(chan struct{})}
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	l.hs = &http.Server{Handler: srv, Protocols: &protocols, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(l.done)
		_ = l.hs.Serve(l.lis)
	}()
	conn, err := grpc.NewClient("passthrough:///sild-gateway-loopback",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return l.lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsg)),
		peerstatus.DialOption,
	)
	if err != nil {
		l.hs.Close()
		<-l.done
		return nil, fmt.Errorf("gateway loopback: %w", err)
	}
	l.conn = conn
	return l, nil
}

// Close closes the connection and stops the in-memory server; it waits for
// its goroutine and may be called more than once.
func (l *loopback) Close() {
	l.once.Do(func() {
		l.conn.Close()
		l.hs.Close()
		<-l.done
	})
}
