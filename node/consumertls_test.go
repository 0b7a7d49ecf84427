package node_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	metav1 "github.com/sildmesh/sild/gen/sild/meta/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node"
	"github.com/sildmesh/sild/registry/registrytest"
)

// tlsFiles is a self-signed certificate and its key, in memory and on disk.
type tlsFiles struct {
	cert              tls.Certificate
	certPEM           []byte
	certFile, keyFile string
}

func selfSigned(t *testing.T, dir, name string, notAfter time.Time) tlsFiles {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	f := tlsFiles{certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		certFile: filepath.Join(dir, name+".crt"), keyFile: filepath.Join(dir, name+".key")}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	if err := os.WriteFile(f.certFile, f.certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if f.cert, err = tls.X509KeyPair(f.certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestConsumerMTLS: with consumer_tls and require_client_cert, member
// systems reach their node only with a certificate a subsystem pins, and
// may call only as a subsystem that pins theirs, over gRPC and REST alike.
func TestConsumerMTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	dir := t.TempDir()
	far := time.Now().Add(time.Hour)
	server := selfSigned(t, dir, "node-a", far)
	app1 := selfSigned(t, dir, "licensing-app", far) // pinned by licensing
	app2 := selfSigned(t, dir, "archive-app", far)   // pinned by archive
	stranger := selfSigned(t, dir, "stranger", far)  // pinned by none
	expired := selfSigned(t, dir, "expired-app", time.Now().Add(-time.Hour))
	archive, _ := ident.ParseSubsystem("EE/GOV/70000311/archive")

	defer node.SetConsumerTLSReload(50 * time.Millisecond)()
	m := startTwoNodes(t, ctx, nil, func(c *node.Config) {
		if !strings.HasSuffix(c.Subsystems[0].ID, "/licensing") {
			return
		}
		c.ConsumerTLS = &node.ConsumerTLS{CertFile: server.certFile, KeyFile: server.keyFile, RequireClientCert: true}
		c.Subsystems[0].ClientCerts = []string{app1.certFile, expired.certFile}
		c.Subsystems = append(c.Subsystems, node.SubsystemConfig{ID: archive.String(), ClientCerts: []string{app2.certFile}})
	})
	adm := m.c.AdminClient(m.c.Servers[0])
	if _, err := adm.AddSubsystem(m.c.Ctx(ctx), &registryv1.AddSubsystemRequest{Id: archive.Proto()}); err != nil {
		t.Fatal(err)
	}
	nodeA, _ := ident.ParseNode("EE/GOV/70000311/ss1")
	if _, err := adm.RegisterSubsystem(m.c.Ctx(ctx), &registryv1.RegisterSubsystemRequest{Subsystem: archive.Proto(), Node: nodeA.Proto()}); err != nil {
		t.Fatal(err)
	}
	registrytest.WaitFor(t, 30*time.Second, "A serves archive", func() bool { return len(m.a.n.Topology().Hosts(archive)) == 1 })
	m.grant(t, ctx)

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(server.certPEM)
	call := func(cert *tlsFiles, as ident.Subsystem) error {
		tc := &tls.Config{RootCAs: roots}
		if cert != nil {
			tc.Certificates = []tls.Certificate{cert.cert}
		}
		conn, err := grpc.NewClient(m.a.n.ConsumerAddr(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		md := metadata.Pairs("sild-client", as.String(), "sild-target", m.bizreg.String())
		cctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(ctx, md), 10*time.Second)
		defer cancel()
		_, err = testpb.NewTestServiceClient(conn).UnaryCall(cctx, &testpb.SimpleRequest{})
		return err
	}
	if err := call(&app1, m.licensing); err != nil {
		t.Fatalf("pinned certificate calling as its subsystem: %v", err)
	}
	if err := call(&app2, m.licensing); status.Code(err) != codes.PermissionDenied || rpcerr.Reason(err) != rpcerr.ReasonUnknownClient {
		t.Fatalf("certificate pinned by another subsystem: %v", err)
	}
	// archive's own certificate passes the node's check; B then refuses
	// for want of an access right.
	if err := call(&app2, archive); rpcerr.Reason(err) != rpcerr.ReasonAccessDenied {
		t.Fatalf("archive calling as archive: %v", err)
	}
	// The metaservice answers which methods a client may call only to a
	// caller that may speak for it.
	allowed := func(cert *tlsFiles, as ident.Subsystem) error {
		conn, err := grpc.NewClient(m.a.n.ConsumerAddr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert.cert}})))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = metav1.NewMetaServiceClient(conn).AllowedMethods(ctx, &metav1.AllowedMethodsRequest{Client: as.Proto(), Target: m.bizreg.Proto()})
		return err
	}
	if err := allowed(&app1, m.licensing); err != nil {
		t.Fatalf("allowed methods for its own subsystem: %v", err)
	}
	if err := allowed(&app2, m.licensing); rpcerr.Reason(err) != rpcerr.ReasonUnknownClient {
		t.Fatalf("allowed methods for another subsystem: %v", err)
	}
	for name, cert := range map[string]*tlsFiles{"no certificate": nil, "unpinned": &stranger, "expired": &expired} {
		if err := call(cert, m.licensing); status.Code(err) != codes.Unavailable {
			t.Errorf("%s: %v, want the handshake refused", name, err)
		}
	}
	// Plaintext is refused too.
	plain, err := grpc.NewClient(m.a.n.ConsumerAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	md := metadata.Pairs("sild-client", m.licensing.String(), "sild-target", m.bizreg.String())
	pctx, pcancel := context.WithTimeout(metadata.NewOutgoingContext(ctx, md), 5*time.Second)
	defer pcancel()
	if _, err := testpb.NewTestServiceClient(plain).UnaryCall(pctx, &testpb.SimpleRequest{}); err == nil {
		t.Error("plaintext call accepted")
	}

	// REST on the same port: an HTTP client that offers h2 and http/1.1
	// gets HTTP/1.1, and the same pins apply.
	rest := func(cert *tlsFiles, as ident.Subsystem) (int, string, error) {
		tc := &tls.Config{RootCAs: roots}
		if cert != nil {
			tc.Certificates = []tls.Certificate{cert.cert}
		}
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}}
		defer hc.CloseIdleConnections()
		req, _ := http.NewRequestWithContext(ctx, "POST", "https://"+m.a.n.ConsumerAddr()+"/r1/"+m.bizreg.String()+"/grpc.testing.TestService/UnaryCall",
			strings.NewReader(`{"payload":{"body":"cmVzdA=="}}`))
		req.Header.Set("Sild-Client", as.String())
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Proto + " " + string(b), nil
	}
	if code, body, err := rest(&app1, m.licensing); err != nil || code != 200 || !strings.HasPrefix(body, "HTTP/1.1") || !strings.Contains(body, "cmVzdA==") {
		t.Fatalf("REST with a pinned certificate: %d %s %v", code, body, err)
	}
	if code, body, err := rest(&app2, m.licensing); err != nil || code != 403 || !strings.Contains(body, rpcerr.ReasonUnknownClient) {
		t.Fatalf("REST as another subsystem: %d %s %v", code, body, err)
	}
	if _, _, err := rest(nil, m.licensing); err == nil {
		t.Fatal("REST without a client certificate accepted")
	}

	// Certificates are replaced without a restart: licensing's application
	// gets a new certificate (the old one no longer works) and the node a
	// new server certificate.
	renewed := selfSigned(t, t.TempDir(), "licensing-app", far)
	if err := os.WriteFile(app1.certFile, renewed.certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	server2 := selfSigned(t, t.TempDir(), "node-a", far)
	for _, f := range [][2]string{{server2.certFile, server.certFile}, {server2.keyFile, server.keyFile}} {
		b, _ := os.ReadFile(f[0])
		if err := os.WriteFile(f[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	roots.AppendCertsFromPEM(server2.certPEM)
	// The cert and key files are written one after the other: a reload may
	// see the new certificate with the old key, keep the old pair and take
	// the new one at its next check. Wait for both replacements.
	presents := func() []byte {
		conn, err := tls.Dial("tcp", m.a.n.ConsumerAddr(), &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{renewed.cert}, NextProtos: []string{"h2"}})
		if err != nil {
			return nil
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Raw
	}
	registrytest.WaitFor(t, 30*time.Second, "the renewed certificates in use", func() bool {
		return call(&renewed, m.licensing) == nil && bytes.Equal(presents(), server2.cert.Certificate[0])
	})
	if err := call(&app1, m.licensing); status.Code(err) != codes.Unavailable {
		t.Errorf("replaced certificate: %v, want the handshake refused", err)
	}
	if got := presents(); !bytes.Equal(got, server2.cert.Certificate[0]) {
		t.Error("the node still presents its old certificate")
	}
	// A broken file is not taken: the certificates in use stay.
	if err := os.WriteFile(server.certFile, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // several checks
	if err := call(&renewed, m.licensing); err != nil {
		t.Errorf("after a broken certificate file: %v", err)
	}
}
