package gateway_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sildmesh/sild/gateway"
	"github.com/sildmesh/sild/node/topology"
)

// FuzzConsumer sends arbitrary bodies, client headers and method names to
// the REST consumer: it must answer 200 or a 4xx, never panic or fail
// inside.
func FuzzConsumer(f *testing.F) {
	for _, s := range []struct{ method, client, body string }{
		{"Echo", "EE/GOV/70000310/licensing", `{"text":"hi","at":"2026-11-23T10:00:00Z","tags":["a"]}`},
		{"Repeat", "EE/GOV/70000310/licensing", `{"times":2}`},
		{"Echo", "", `{`},
		{"Upload", "EE/GOV/1/x", `[]`},
		{"Echo", "EE/GOV/1/x", `{"times":1e99}`},
		{"Echo", "EE/GOV/1/x", `{"at":{"seconds":1}}`},
	} {
		f.Add(s.method, s.client, s.body)
	}
	conn := echoBackend(f)
	top := echoTopology(f, true)
	c, err := gateway.NewConsumer(gateway.ConsumerConfig{Conn: conn, Topology: func() *topology.Topology { return top }})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, method, client, body string) {
		if strings.ContainsAny(method, "/?#%") || method == "" {
			return
		}
		if strings.Contains(body, "break") {
			body = strings.ReplaceAll(body, "break", "brake") // a backend failure is not the bridge's
		}
		r := httptest.NewRequest("POST", "/r1/EE/COM/11/echo/test.v1.Echo/"+url.PathEscape(method), strings.NewReader(body))
		if client != "" {
			r.Header.Set("Sild-Client", client)
		}
		w := httptest.NewRecorder()
		c.ServeHTTP(w, r)
		if (w.Code >= 500 && w.Code != http.StatusNotImplemented) || (w.Code != http.StatusOK && !strings.Contains(w.Body.String(), `"reason"`)) {
			t.Fatalf("%s %q %q: HTTP %d %s", method, client, body, w.Code, w.Body)
		}
	})
}

// FuzzProviderAnswer gives the REST provider arbitrary answers of a JSON
// backend (unary and NDJSON): the call ends OK or with a sild reason, and
// the REST consumer in front answers 200 or an error with a reason.
func FuzzProviderAnswer(f *testing.F) {
	for _, s := range []string{`{"text":"x","index":3}`, `{"text":1}`, "{\"index\":1}\n{\"index\":2}\n", `[]`, `null`, "\xff", `{"at":"nope"}`} {
		f.Add(s, false)
		f.Add(s, true)
	}
	var answer atomic.Value
	answer.Store("")
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, answer.Load().(string))
	}))
	f.Cleanup(backend.Close)
	conn := startProvider(f, backend.URL)
	top := echoTopology(f, true)
	c, err := gateway.NewConsumer(gateway.ConsumerConfig{Conn: conn, Topology: func() *topology.Topology { return top }})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body string, stream bool) {
		answer.Store(body)
		method := "Echo"
		if stream {
			method = "Repeat"
		}
		r := httptest.NewRequest("POST", "/r1/EE/COM/11/echo/test.v1.Echo/"+method, strings.NewReader(`{}`))
		r.Header.Set("Sild-Client", "EE/GOV/1/x")
		w := httptest.NewRecorder()
		c.ServeHTTP(w, r)
		if w.Code != http.StatusOK && !strings.Contains(w.Body.String(), `"reason"`) {
			t.Fatalf("%q: HTTP %d %s", body, w.Code, w.Body)
		}
		if w.Code == http.StatusOK && stream && strings.Contains(w.Body.String(), `"error"`) && !strings.Contains(w.Body.String(), `"reason"`) {
			t.Fatalf("%q: stream error without reason: %s", body, w.Body)
		}
	})
}
