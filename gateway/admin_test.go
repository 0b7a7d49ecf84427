package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/sildmesh/sild/gateway"
	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/internal/apikey"
	"github.com/sildmesh/sild/node/access"
	"github.com/sildmesh/sild/registry/registrytest"
)

// answer is a decoded REST answer.
type answer struct {
	code   int
	header http.Header
	raw    []byte
	body   map[string]any
}

// reason returns the sild reason and component in a google.rpc.Status body.
func (a answer) reason() (reason, component string) {
	details, _ := a.body["details"].([]any)
	for _, d := range details {
		m, _ := d.(map[string]any)
		if m["@type"] == "type.googleapis.com/google.rpc.ErrorInfo" && m["domain"] == "sild" {
			md, _ := m["metadata"].(map[string]any)
			c, _ := md["component"].(string)
			r, _ := m["reason"].(string)
			return r, c
		}
	}
	return "", ""
}

func call(t testing.TB, method, url, key, body string) answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := answer{code: resp.StatusCode, header: resp.Header, raw: raw}
	if ct := resp.Header.Get("Content-Type"); strings.HasPrefix(ct, "application/json") {
		if err := json.Unmarshal(raw, &a.body); err != nil {
			t.Fatalf("%s %s: answer is not JSON: %v: %s", method, url, err, raw)
		}
	}
	return a
}

// want checks the HTTP status and, for errors, the sild reason and component.
func want(t testing.TB, what string, a answer, code int, reason, component string) {
	t.Helper()
	if a.code != code {
		t.Fatalf("%s: HTTP %d, want %d: %s", what, a.code, code, a.raw)
	}
	if reason == "" {
		return
	}
	r, c := a.reason()
	if r != reason || (component != "" && c != component) {
		t.Fatalf("%s: reason %q component %q, want %q %q: %s", what, r, c, reason, component, a.raw)
	}
	if _, ok := a.body["message"].(string); !ok {
		t.Fatalf("%s: no message in %s", what, a.raw)
	}
}

func memberCodes(t *testing.T, a answer) []string {
	t.Helper()
	var codes []string
	ms, _ := a.body["members"].([]any)
	for _, m := range ms {
		id, _ := m.(map[string]any)["id"].(map[string]any)
		c, _ := id["memberCode"].(string)
		codes = append(codes, c)
	}
	return codes
}

func TestRegistryAdminREST(t *testing.T) {
	c := registrytest.Start(t, 1)
	base := "http://" + c.Servers[0].Srv.HTTPAddr()
	admin := c.Admin
	member := `{"id":{"instance":"EE","memberClass":"GOV","memberCode":"70000310"},"name":"Ministry of Examples"}`

	// A reader key, created over REST.
	a := call(t, "POST", base+"/v1/api-keys", admin, `{"name":"ci","role":"ROLE_READER"}`)
	want(t, "create reader key", a, 200, "", "")
	reader, _ := a.body["secret"].(string)
	if !strings.HasPrefix(reader, "sild_") {
		t.Fatalf("create key: no secret in %s", a.raw)
	}

	t.Run("create and list", func(t *testing.T) {
		want(t, "add member", call(t, "POST", base+"/v1/members", admin, member), 200, "", "")
		a := call(t, "GET", base+"/v1/members", reader, "")
		want(t, "list members", a, 200, "", "")
		if got := memberCodes(t, a); len(got) != 1 || got[0] != "70000310" {
			t.Fatalf("members over REST = %v: %s", got, a.raw)
		}
		// The member is really there: the gRPC API sees it.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		resp, err := c.AdminClient(c.Servers[0]).ListMembers(c.Ctx(ctx), &registryv1.ListMembersRequest{})
		if err != nil || len(resp.GetMembers()) != 1 || resp.GetMembers()[0].GetName() != "Ministry of Examples" {
			t.Fatalf("members over gRPC = %v, %v", resp, err)
		}
		// Stale read through a query parameter.
		want(t, "stale list", call(t, "GET", base+"/v1/members?read.stale=true", reader, ""), 200, "", "")
	})
	t.Run("401", func(t *testing.T) {
		a := call(t, "GET", base+"/v1/members", "", "")
		want(t, "no key", a, 401, "UNAUTHENTICATED", "registry")
		if !strings.HasPrefix(a.header.Get("WWW-Authenticate"), "Bearer") {
			t.Fatalf("401 without WWW-Authenticate: %v", a.header)
		}
		want(t, "wrong key", call(t, "GET", base+"/v1/members", "sild_nope_nope", ""), 401, "UNAUTHENTICATED", "registry")
	})
	t.Run("403", func(t *testing.T) {
		a := call(t, "POST", base+"/v1/members", reader, `{"id":{"instance":"EE","memberClass":"GOV","memberCode":"1"}}`)
		want(t, "reader adds member", a, 403, "PERMISSION_DENIED", "registry")
	})
	t.Run("409", func(t *testing.T) {
		want(t, "member again", call(t, "POST", base+"/v1/members", admin, member), 409, "ALREADY_EXISTS", "registry")
	})
	t.Run("404", func(t *testing.T) {
		want(t, "remove unknown", call(t, "DELETE", base+"/v1/members/EE/GOV/99999999", admin, ""), 404, "NOT_FOUND", "registry")
		want(t, "no route", call(t, "GET", base+"/v2/nothing", admin, ""), 404, "NOT_FOUND", "gateway")
	})
	t.Run("400", func(t *testing.T) {
		for _, tc := range []struct {
			name, body, reason, component string
		}{
			{"bad identifier", `{"id":{"instance":"EE","memberClass":"GOV","memberCode":"a/b"}}`, "INVALID_IDENTIFIER", "registry"},
			{"malformed JSON", `{"id":`, "INVALID_ARGUMENT", "gateway"},
			{"unknown field", `{"id":{"instance":"EE","memberClass":"GOV","memberCode":"2"},"colour":"red"}`, "INVALID_ARGUMENT", "gateway"},
			{"wrong type", `{"id":{"instance":"EE","memberClass":"GOV","memberCode":2}}`, "INVALID_ARGUMENT", "gateway"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				want(t, tc.name, call(t, "POST", base+"/v1/members", admin, tc.body), 400, tc.reason, tc.component)
			})
		}
	})
	t.Run("405 and 413", func(t *testing.T) {
		want(t, "PUT members", call(t, "PUT", base+"/v1/members", admin, `{}`), 405, "METHOD_NOT_ALLOWED", "gateway")
		big := `{"name":"` + strings.Repeat("x", gateway.DefaultMaxBody) + `"}`
		want(t, "big body", call(t, "POST", base+"/v1/members", admin, big), 413, "BODY_TOO_LARGE", "gateway")
	})
	t.Run("remove", func(t *testing.T) {
		want(t, "remove", call(t, "DELETE", base+"/v1/members/EE/GOV/70000310", admin, ""), 200, "", "")
		if got := memberCodes(t, call(t, "GET", base+"/v1/members", admin, "")); len(got) != 0 {
			t.Fatalf("members after remove = %v", got)
		}
	})
	t.Run("openapi", func(t *testing.T) {
		a := call(t, "GET", base+"/openapi.json", "", "")
		want(t, "openapi", a, 200, "", "")
		checkOpenAPI(t, a, registryv1.File_sild_registry_v1_admin_proto.Services().ByName("AdminService"))
	})
}

// checkOpenAPI checks that doc describes every method of svc (so that a
// stale generated document fails) and declares the API key.
func checkOpenAPI(t *testing.T, a answer, svc protoreflect.ServiceDescriptor) {
	t.Helper()
	if a.body["swagger"] != "2.0" || a.body["securityDefinitions"] == nil {
		t.Fatalf("not a Swagger 2.0 document with security: %.300s", a.raw)
	}
	ops := map[string]bool{}
	paths, _ := a.body["paths"].(map[string]any)
	for _, p := range paths {
		for _, op := range p.(map[string]any) {
			if id, ok := op.(map[string]any)["operationId"].(string); ok {
				ops[id] = true
			}
		}
	}
	methods := svc.Methods()
	for i := range methods.Len() {
		if id := "AdminService_" + string(methods.Get(i).Name()); !ops[id] {
			t.Errorf("OpenAPI document has no operation %s (regenerate: go tool -modfile=tools.mod buf generate)", id)
		}
	}
}

func TestRegistryAdminCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not on PATH")
	}
	c := registrytest.Start(t, 1)
	base := "http://" + c.Servers[0].Srv.HTTPAddr()
	run := func(args ...string) (string, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, curl, append([]string{"-sS", "-w", "\n%{http_code}"}, args...)...).Output()
		if err != nil {
			t.Fatalf("curl %v: %v", args, err)
		}
		s := strings.TrimSpace(string(out))
		i := strings.LastIndexByte(s, '\n')
		return s[:i], s[i+1:]
	}
	body, code := run("-H", "Authorization: Bearer "+c.Admin, "-H", "Content-Type: application/json",
		"-d", `{"id":{"instance":"EE","memberClass":"GOV","memberCode":"70000310"},"name":"Ministry"}`, base+"/v1/members")
	if code != "200" {
		t.Fatalf("curl add member: %s %s", code, body)
	}
	body, code = run("-H", "Authorization: Bearer "+c.Admin, base+"/v1/members")
	if code != "200" || !strings.Contains(body, `"memberCode":"70000310"`) {
		t.Fatalf("curl list members: %s %s", code, body)
	}
	body, code = run(base + "/v1/members")
	if code != "401" || !strings.Contains(body, `"reason":"UNAUTHENTICATED"`) {
		t.Fatalf("curl without key: %s %s", code, body)
	}
	body, code = run(base + "/openapi.json")
	if code != "200" || !strings.Contains(body, `"/v1/members"`) {
		t.Fatalf("curl openapi: %s %.200s", code, body)
	}
}

// startNodeAdmin serves the node's access-rights API over REST, on the
// node's real admin gRPC server (access.ServerOptions, access.Server), with
// the API keys roles (key to role), and returns its base URL and the
// gateway's Close.
func startNodeAdmin(t *testing.T, roles map[string]string) (string, func()) {
	t.Helper()
	hashed := map[string]string{}
	for key, role := range roles {
		hashed[apikey.Hash(key)] = role
	}
	gs := grpc.NewServer(access.ServerOptions(apikey.Static(hashed))...)
	store, err := access.Open(access.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	srv, err := access.NewServer(access.ServerConfig{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	srv.Register(gs)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	gw, err := gateway.NewNodeAdmin(ctx, gs, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	hs := httptest.NewServer(gw)
	t.Cleanup(hs.Close)
	return hs.URL, gw.Close
}

// TestNodeAdminREST drives the node's access-rights API over REST.
func TestNodeAdminREST(t *testing.T) {
	adminKey, readerKey := "sild_admin-key-for-tests", "sild_reader-key-for-tests"
	base, closeGateway := startNodeAdmin(t, map[string]string{adminKey: access.RoleAdmin, readerKey: access.RoleReader})

	right := `{"client":{"subsystem":{"member":{"instance":"EE","memberClass":"GOV","memberCode":"70000310"},"subsystemCode":"licensing"}},
		"service":{"subsystem":{"member":{"instance":"EE","memberClass":"COM","memberCode":"11"},"subsystemCode":"registry"},"serviceName":"business.v1.Registry"},
		"methodName":"GetCompany"}`
	a := call(t, "POST", base+"/v1/access", adminKey, right)
	want(t, "grant", a, 200, "", "")
	if a.body["created"] != true {
		t.Fatalf("grant: %s", a.raw)
	}
	if a = call(t, "POST", base+"/v1/access", adminKey, right); a.body["created"] != false {
		t.Fatalf("grant again: %s", a.raw)
	}
	a = call(t, "GET", base+"/v1/access?methodName=GetCompany", readerKey, "")
	want(t, "list", a, 200, "", "")
	if rights, _ := a.body["rights"].([]any); len(rights) != 1 {
		t.Fatalf("list: %s", a.raw)
	}
	want(t, "no key", call(t, "GET", base+"/v1/access", "", ""), 401, "UNAUTHENTICATED", "")
	want(t, "reader grants", call(t, "POST", base+"/v1/access", readerKey, right), 403, "PERMISSION_DENIED", "")
	want(t, "bad JSON", call(t, "POST", base+"/v1/access", adminKey, `{"client":`), 400, "INVALID_ARGUMENT", "gateway")
	want(t, "revoke", call(t, "POST", base+"/v1/access:revoke", adminKey, right), 200, "", "")
	want(t, "revoke again", call(t, "POST", base+"/v1/access:revoke", adminKey, right), 404, "NOT_FOUND", "")
	if a = call(t, "GET", base+"/v1/access", readerKey, ""); len(a.body["rights"].([]any)) != 0 {
		t.Fatalf("list after revoke: %s", a.raw)
	}
	a = call(t, "GET", base+"/openapi.json", "", "")
	want(t, "openapi", a, 200, "", "")
	checkOpenAPI(t, a, nodev1.File_sild_node_v1_admin_proto.Services().ByName("AdminService"))

	// Closed: the gateway answers 503 with a reason, not internal text.
	closeGateway()
	a = call(t, "GET", base+"/v1/access", readerKey, "")
	want(t, "after close", a, 503, "UNAVAILABLE", "gateway")
	if bytes.Contains(a.raw, []byte("transport")) {
		t.Fatalf("internal text leaked: %s", a.raw)
	}
}
