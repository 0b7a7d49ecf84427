package node_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/sildmesh/sild/node"
	"github.com/sildmesh/sild/registry/registrytest"
)

// TestConsumerTLSWithoutClientCerts: consumer_tls without
// require_client_cert serves the consumer listener over TLS to member
// systems without certificates (they name their subsystem in the metadata,
// as over plaintext), gRPC and REST alike; plaintext and clients that do not
// trust the node's certificate get nothing.
func TestConsumerTLSWithoutClientCerts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	server := selfSigned(t, t.TempDir(), "node-a", time.Now().Add(time.Hour))
	m := startTwoNodes(t, ctx, nil, func(c *node.Config) {
		if strings.HasSuffix(c.Subsystems[0].ID, "/licensing") {
			c.ConsumerTLS = &node.ConsumerTLS{CertFile: server.certFile, KeyFile: server.keyFile}
		}
	})
	m.grant(t, ctx)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(server.certPEM)
	md := metadata.Pairs("sild-client", m.licensing.String(), "sild-target", m.bizreg.String())
	call := func(creds credentials.TransportCredentials) (*testpb.SimpleResponse, error) {
		conn, err := grpc.NewClient(m.a.n.ConsumerAddr(), grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(ctx, md), 5*time.Second)
		defer cancel()
		return testpb.NewTestServiceClient(conn).UnaryCall(cctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("tls")}})
	}
	trusting := credentials.NewTLS(&tls.Config{RootCAs: roots})
	registrytest.WaitFor(t, 10*time.Second, "a call over TLS", func() bool { _, err := call(trusting); return err == nil })
	resp, err := call(trusting)
	if err != nil || string(resp.GetPayload().GetBody()) != "tls" {
		t.Fatalf("call over TLS without a client certificate: %v, %v", resp, err)
	}
	if _, err := call(insecure.NewCredentials()); err == nil {
		t.Error("plaintext call accepted on a TLS listener")
	}
	if _, err := call(credentials.NewTLS(&tls.Config{RootCAs: x509.NewCertPool()})); err == nil {
		t.Error("a client that does not trust the node's certificate got through")
	}

	// REST over HTTPS on the same port.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, "POST", "https://"+m.a.n.ConsumerAddr()+"/r1/"+m.bizreg.String()+"/grpc.testing.TestService/UnaryCall",
		strings.NewReader(`{"payload":{"body":"cmVzdA=="}}`))
	req.Header.Set("Sild-Client", m.licensing.String())
	req.Header.Set("Content-Type", "application/json")
	hresp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer hresp.Body.Close()
	body, _ := io.ReadAll(hresp.Body)
	if hresp.StatusCode != http.StatusOK || !strings.Contains(string(body), "cmVzdA==") {
		t.Fatalf("REST over TLS: %d %s", hresp.StatusCode, body)
	}
}
