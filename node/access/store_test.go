package access

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
)

var now0 = time.Date(2026, 11, 23, 9, 30, 0, 0, time.UTC)

func mustSub(t testing.TB, s string) ident.Subsystem {
	t.Helper()
	v, err := ident.ParseSubsystem(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mustSvc(t testing.TB, s string) ident.Service {
	t.Helper()
	v, err := ident.ParseService(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mustGroup(t testing.TB, s string) Group {
	t.Helper()
	g, err := ParseGroup(s)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func openStore(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(Config{Dir: dir, Now: func() time.Time { return now0 }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func grant(t testing.TB, s *Store, r Right) {
	t.Helper()
	if _, _, err := s.Grant(r); err != nil {
		t.Fatal(err)
	}
}

type fixture struct {
	licensing, tax, other ident.Subsystem
	registry, admin       ident.Service
	health                Group
}

func newFixture(t testing.TB) fixture {
	return fixture{
		licensing: mustSub(t, "EE/GOV/70000310/licensing"),
		tax:       mustSub(t, "EE/GOV/70000349/tax"),
		other:     mustSub(t, "FI/COM/1234567-8/shop"),
		registry:  mustSvc(t, "EE/GOV/70000311/business-registry/business.v1.Registry"),
		admin:     mustSvc(t, "EE/GOV/70000311/business-registry/business.v1.Admin"),
		health:    mustGroup(t, "EE:health-workers"),
	}
}

func TestAllowed(t *testing.T) {
	f := newFixture(t)
	s := openStore(t, t.TempDir())
	grant(t, s, Right{Client: SubsystemClient(f.licensing), Service: f.registry})                    // whole service
	grant(t, s, Right{Client: SubsystemClient(f.tax), Service: f.registry, Method: "GetCompany"})    // one method
	grant(t, s, Right{Client: GroupClient(f.health), Service: f.admin, Method: "ListCompanies"})     // group, one method
	grant(t, s, Right{Client: GroupClient(mustGroup(t, "EE:auditors")), Service: f.admin})           // group, whole service
	grant(t, s, Right{Client: SubsystemClient(f.other), Service: f.registry, Method: "GetCompanyX"}) // other method

	for _, tc := range []struct {
		name   string
		client ident.Subsystem
		groups []string
		svc    ident.Service
		method string
		want   bool
	}{
		{"service right, any method", f.licensing, nil, f.registry, "GetCompany", true},
		{"service right, another method", f.licensing, nil, f.registry, "Anything", true},
		{"service right, other service", f.licensing, nil, f.admin, "ListCompanies", false},
		{"method right, that method", f.tax, nil, f.registry, "GetCompany", true},
		{"method right, other method", f.tax, nil, f.registry, "DeleteCompany", false},
		{"method right, case differs", f.tax, nil, f.registry, "getcompany", false},
		{"method right, prefix", f.tax, nil, f.registry, "GetCompan", false},
		{"method right, empty method", f.tax, nil, f.registry, "", false},
		{"group method right", f.tax, []string{"EE:health-workers"}, f.admin, "ListCompanies", true},
		{"group method right, other method", f.tax, []string{"EE:health-workers"}, f.admin, "Delete", false},
		{"group service right", f.other, []string{"EE:x", "EE:auditors"}, f.admin, "Delete", true},
		{"no group", f.tax, nil, f.admin, "ListCompanies", false},
		{"group of other instance", f.tax, []string{"FI:health-workers"}, f.admin, "ListCompanies", false},
		{"group code case", f.tax, []string{"EE:Health-workers"}, f.admin, "ListCompanies", false},
		{"unknown client", mustSub(t, "EE/GOV/70000310/licensing2"), nil, f.registry, "GetCompany", false},
		{"client of other member class", mustSub(t, "EE/COM/70000310/licensing"), nil, f.registry, "GetCompany", false},
		{"unknown service", f.licensing, nil, mustSvc(t, "EE/GOV/70000311/business-registry/business.v2.Registry"), "GetCompany", false},
		{"same service name, other provider", f.licensing, nil, mustSvc(t, "EE/GOV/70000312/business-registry/business.v1.Registry"), "GetCompany", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := s.Allowed(tc.client, tc.groups, tc.svc, tc.method); got != tc.want {
				t.Fatalf("Allowed = %v, want %v", got, tc.want)
			}
		})
	}

	all, methods := s.AllowedMethods(f.tax, []string{"EE:health-workers"}, f.admin)
	if all || len(methods) != 1 || methods[0] != "ListCompanies" {
		t.Fatalf("AllowedMethods = %v %v", all, methods)
	}
	if all, _ := s.AllowedMethods(f.licensing, nil, f.registry); !all {
		t.Fatal("AllowedMethods: whole service not reported")
	}
}

func TestRevokeAndPersistence(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, Now: func() time.Time { return now0 }})
	if err != nil {
		t.Fatal(err)
	}
	whole := Right{Client: SubsystemClient(f.licensing), Service: f.registry}
	method := Right{Client: SubsystemClient(f.licensing), Service: f.registry, Method: "GetCompany"}
	group := Right{Client: GroupClient(f.health), Service: f.admin}
	for _, r := range []Right{whole, method, group} {
		got, created, err := s.Grant(r)
		if err != nil || !created || !got.GrantedAt.Equal(now0) {
			t.Fatalf("grant %s: %v %v %v", r, got, created, err)
		}
	}
	// Granting again changes nothing.
	s.now = func() time.Time { return now0.Add(time.Hour) }
	if got, created, err := s.Grant(whole); err != nil || created || !got.GrantedAt.Equal(now0) {
		t.Fatalf("grant again: %v %v %v", got, created, err)
	}
	// Revoking the whole-service right leaves the method right.
	if err := s.Revoke(whole); err != nil {
		t.Fatal(err)
	}
	if s.Allowed(f.licensing, nil, f.registry, "Other") || !s.Allowed(f.licensing, nil, f.registry, "GetCompany") {
		t.Fatal("revoking the service right changed the method right")
	}
	if err := s.Revoke(whole); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke twice: %v", err)
	}
	if err := s.Revoke(Right{Client: SubsystemClient(f.tax), Service: f.registry, Method: "GetCompany"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke never granted: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := openStore(t, dir)
	if s2.Allowed(f.licensing, nil, f.registry, "Other") {
		t.Fatal("revoked right back after reopen")
	}
	if !s2.Allowed(f.licensing, nil, f.registry, "GetCompany") || !s2.Allowed(f.tax, []string{f.health.String()}, f.admin, "X") {
		t.Fatal("granted right lost after reopen")
	}
	list, err := s2.List(Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].String() != group.String() || list[1].String() != method.String() || !list[0].GrantedAt.Equal(now0) {
		t.Fatalf("after reopen: %v", list)
	}
	// Revoking the last right of a service drops it from the index.
	if err := s2.Revoke(method); err != nil {
		t.Fatal(err)
	}
	if _, ok := s2.idx.Load().services[f.registry]; ok {
		t.Fatal("empty service left in the index")
	}
}

func TestList(t *testing.T) {
	f := newFixture(t)
	s := openStore(t, t.TempDir())
	rights := []Right{
		{Client: SubsystemClient(f.licensing), Service: f.registry},
		{Client: SubsystemClient(f.licensing), Service: f.admin, Method: "ListCompanies"},
		{Client: SubsystemClient(f.tax), Service: f.registry, Method: "GetCompany"},
		{Client: GroupClient(f.health), Service: f.registry, Method: "GetCompany"},
		{Client: SubsystemClient(f.other), Service: mustSvc(t, "EE/GOV/70000311/tax-data/tax.v1.Tax")},
	}
	for _, r := range rights {
		grant(t, s, r)
	}
	lic, health, provider := SubsystemClient(f.licensing), GroupClient(f.health), f.registry.Subsystem
	for _, tc := range []struct {
		name string
		f    Filter
		want []int
	}{
		{"all", Filter{}, []int{1, 0, 2, 3, 4}},
		{"client subsystem", Filter{Client: &lic}, []int{1, 0}},
		{"client group", Filter{Client: &health}, []int{3}},
		{"service", Filter{Service: &f.registry}, []int{0, 2, 3}},
		{"subsystem", Filter{Subsystem: &provider}, []int{1, 0, 2, 3}},
		{"method", Filter{Method: "GetCompany"}, []int{2, 3}},
		{"service and client", Filter{Service: &f.registry, Client: &lic}, []int{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.List(tc.f)
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, i := range tc.want {
				want = append(want, rights[i].String())
			}
			var gots []string
			for _, r := range got {
				gots = append(gots, r.String())
			}
			if fmt.Sprint(gots) != fmt.Sprint(want) {
				t.Fatalf("got %v\nwant %v", gots, want)
			}
		})
	}
	if _, err := s.List(Filter{Method: "a/b"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad filter: %v", err)
	}
}

func TestStoreRefusesInvalid(t *testing.T) {
	f := newFixture(t)
	s := openStore(t, t.TempDir())
	for _, tc := range []struct {
		name  string
		r     Right
		field string
	}{
		{"empty client", Right{Service: f.registry}, "client"},
		{"both kinds", Right{Client: Client{Subsystem: f.tax, Group: f.health}, Service: f.registry}, "client"},
		{"bad group", Right{Client: GroupClient(Group{Instance: "EE", Code: "a/b"}), Service: f.registry}, "client"},
		{"empty service", Right{Client: SubsystemClient(f.tax)}, "service"},
		{"bad method", Right{Client: SubsystemClient(f.tax), Service: f.registry, Method: "Get.Company"}, "method_name"},
		{"method with slash", Right{Client: SubsystemClient(f.tax), Service: f.registry, Method: "x/y"}, "method_name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := s.Grant(tc.r)
			var fe *FieldError
			if !errors.Is(err, ErrInvalid) || !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("got %v, want invalid %s", err, tc.field)
			}
			if err := s.Revoke(tc.r); !errors.Is(err, ErrInvalid) {
				t.Fatalf("revoke: %v", err)
			}
		})
	}
	if l, _ := s.List(Filter{}); len(l) != 0 {
		t.Fatalf("invalid rights changed the store: %v", l)
	}
}

func TestOpenRefusesCorrupt(t *testing.T) {
	dir := t.TempDir()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(keyPrefix+"x"), []byte{0xff, 0xff}) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if s, err := Open(Config{Dir: dir}); !errors.Is(err, ErrCorrupt) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("got %v, want ErrCorrupt", err)
	}
}

func TestParseClient(t *testing.T) {
	for _, tc := range []struct {
		in    string
		group bool
		ok    bool
	}{
		{"EE/GOV/70000310/licensing", false, true},
		{"EE:health-workers", true, true},
		{"EE:", true, false},
		{":x", true, false},
		{"EE:a:b", true, false},
		{"EE:a/b", true, false},
		{"EE/GOV/70000310", false, false},
	} {
		c, err := ParseClient(tc.in)
		if (err == nil) != tc.ok || (tc.ok && (c.IsGroup() != tc.group || c.String() != tc.in)) {
			t.Errorf("ParseClient(%q) = %+v, %v", tc.in, c, err)
		}
	}
}

func TestMemberGroups(t *testing.T) {
	f := newFixture(t)
	cfg := &registryv1.GlobalConfig{Instance: "EE", Groups: []*registryv1.GlobalGroup{
		{Code: "health-workers", Members: []*identv1.SubsystemId{f.tax.Proto(), f.licensing.Proto(), f.tax.Proto()}},
		{Code: "auditors", Members: []*identv1.SubsystemId{f.tax.Proto(), {}}},
		{Code: "bad/code", Members: []*identv1.SubsystemId{f.licensing.Proto()}},
	}}
	got := MemberGroups(cfg)
	if fmt.Sprint(got[f.tax]) != "[EE:health-workers EE:auditors]" || fmt.Sprint(got[f.licensing]) != "[EE:health-workers]" || len(got) != 2 {
		t.Fatalf("MemberGroups = %v", got)
	}
}

// TestConcurrent grants, revokes and checks at the same time (run it with
// -race), then checks that the store and a reopened store agree.
func TestConcurrent(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	const writers, perWriter = 4, 25
	grant(t, s, Right{Client: SubsystemClient(f.licensing), Service: f.registry})
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for range 4 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				// The permanent right is always visible, whatever else changes.
				if !s.Allowed(f.licensing, nil, f.registry, "GetCompany") {
					t.Error("permanent right not visible")
					return
				}
				s.Allowed(f.tax, []string{"EE:g1"}, f.admin, "M1")
				_, _ = s.List(Filter{Service: &f.admin})
			}
		})
	}
	var writersWG sync.WaitGroup
	for w := range writers {
		writersWG.Go(func() {
			for i := range perWriter {
				r := Right{Client: GroupClient(Group{"EE", fmt.Sprintf("g%d", w)}), Service: f.admin, Method: fmt.Sprintf("M%d", i)}
				if _, _, err := s.Grant(r); err != nil {
					t.Error(err)
					return
				}
				if i%2 == 1 {
					if err := s.Revoke(r); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	writersWG.Wait()
	close(stop)
	readers.Wait()
	check := func(s *Store) {
		t.Helper()
		list, err := s.List(Filter{Service: &f.admin})
		if want := writers * (perWriter + 1) / 2; err != nil || len(list) != want {
			t.Fatalf("%d rights, want %d (%v)", len(list), want, err)
		}
		for w := range writers {
			for i := range perWriter {
				g := fmt.Sprintf("EE:g%d", w)
				if got := s.Allowed(f.tax, []string{g}, f.admin, fmt.Sprintf("M%d", i)); got != (i%2 == 0) {
					t.Fatalf("%s M%d: allowed %v", g, i, got)
				}
			}
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	check(openStore(t, dir))
}

// BenchmarkAllowed measures the call-path check with 1,000 rights on 10
// services, by subsystem, by group (the client in 5 groups) and a miss.
func BenchmarkAllowed(b *testing.B) {
	s := openStore(b, b.TempDir())
	svcs := make([]ident.Service, 10)
	for i := range svcs {
		svcs[i] = mustSvc(b, fmt.Sprintf("EE/GOV/70000311/business-registry/business.v1.S%d", i))
	}
	for i := range 1000 {
		c := SubsystemClient(mustSub(b, fmt.Sprintf("EE/GOV/%d/sub", i)))
		if i%10 == 0 {
			c = GroupClient(Group{"EE", fmt.Sprintf("group%d", i)})
		}
		grant(b, s, Right{Client: c, Service: svcs[i%10], Method: fmt.Sprintf("M%d", i%7)})
	}
	client := mustSub(b, "EE/GOV/990/sub")
	groups := []string{"EE:a", "EE:b", "EE:c", "EE:d", "EE:group990"}
	b.Run("subsystem", func(b *testing.B) {
		c := mustSub(b, "EE/GOV/991/sub")
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if !s.Allowed(c, groups, svcs[1], "M4") {
					b.Fatal("denied")
				}
			}
		})
	})
	b.Run("group", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if !s.Allowed(client, groups, svcs[0], "M3") {
					b.Fatal("denied")
				}
			}
		})
	})
	b.Run("miss", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if s.Allowed(client, groups, svcs[3], "M3") {
					b.Fatal("allowed")
				}
			}
		})
	})
}
