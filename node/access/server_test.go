package access

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/apikey"
	"github.com/sildmesh/sild/internal/rpcerr"
)

type adminEnv struct {
	store              *Store
	addr               string
	adminKey, readKey  string
	admin, reader, bad nodev1.AdminServiceClient
	none               nodev1.AdminServiceClient
}

// startAdmin serves the admin API over a real store on 127.0.0.1:0, for a
// node serving only the subsystem EE/GOV/70000311/business-registry.
func startAdmin(t *testing.T) *adminEnv {
	t.Helper()
	e := &adminEnv{store: openStore(t, t.TempDir())}
	var err error
	if e.adminKey, err = apikey.Generate(); err != nil {
		t.Fatal(err)
	}
	if e.readKey, err = apikey.Generate(); err != nil {
		t.Fatal(err)
	}
	served := mustSub(t, "EE/GOV/70000311/business-registry")
	srv, err := NewServer(ServerConfig{Store: e.store, Serves: func(s ident.Subsystem) bool { return s == served }})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(ServerOptions(apikey.Static(map[string]string{
		apikey.Hash(e.adminKey): RoleAdmin,
		apikey.Hash(e.readKey):  RoleReader,
	}))...)
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.Serve(lis) })
	t.Cleanup(func() { g.Stop(); wg.Wait() })
	e.addr = lis.Addr().String()
	dial := func(key string) nodev1.AdminServiceClient {
		opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		if key != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(apikey.Credentials(key, false)))
		}
		cc, err := grpc.NewClient(e.addr, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return nodev1.NewAdminServiceClient(cc)
	}
	e.admin, e.reader, e.bad, e.none = dial(e.adminKey), dial(e.readKey), dial(e.adminKey+"x"), dial("")
	return e
}

func subProto(s string) *identv1.SubsystemId {
	v, err := ident.ParseSubsystem(s)
	if err != nil {
		panic(err)
	}
	return v.Proto()
}

func svcProto(s string) *identv1.ServiceId {
	v, err := ident.ParseService(s)
	if err != nil {
		panic(err)
	}
	return v.Proto()
}

const (
	licensing = "EE/GOV/70000310/licensing"
	registry  = "EE/GOV/70000311/business-registry/business.v1.Registry"
)

func subClient(s string) *nodev1.AccessClient {
	return &nodev1.AccessClient{Kind: &nodev1.AccessClient_Subsystem{Subsystem: subProto(s)}}
}

func groupClient(inst, code string) *nodev1.AccessClient {
	return &nodev1.AccessClient{Kind: &nodev1.AccessClient_Group{Group: &nodev1.GlobalGroupRef{Instance: inst, GroupCode: code}}}
}

func wantRefusal(t *testing.T, err error, code codes.Code, reason, msgPart string) {
	t.Helper()
	if status.Code(err) != code || rpcerr.Reason(err) != reason || rpcerr.Component(err) != Component {
		t.Fatalf("got %v (reason %q, component %q), want %s/%s from %s", err, rpcerr.Reason(err), rpcerr.Component(err), code, reason, Component)
	}
	if !strings.Contains(status.Convert(err).Message(), msgPart) {
		t.Fatalf("message %q does not name %q", status.Convert(err).Message(), msgPart)
	}
}

func TestAdminGrantListRevoke(t *testing.T) {
	e := startAdmin(t)
	ctx := context.Background()
	lic := mustSub(t, licensing)
	svc := mustSvc(t, registry)

	right := &nodev1.AccessRight{Client: subClient(licensing), Service: svcProto(registry), MethodName: "GetCompany"}
	resp, err := e.admin.GrantAccess(ctx, &nodev1.GrantAccessRequest{Right: right})
	if err != nil || !resp.GetCreated() || !resp.GetRight().GetGrantedAt().AsTime().Equal(now0) {
		t.Fatalf("grant: %v %v", resp, err)
	}
	if !e.store.Allowed(lic, nil, svc, "GetCompany") || e.store.Allowed(lic, nil, svc, "Other") {
		t.Fatal("grant over the API did not reach the store as a method right")
	}
	again, err := e.admin.GrantAccess(ctx, &nodev1.GrantAccessRequest{Right: right})
	if err != nil || again.GetCreated() {
		t.Fatalf("grant again: %v %v", again, err)
	}
	group := &nodev1.AccessRight{Client: groupClient("EE", "health-workers"), Service: svcProto(registry)}
	if _, err := e.admin.GrantAccess(ctx, &nodev1.GrantAccessRequest{Right: group}); err != nil {
		t.Fatal(err)
	}
	if !e.store.Allowed(mustSub(t, "EE/GOV/1/x"), []string{"EE:health-workers"}, svc, "Any") {
		t.Fatal("group right not effective")
	}

	// A reader may list but not change.
	list, err := e.reader.ListAccess(ctx, &nodev1.ListAccessRequest{})
	if err != nil || len(list.GetRights()) != 2 {
		t.Fatalf("list: %v %v", list, err)
	}
	got, err := RightFromProto(list.GetRights()[1], "right")
	if err != nil || got.String() != licensing+" -> "+registry+"/GetCompany" {
		t.Fatalf("listed %v %v", got, err)
	}
	list, err = e.reader.ListAccess(ctx, &nodev1.ListAccessRequest{Client: groupClient("EE", "health-workers")})
	if err != nil || len(list.GetRights()) != 1 || !proto.Equal(list.GetRights()[0].GetClient(), group.GetClient()) {
		t.Fatalf("list by group: %v %v", list, err)
	}
	list, err = e.reader.ListAccess(ctx, &nodev1.ListAccessRequest{MethodName: "GetCompany", Subsystem: subProto("EE/GOV/70000311/business-registry")})
	if err != nil || len(list.GetRights()) != 1 {
		t.Fatalf("list by method: %v %v", list, err)
	}
	_, err = e.reader.GrantAccess(ctx, &nodev1.GrantAccessRequest{Right: right})
	wantRefusal(t, err, codes.PermissionDenied, rpcerr.ReasonPermissionDenied, "reader")
	_, err = e.reader.RevokeAccess(ctx, &nodev1.RevokeAccessRequest{Right: right})
	wantRefusal(t, err, codes.PermissionDenied, rpcerr.ReasonPermissionDenied, "reader")

	if _, err := e.admin.RevokeAccess(ctx, &nodev1.RevokeAccessRequest{Right: right}); err != nil {
		t.Fatal(err)
	}
	if e.store.Allowed(lic, nil, svc, "GetCompany") {
		t.Fatal("revoked right still effective")
	}
	_, err = e.admin.RevokeAccess(ctx, &nodev1.RevokeAccessRequest{Right: right})
	wantRefusal(t, err, codes.NotFound, rpcerr.ReasonNotFound, "no such access right")
}

func TestAdminAuthentication(t *testing.T) {
	e := startAdmin(t)
	ctx := context.Background()
	right := &nodev1.AccessRight{Client: subClient(licensing), Service: svcProto(registry)}
	for name, c := range map[string]nodev1.AdminServiceClient{"no key": e.none, "wrong key": e.bad} {
		t.Run(name, func(t *testing.T) {
			_, err := c.GrantAccess(ctx, &nodev1.GrantAccessRequest{Right: right})
			wantRefusal(t, err, codes.Unauthenticated, rpcerr.ReasonUnauthenticated, "API key")
			_, err = c.ListAccess(ctx, &nodev1.ListAccessRequest{})
			wantRefusal(t, err, codes.Unauthenticated, rpcerr.ReasonUnauthenticated, "API key")
		})
	}
	if l, _ := e.store.List(Filter{}); len(l) != 0 {
		t.Fatal("unauthenticated grant reached the store")
	}
	// Without the interceptors, the server refuses rather than trusting.
	srv, err := NewServer(ServerConfig{Store: e.store})
	if err != nil {
		t.Fatal(err)
	}
	_, err = srv.GrantAccess(ctx, &nodev1.GrantAccessRequest{Right: right})
	wantRefusal(t, err, codes.Unauthenticated, rpcerr.ReasonUnauthenticated, "no authenticated caller")
}

func TestAdminBadInput(t *testing.T) {
	e := startAdmin(t)
	ctx := context.Background()
	good := func() *nodev1.AccessRight {
		return &nodev1.AccessRight{Client: subClient(licensing), Service: svcProto(registry), MethodName: "GetCompany"}
	}
	with := func(f func(r *nodev1.AccessRight)) *nodev1.AccessRight { r := good(); f(r); return r }
	const (
		inval = rpcerr.ReasonInvalidArgument
		ident = rpcerr.ReasonInvalidIdentifier
	)
	for _, tc := range []struct {
		name   string
		right  *nodev1.AccessRight
		code   codes.Code
		reason string
		field  string
	}{
		{"no right", nil, codes.InvalidArgument, inval, "right: missing"},
		{"no client", with(func(r *nodev1.AccessRight) { r.Client = nil }), codes.InvalidArgument, inval, "right.client: missing"},
		{"empty client", with(func(r *nodev1.AccessRight) { r.Client = &nodev1.AccessClient{} }), codes.InvalidArgument, inval, "right.client: missing"},
		{"client without member", with(func(r *nodev1.AccessRight) {
			r.Client = &nodev1.AccessClient{Kind: &nodev1.AccessClient_Subsystem{Subsystem: &identv1.SubsystemId{SubsystemCode: "x"}}}
		}), codes.InvalidArgument, inval, "right.client.subsystem.member: missing"},
		{"client bad member code", with(func(r *nodev1.AccessRight) { r.Client.GetSubsystem().Member.MemberCode = "70/1" }), codes.InvalidArgument, ident, "right.client.subsystem.member.member_code"},
		{"client empty class", with(func(r *nodev1.AccessRight) { r.Client.GetSubsystem().Member.MemberClass = "" }), codes.InvalidArgument, ident, "right.client.subsystem.member.member_class"},
		{"client bad subsystem code", with(func(r *nodev1.AccessRight) { r.Client.GetSubsystem().SubsystemCode = "lic ensing" }), codes.InvalidArgument, ident, "right.client.subsystem.subsystem_code"},
		{"client long instance", with(func(r *nodev1.AccessRight) { r.Client.GetSubsystem().Member.Instance = strings.Repeat("E", 256) }), codes.InvalidArgument, ident, "right.client.subsystem.member.instance"},
		{"group bad code", with(func(r *nodev1.AccessRight) { r.Client = groupClient("EE", "health:workers") }), codes.InvalidArgument, ident, "right.client.group.group_code"},
		{"group empty instance", with(func(r *nodev1.AccessRight) { r.Client = groupClient("", "health") }), codes.InvalidArgument, ident, "right.client.group.instance"},
		{"group nil", with(func(r *nodev1.AccessRight) { r.Client = &nodev1.AccessClient{Kind: &nodev1.AccessClient_Group{}} }), codes.InvalidArgument, ident, "right.client.group.instance"},
		{"no service", with(func(r *nodev1.AccessRight) { r.Service = nil }), codes.InvalidArgument, inval, "right.service: missing"},
		{"service without subsystem", with(func(r *nodev1.AccessRight) { r.Service.Subsystem = nil }), codes.InvalidArgument, inval, "right.service.subsystem: missing"},
		{"service bad name", with(func(r *nodev1.AccessRight) { r.Service.ServiceName = "business.v1..Registry" }), codes.InvalidArgument, ident, "right.service.service_name"},
		{"service name with slash", with(func(r *nodev1.AccessRight) { r.Service.ServiceName = "business.v1/Registry" }), codes.InvalidArgument, ident, "right.service.service_name"},
		{"service bad provider code", with(func(r *nodev1.AccessRight) { r.Service.Subsystem.SubsystemCode = ".." + "/x" }), codes.InvalidArgument, ident, "right.service.subsystem.subsystem_code"},
		{"method with slash", with(func(r *nodev1.AccessRight) { r.MethodName = "Get/Company" }), codes.InvalidArgument, ident, "right.method_name"},
		{"method dotted", with(func(r *nodev1.AccessRight) { r.MethodName = "x.Get" }), codes.InvalidArgument, ident, "right.method_name"},
		{"method unicode look-alike", with(func(r *nodev1.AccessRight) { r.MethodName = "GetCompаny" }), codes.InvalidArgument, ident, "right.method_name"},
		{"not served", with(func(r *nodev1.AccessRight) { r.Service = svcProto("EE/GOV/70000312/other/business.v1.Registry") }), codes.NotFound, rpcerr.ReasonUnknownTarget, "right.service.subsystem: EE/GOV/70000312/other is not served by this node"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.admin.GrantAccess(ctx, &nodev1.GrantAccessRequest{Right: tc.right})
			wantRefusal(t, err, tc.code, tc.reason, tc.field)
			if tc.reason != rpcerr.ReasonUnknownTarget {
				_, err = e.admin.RevokeAccess(ctx, &nodev1.RevokeAccessRequest{Right: tc.right})
				wantRefusal(t, err, tc.code, tc.reason, tc.field)
			}
		})
	}
	if l, _ := e.store.List(Filter{}); len(l) != 0 {
		t.Fatalf("bad input changed the store: %v", l)
	}
	for _, tc := range []struct {
		name  string
		req   *nodev1.ListAccessRequest
		field string
	}{
		{"bad client filter", &nodev1.ListAccessRequest{Client: &nodev1.AccessClient{}}, "client: missing"},
		{"bad subsystem filter", &nodev1.ListAccessRequest{Subsystem: &identv1.SubsystemId{}}, "subsystem.member: missing"},
		{"bad service filter", &nodev1.ListAccessRequest{Service: &identv1.ServiceId{Subsystem: subProto(licensing), ServiceName: "9x"}}, "service.service_name"},
		{"bad method filter", &nodev1.ListAccessRequest{MethodName: "a b"}, "method_name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.reader.ListAccess(ctx, tc.req)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.field) {
				t.Fatalf("got %v, want InvalidArgument naming %s", err, tc.field)
			}
		})
	}
}

// TestAdminConcurrent grants over the API from several clients while the
// call path checks rights (run it with -race).
func TestAdminConcurrent(t *testing.T) {
	e := startAdmin(t)
	ctx := context.Background()
	svc := mustSvc(t, registry)
	methods := []string{"A", "B", "C", "D", "E", "F", "G", "H"}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	checked := make(chan int, 1)
	wg.Go(func() {
		n := 0
		defer func() { checked <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, m := range methods {
				e.store.Allowed(mustSub(t, licensing), []string{"EE:g"}, svc, m)
				n++
			}
		}
	})
	var writers sync.WaitGroup
	for _, m := range methods {
		writers.Go(func() {
			r := &nodev1.AccessRight{Client: subClient(licensing), Service: svcProto(registry), MethodName: m}
			if _, err := e.admin.GrantAccess(ctx, &nodev1.GrantAccessRequest{Right: r}); err != nil {
				t.Error(err)
			}
		})
	}
	writers.Wait()
	close(stop)
	wg.Wait()
	if n := <-checked; n == 0 {
		t.Fatal("no checks ran")
	}
	for _, m := range methods {
		if !e.store.Allowed(mustSub(t, licensing), nil, svc, m) {
			t.Fatalf("method %s not granted", m)
		}
	}
}
