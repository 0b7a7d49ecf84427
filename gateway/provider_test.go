package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/sildmesh/sild/gateway"
	"github.com/sildmesh/sild/node/forward"
	"github.com/sildmesh/sild/node/topology"
)

// jsonBackend is a legacy JSON/HTTP provider backend of test.v1.Echo.
func jsonBackend(t testing.TB) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/Echo", func(w http.ResponseWriter, r *http.Request) {
		var in map[string]any
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		switch in["text"] {
		case "forbidden":
			http.Error(w, "secret internal detail", http.StatusForbidden)
			return
		case "garbage":
			io.WriteString(w, `{"text": 12}`)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"text": in["text"], "client": r.Header.Get("Sild-Client"),
			"messageId": r.Header.Get("Sild-Message-Id"), "userId": r.Header.Get("Sild-User-Id"),
			"purpose": r.Header.Get("Sild-Purpose"), "at": in["at"], "unknownToTheDescriptors": true})
	})
	mux.HandleFunc("POST /api/Repeat", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Text  string `json:"text"`
			Times int    `json:"times"`
		}
		json.NewDecoder(r.Body).Decode(&in)
		w.Header().Set("Content-Type", "application/x-ndjson")
		for i := range in.Times {
			fmt.Fprintf(w, `{"text":%q,"index":%d}`+"\n", in.Text, i)
		}
	})
	// Methods with google.api.http rules.
	mux.HandleFunc("GET /api/things/{text}", func(w http.ResponseWriter, r *http.Request) {
		times, _ := strconv.Atoi(r.URL.Query().Get("times"))
		json.NewEncoder(w).Encode(map[string]any{"text": r.PathValue("text"), "index": times,
			"purpose": strings.Join(r.URL.Query()["tags"], ","), "client": r.Header.Get("Sild-Client")})
	})
	mux.HandleFunc("PUT /api/stamps/{times}", func(w http.ResponseWriter, r *http.Request) {
		var at string
		if err := json.NewDecoder(r.Body).Decode(&at); err != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"text": "stamped " + r.PathValue("times"), "at": at})
	})
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return hs.URL + "/api"
}

// startProvider serves a REST provider for the echo subsystem and returns a
// connection to it.
func startProvider(t testing.TB, base string) *grpc.ClientConn {
	t.Helper()
	top := echoTopology(t, true)
	p, err := gateway.NewProvider(gateway.ProviderConfig{Subsystem: provider, BaseURL: base, Topology: func() *topology.Topology { return top }})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(p.ServerOptions()...)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return dialInsecure(t, ln.Addr().String())
}

// TestRESTConsumerToRESTProvider: a REST consumer calls a JSON backend
// behind the REST provider; everything between is gRPC.
func TestRESTConsumerToRESTProvider(t *testing.T) {
	conn := startProvider(t, jsonBackend(t))
	top := echoTopology(t, true)
	c, err := gateway.NewConsumer(gateway.ConsumerConfig{Conn: conn, Topology: func() *topology.Topology { return top }})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(c)
	t.Cleanup(hs.Close)
	base := hs.URL + "/r1/EE/COM/11/echo/test.v1.Echo/"
	h := map[string]string{"Sild-Client": "EE/GOV/70000310/licensing", "Sild-Message-Id": "m-7", "Sild-User-Id": "EE1", "Sild-Purpose": "p"}

	a := restPost(t, base+"Echo", h, `{"text":"hi","at":"2026-11-23T10:00:00Z"}`)
	want(t, "echo", a, 200, "", "")
	for k, v := range map[string]any{"text": "hi", "client": "EE/GOV/70000310/licensing", "messageId": "m-7", "userId": "EE1", "purpose": "p", "at": "2026-11-23T10:00:00Z"} {
		if a.body[k] != v {
			t.Errorf("%s = %v, want %v (%s)", k, a.body[k], v, a.raw)
		}
	}
	a = restPost(t, base+"Repeat", h, `{"text":"s","times":3}`)
	want(t, "repeat", a, 200, "", "")
	if lines := ndjson(t, a.raw); len(lines) != 3 || lines[2]["result"].(map[string]any)["index"] != float64(2) {
		t.Fatalf("stream: %s", a.raw)
	}
	// google.api.http rules in the published descriptors.
	a = restPost(t, base+"Lookup", h, `{"text":"a b/c","times":4,"tags":["x","y"]}`)
	want(t, "rule GET", a, 200, "", "")
	if a.body["text"] != "a b/c" || a.body["index"] != float64(4) || a.body["purpose"] != "x,y" || a.body["client"] != h["Sild-Client"] {
		t.Fatalf("rule GET: %s", a.raw)
	}
	a = restPost(t, base+"Stamp", h, `{"times":2,"at":"2026-11-23T10:00:00Z"}`)
	want(t, "rule PUT with a body field", a, 200, "", "")
	if a.body["text"] != "stamped 2" || a.body["at"] != "2026-11-23T10:00:00Z" {
		t.Fatalf("rule PUT: %s", a.raw)
	}
	want(t, "empty path variable", restPost(t, base+"Lookup", h, `{}`), 404, gateway.ReasonBackendError, gateway.ComponentProvider)
	a = restPost(t, base+"Echo", h, `{"text":"forbidden"}`)
	want(t, "backend 403", a, 403, gateway.ReasonBackendError, gateway.ComponentProvider)
	if strings.Contains(string(a.raw), "secret") {
		t.Fatalf("backend text leaked: %s", a.raw)
	}
	want(t, "backend garbage", restPost(t, base+"Echo", h, `{"text":"garbage"}`), 500, gateway.ReasonBackendError, gateway.ComponentProvider)
	want(t, "client streaming", restPost(t, base+"Upload", h, `{}`), 501, "UNSUPPORTED_METHOD", "gateway")
}

func TestProviderErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  gateway.ProviderConfig
	}{
		{"no subsystem", gateway.ProviderConfig{BaseURL: "http://x", Topology: func() *topology.Topology { return nil }}},
		{"bad url", gateway.ProviderConfig{Subsystem: provider, BaseURL: "ftp://x", Topology: func() *topology.Topology { return nil }}},
		{"no topology", gateway.ProviderConfig{Subsystem: provider, BaseURL: "http://x"}},
	} {
		if _, err := gateway.NewProvider(tc.cfg); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	// An unreachable backend is UNAVAILABLE / TARGET_UNAVAILABLE.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + ln.Addr().String()
	ln.Close()
	conn := startProvider(t, dead)
	top := echoTopology(t, true)
	c, _ := gateway.NewConsumer(gateway.ConsumerConfig{Conn: conn, Topology: func() *topology.Topology { return top }})
	hs := httptest.NewServer(c)
	t.Cleanup(hs.Close)
	a := restPost(t, hs.URL+"/r1/EE/COM/11/echo/test.v1.Echo/Echo", map[string]string{"Sild-Client": "EE/GOV/1/x"}, `{}`)
	want(t, "dead backend", a, 503, "TARGET_UNAVAILABLE", gateway.ComponentProvider)
}

// TestProviderCallsBackendOnlyAfterHalfClose: like grpc's own unary
// handlers, the JSON backend is called only once the request is half-closed.
// A node half-closes towards its backend only after the consumer's signature
// verified, so this is what keeps unsigned requests from a JSON backend (and
// what makes the provider's record always carry the consumer's signature).
func TestProviderCallsBackendOnlyAfterHalfClose(t *testing.T) {
	var hits atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.WriteString(w, `{"text":"ok"}`)
	}))
	t.Cleanup(hs.Close)
	conn := startProvider(t, hs.URL)
	msg := []byte{0x0a, 0x02, 'h', 'i'} // EchoRequest{text: "hi"}
	frame := func() *forward.Frame { return &forward.Frame{Data: mem.BufferSlice{mem.SliceBuffer(msg)}} }
	open := func() grpc.ClientStream {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		t.Cleanup(cancel)
		cs, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, "/test.v1.Echo/Echo", grpc.ForceCodecV2(forward.Codec{}))
		if err != nil {
			t.Fatal(err)
		}
		return cs
	}

	cs := open()
	if err := cs.SendMsg(frame()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if n := hits.Load(); n != 0 {
		t.Fatalf("backend called %d times before the request was half-closed", n)
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	got := &forward.Frame{}
	if err := cs.RecvMsg(got); err != nil {
		t.Fatal(err)
	}
	if n := hits.Load(); n != 1 || string(got.Bytes()) != "\x0a\x02ok" {
		t.Fatalf("after half-close: %d calls, answer %q", n, got.Bytes())
	}

	// A second request message for a unary method is refused, unanswered.
	cs = open()
	for range 2 {
		if err := cs.SendMsg(frame()); err != nil {
			t.Fatal(err)
		}
	}
	cs.CloseSend()
	err := cs.RecvMsg(&forward.Frame{})
	if status.Code(err) != codes.InvalidArgument || hits.Load() != 1 {
		t.Fatalf("two request messages: %v, %d backend calls", err, hits.Load())
	}
}
