package node

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"

	"github.com/sildmesh/sild/gateway"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/pki"
)

// consumerTLSReload is how often the consumer listener's certificate files
// are checked for changes.
var consumerTLSReload = 10 * time.Second

// consumerTLS is the TLS of the consumer listener (Config.ConsumerTLS):
// the listener's configuration and, with RequireClientCert, the client
// certificates each subsystem pins. The files are read at start and again
// when they change (reload), so that certificates can be replaced without
// a restart.
type consumerTLS struct {
	config  *tls.Config
	require bool

	certFile, keyFile string
	pinFiles          []pinSource
	state             atomic.Pointer[tlsState]
}

// pinSource is the client_certs of the subsystem at index in the
// configuration.
type pinSource struct {
	sub   ident.Subsystem
	index int
	files []string
}

// tlsState is what the files held when last read.
type tlsState struct {
	cert  *tls.Certificate
	pins  map[ident.Subsystem]map[[sha256.Size]byte]bool
	stamp string // the files' sizes and modification times
}

// loadConsumerTLS reads the files cfg.ConsumerTLS names (nil if not set).
func loadConsumerTLS(cfg *Config) (*consumerTLS, error) {
	t := cfg.ConsumerTLS
	if t == nil {
		return nil, nil
	}
	ct := &consumerTLS{require: t.RequireClientCert, certFile: t.CertFile, keyFile: t.KeyFile}
	for i, s := range cfg.Subsystems {
		if len(s.ClientCerts) > 0 {
			sub, _ := ident.ParseSubsystem(s.ID) // validated
			ct.pinFiles = append(ct.pinFiles, pinSource{sub: sub, index: i, files: s.ClientCerts})
		}
	}
	if ct.require && len(ct.pinFiles) == 0 {
		return nil, errors.New("consumer_tls.require_client_cert: no subsystem pins a client certificate (client_certs)")
	}
	st, err := ct.read()
	if err != nil {
		return nil, err
	}
	ct.state.Store(st)
	ct.config = &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return ct.state.Load().cert, nil },
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1"},
	}
	if ct.require {
		ct.config.ClientAuth = tls.RequireAnyClientCert
		ct.config.VerifyPeerCertificate = ct.verifyClient
	}
	// gRPC clients offer only h2. HTTP clients (curl, browsers, Java's
	// HttpClient) offer http/1.1 as well: they get HTTP/1.1, which the
	// REST bridge on this port serves (gateway.SplitListener).
	http1 := ct.config.Clone()
	http1.NextProtos = []string{"http/1.1"}
	ct.config.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		if slices.Contains(h.SupportedProtos, "http/1.1") {
			return http1, nil
		}
		return nil, nil
	}
	return ct, nil
}

// read reads every file; errors name the setting.
func (t *consumerTLS) read() (*tlsState, error) {
	stamp := t.stamp()
	cert, err := tls.LoadX509KeyPair(t.certFile, t.keyFile)
	if err != nil {
		return nil, fmt.Errorf("consumer_tls: %w", err)
	}
	st := &tlsState{cert: &cert, pins: map[ident.Subsystem]map[[sha256.Size]byte]bool{}, stamp: stamp}
	for _, p := range t.pinFiles {
		st.pins[p.sub] = map[[sha256.Size]byte]bool{}
		for _, f := range p.files {
			certs, err := pki.ReadCerts(f)
			if err != nil {
				return nil, fmt.Errorf("subsystems[%d].client_certs: %w", p.index, err)
			}
			for _, c := range certs {
				st.pins[p.sub][sha256.Sum256(c.Raw)] = true
			}
		}
	}
	return st, nil
}

// stamp describes the files' sizes and modification times (a file that
// cannot be read is left for read to name).
func (t *consumerTLS) stamp() string {
	files := []string{t.certFile, t.keyFile}
	for _, p := range t.pinFiles {
		files = append(files, p.files...)
	}
	slices.Sort(files)
	var b strings.Builder
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil {
			fmt.Fprintf(&b, "%s %d %d\n", f, fi.Size(), fi.ModTime().UnixNano())
		} else {
			fmt.Fprintf(&b, "%s missing\n", f)
		}
	}
	return b.String()
}

// reload reads the files again if any changed since they were last read,
// and reports whether it did. On an error the certificates in use stay.
func (t *consumerTLS) reload() (bool, error) {
	if t.stamp() == t.state.Load().stamp {
		return false, nil
	}
	st, err := t.read()
	if err != nil {
		return false, err
	}
	t.state.Store(st)
	return true, nil
}

// watch reloads the files every interval until ctx ends.
func (t *consumerTLS) watch(ctx context.Context, interval time.Duration, log *slog.Logger) {
	tk := time.NewTicker(interval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
			switch ok, err := t.reload(); {
			case err != nil:
				log.Warn("consumer TLS files changed but cannot be used; keeping the certificates in use", "err", err)
			case ok:
				log.Info("consumer TLS certificates reloaded")
			}
		}
	}
}

// verifyClient accepts, in the handshake, a client certificate that some
// subsystem pins and that is within its validity period.
func (t *consumerTLS) verifyClient(raw [][]byte, _ [][]*x509.Certificate) error {
	if len(raw) == 0 {
		return errors.New("no client certificate")
	}
	sum := sha256.Sum256(raw[0])
	pinned := false
	for _, pins := range t.state.Load().pins {
		pinned = pinned || pins[sum]
	}
	if !pinned {
		return errors.New("client certificate not pinned by any subsystem of this node")
	}
	c, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return err
	}
	if now := time.Now(); now.Before(c.NotBefore) || now.After(c.NotAfter) {
		return errors.New("client certificate expired or not yet valid")
	}
	return nil
}

// mayCallAs reports whether a caller on a connection of state st may
// speak for client.
func (t *consumerTLS) mayCallAs(st *tls.ConnectionState, client ident.Subsystem) bool {
	if !t.require {
		return true
	}
	if st == nil || len(st.PeerCertificates) == 0 {
		return false
	}
	return t.state.Load().pins[client][sha256.Sum256(st.PeerCertificates[0].Raw)]
}

// grpcMayCallAs is exchange.Config.MayCallAs. A call without transport
// credentials can only come from the REST bridge in this process (every
// connection of the TLS listener has them), which checked its caller with
// restMayCallAs.
func (t *consumerTLS) grpcMayCallAs(ctx context.Context, client ident.Subsystem) bool {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	switch ai := p.AuthInfo.(type) {
	case nil:
		return true
	case credentials.TLSInfo:
		return t.mayCallAs(&ai.State, client)
	}
	return false
}

// restMayCallAs is gateway.ConsumerConfig.MayCallAs.
func (t *consumerTLS) restMayCallAs(r *http.Request, client ident.Subsystem) bool {
	return t.mayCallAs(gateway.PeerTLS(r), client)
}

// handshaken are the transport credentials of the consumer's gRPC server,
// whose connections come from the TLS listener with the handshake done:
// they pass each connection on with its TLS state as the peer's AuthInfo.
type handshaken struct {
	credentials.TransportCredentials
}

func newHandshaken() credentials.TransportCredentials {
	return handshaken{insecure.NewCredentials()}
}

func (handshaken) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	st := gateway.ConnTLS(c)
	if st == nil {
		return nil, nil, errors.New("consumer listener: connection without TLS")
	}
	return c, credentials.TLSInfo{State: *st, CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

func (handshaken) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (h handshaken) Clone() credentials.TransportCredentials { return h }
