package gateway

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// preface opens every HTTP/2 connection (and so every gRPC one).
const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// sniffTimeout bounds the wait for a new connection's first bytes.
const sniffTimeout = 10 * time.Second

// SplitListener divides the connections accepted on ln by their first
// bytes: those that open with the HTTP/2 client preface (gRPC, h2c) go to
// grpcLn, all others (HTTP/1.x: the REST bridge) to httpLn. So a member's
// gRPC stub and its legacy REST client use the same port, and gRPC keeps
// grpc.Server's own transport. Closing one listener refuses its new
// connections; ln is closed once both are. Should ln fail, both fail.
// The connections are plaintext: put TLS in front of ln, not behind.
func SplitListener(ln net.Listener) (grpcLn, httpLn net.Listener) {
	s := &splitter{ln: ln, done: make(chan struct{})}
	s.h2 = &subListener{s: s, ch: make(chan net.Conn), closed: make(chan struct{})}
	s.h1 = &subListener{s: s, ch: make(chan net.Conn), closed: make(chan struct{})}
	go s.run()
	return s.h2, s.h1
}

type splitter struct {
	ln     net.Listener
	h2, h1 *subListener
	done   chan struct{} // closed when ln fails or is closed
	once   sync.Once
	subs   atomic.Int32 // sub-listeners closed
}

func (s *splitter) close() {
	s.once.Do(func() {
		close(s.done)
		s.ln.Close()
	})
}

func (s *splitter) run() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.close()
			return
		}
		go s.route(c)
	}
}

// route reads as much of the preface as the connection sends and hands it
// to the listener it belongs to, with the bytes read put back.
func (s *splitter) route(c net.Conn) {
	buf := make([]byte, len(preface))
	n := 0
	_ = c.SetReadDeadline(time.Now().Add(sniffTimeout))
	for n < len(buf) && bytes.HasPrefix([]byte(preface), buf[:n]) {
		m, err := c.Read(buf[n:])
		n += m
		if err != nil {
			c.Close()
			return
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	dst := s.h1
	if n == len(preface) && string(buf) == preface {
		dst = s.h2
	}
	pc := &prefixConn{Conn: c, r: io.MultiReader(bytes.NewReader(buf[:n]), c)}
	select {
	case dst.ch <- pc:
	case <-dst.closed:
		c.Close()
	case <-s.done:
		c.Close()
	}
}

type subListener struct {
	s      *splitter
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func (l *subListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	case <-l.s.done:
		return nil, net.ErrClosed
	}
}

func (l *subListener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		if l.s.subs.Add(1) == 2 {
			l.s.close()
		}
	})
	return nil
}

func (l *subListener) Addr() net.Addr { return l.s.ln.Addr() }

// prefixConn is a connection whose first bytes were already read.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(p []byte) (int, error) { return c.r.Read(p) }
