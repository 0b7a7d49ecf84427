package node

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"

	"github.com/sildmesh/sild/gateway"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/pki"
)

// consumerTLS is the TLS of the consumer listener (Config.ConsumerTLS):
// the listener's configuration and, with RequireClientCert, the client
// certificates each subsystem pins.
type consumerTLS struct {
	config  *tls.Config
	require bool
	pins    map[ident.Subsystem]map[[sha256.Size]byte]bool
	now     func() time.Time
}

// loadConsumerTLS reads the files cfg.ConsumerTLS names (nil if not set).
func loadConsumerTLS(cfg *Config) (*consumerTLS, error) {
	t := cfg.ConsumerTLS
	if t == nil {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("consumer_tls: %w", err)
	}
	ct := &consumerTLS{require: t.RequireClientCert, pins: map[ident.Subsystem]map[[sha256.Size]byte]bool{}, now: time.Now}
	for i, s := range cfg.Subsystems {
		sub, _ := ident.ParseSubsystem(s.ID) // validated
		for _, f := range s.ClientCerts {
			certs, err := readCerts(f)
			if err != nil {
				return nil, fmt.Errorf("subsystems[%d].client_certs: %w", i, err)
			}
			if ct.pins[sub] == nil {
				ct.pins[sub] = map[[sha256.Size]byte]bool{}
			}
			for _, c := range certs {
				ct.pins[sub][sha256.Sum256(c.Raw)] = true
			}
		}
	}
	if ct.require && len(ct.pins) == 0 {
		return nil, errors.New("consumer_tls.require_client_cert: no subsystem pins a client certificate (client_certs)")
	}
	ct.config = &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2", "http/1.1"},
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

// readCerts reads the PEM certificates of file (at least one).
func readCerts(file string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	certs, err := pki.DecodeCerts(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return certs, nil
}

// verifyClient accepts, in the handshake, a client certificate that some
// subsystem pins and that is within its validity period.
func (t *consumerTLS) verifyClient(raw [][]byte, _ [][]*x509.Certificate) error {
	if len(raw) == 0 {
		return errors.New("no client certificate")
	}
	sum := sha256.Sum256(raw[0])
	pinned := false
	for _, pins := range t.pins {
		pinned = pinned || pins[sum]
	}
	if !pinned {
		return errors.New("client certificate not pinned by any subsystem of this node")
	}
	c, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return err
	}
	if now := t.now(); now.Before(c.NotBefore) || now.After(c.NotAfter) {
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
	return t.pins[client][sha256.Sum256(st.PeerCertificates[0].Raw)]
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
