package gateway_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/sildmesh/sild/gateway"
	"github.com/sildmesh/sild/node/access"
	"github.com/sildmesh/sild/node/topology"
)

// internalText are fragments of Go library and transport text that a REST
// caller must never read in an error message.
var internalText = []string{"proto:", "proto:\u00a0", "EOF", "json: ", "transport", "dial tcp", "rpc error", "admin API"}

// wantMessage checks that an error answer's message says what (each of
// says, case-insensitively) and no internal text.
func wantMessage(t *testing.T, what string, a answer, says ...string) {
	t.Helper()
	msg, _ := a.body["message"].(string)
	for _, s := range says {
		if !strings.Contains(strings.ToLower(msg), strings.ToLower(s)) {
			t.Errorf("%s: message %q does not say %q", what, msg, s)
		}
	}
	for _, s := range internalText {
		if strings.Contains(msg, s) {
			t.Errorf("%s: message %q has internal text %q", what, msg, s)
		}
	}
}

// post sends body with the given Content-Type ("" for none).
func post(t *testing.T, url, key, contentType, body string, header map[string]string) answer {
	t.Helper()
	h := map[string]string{}
	for k, v := range header {
		h[k] = v
	}
	if key != "" {
		h["Authorization"] = "Bearer " + key
	}
	if contentType != "" {
		h["Content-Type"] = contentType
	}
	return restPost(t, url, h, body)
}

// TestAdminRESTBadInput: the node's admin REST API (real access-rights
// server behind the gateway) answers every bad input with a 4xx and a
// google.rpc.Status that says what is wrong in words, not Go's; and no
// answer carries the in-process gRPC connection's headers.
func TestAdminRESTBadInput(t *testing.T) {
	adminKey := "sild_admin-key-for-bad-input"
	base, _ := startNodeAdmin(t, map[string]string{adminKey: access.RoleAdmin})
	url := base + "/v1/access"
	right := `{"client":{"subsystem":{"member":{"instance":"EE","memberClass":"GOV","memberCode":"70000310"},"subsystemCode":"licensing"}},
		"service":{"subsystem":{"member":{"instance":"EE","memberClass":"COM","memberCode":"11"},"subsystemCode":"registry"},"serviceName":"business.v1.Registry"}}`

	t.Run("no gRPC headers", func(t *testing.T) {
		for _, a := range []answer{
			post(t, url, adminKey, "application/json", right, nil),
			call(t, "GET", url, adminKey, ""),
			call(t, "GET", url, "", ""),
		} {
			for h := range a.header {
				if strings.HasPrefix(strings.ToLower(h), "grpc-") {
					t.Errorf("HTTP %d answer has header %s: %v", a.code, h, a.header[h])
				}
			}
		}
	})
	t.Run("curl -d default content type", func(t *testing.T) {
		// curl -d declares application/x-www-form-urlencoded; the README's
		// admin examples rely on the JSON body being read anyway.
		want(t, "form-declared JSON", post(t, url, adminKey, "application/x-www-form-urlencoded", right, nil), 200, "", "")
		want(t, "JSON with charset", post(t, url, adminKey, "application/json; charset=utf-8", right, nil), 200, "", "")
	})
	for _, tc := range []struct {
		name, contentType, body string
		code                    int
		reason                  string
		says                    []string
	}{
		{"wrong content type", "text/xml", `<right/>`, 415, "UNSUPPORTED_MEDIA_TYPE", []string{"text/xml", "application/json"}},
		{"not JSON", "application/json", `<right/>`, 400, "INVALID_ARGUMENT", []string{"not valid JSON"}},
		{"cut short", "application/json", `{"client":`, 400, "INVALID_ARGUMENT", []string{"not valid JSON", "ends too early"}},
		{"unknown field", "application/json", `{"colour":"red"}`, 400, "INVALID_ARGUMENT", []string{"request body", `unknown field "colour"`}},
		{"wrong field type", "application/json", `{"methodName":5}`, 400, "INVALID_ARGUMENT", []string{"request body", "methodName"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := post(t, url, adminKey, tc.contentType, tc.body, nil)
			want(t, tc.name, a, tc.code, tc.reason, gateway.Component)
			wantMessage(t, tc.name, a, tc.says...)
		})
	}
}

// TestConsumerRESTBadInput: the legacy REST consumer's refusals of bad
// input say what is wrong in words, not the protobuf library's; a JSON
// content type with parameters or the +json suffix is JSON; and a backend's
// UNAVAILABLE without a sild reason reads as such, not as the admin API's.
func TestConsumerRESTBadInput(t *testing.T) {
	top := echoTopology(t, true)
	c, err := gateway.NewConsumer(gateway.ConsumerConfig{Conn: echoBackend(t), Topology: func() *topology.Topology { return top }})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(c)
	t.Cleanup(hs.Close)
	url := hs.URL + "/r1/EE/COM/11/echo/test.v1.Echo/Echo"
	client := map[string]string{"Sild-Client": "EE/GOV/70000310/licensing"}

	t.Run("JSON media types", func(t *testing.T) {
		want(t, "charset", post(t, url, "", "application/json; charset=utf-8", `{"text":"hi"}`, client), 200, "", "")
		want(t, "+json", post(t, url, "", "application/vnd.example+json", `{"text":"hi"}`, client), 200, "", "")
	})
	for _, tc := range []struct {
		name, contentType, body string
		code                    int
		reason                  string
		says                    []string
	}{
		{"wrong content type", "text/plain", `{"text":"hi"}`, 415, "UNSUPPORTED_MEDIA_TYPE", []string{"text/plain", "application/json"}},
		{"cut short", "application/json", `{"text":`, 400, "INVALID_ARGUMENT", []string{"not valid JSON", "test.v1.EchoRequest"}},
		{"not an object", "application/json", `[1]`, 400, "INVALID_ARGUMENT", []string{"not valid JSON"}},
		{"wrong field type", "application/json", `{"times":"many"}`, 400, "INVALID_ARGUMENT", []string{"request body", "times"}},
		{"unknown field", "application/json", `{"colour":"red"}`, 400, "INVALID_ARGUMENT", []string{`unknown field "colour"`}},
		{"bad timestamp", "application/json", `{"at":"yesterday"}`, 400, "INVALID_ARGUMENT", []string{"request body", "Timestamp"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := post(t, url, "", tc.contentType, tc.body, client)
			want(t, tc.name, a, tc.code, tc.reason, gateway.Component)
			wantMessage(t, tc.name, a, tc.says...)
		})
	}

	t.Run("backend unavailable", func(t *testing.T) {
		// A provider backend that fails with a bare UNAVAILABLE, as a gRPC
		// server does when its own dependency is down.
		gs := grpc.NewServer(grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error {
			return status.Error(codes.Unavailable, "dial tcp 10.0.0.5:5432: connect: connection refused")
		}))
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go gs.Serve(ln)
		t.Cleanup(gs.Stop)
		conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		c, err := gateway.NewConsumer(gateway.ConsumerConfig{Conn: conn, Topology: func() *topology.Topology { return top }})
		if err != nil {
			t.Fatal(err)
		}
		hs := httptest.NewServer(c)
		t.Cleanup(hs.Close)
		a := post(t, hs.URL+"/r1/EE/COM/11/echo/test.v1.Echo/Echo", "", "application/json", `{}`, client)
		want(t, "unavailable", a, http.StatusServiceUnavailable, "UNAVAILABLE", "")
		wantMessage(t, "unavailable", a, "unavailable")
	})
}
