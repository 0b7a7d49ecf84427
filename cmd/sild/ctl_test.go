package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/reflection"
	v1alphagrpc "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/internal/descset"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry"
	"github.com/sildmesh/sild/registry/registrytest"
)

// descriptorSet writes the FileDescriptorSet of fd and its imports to a file.
func descriptorSet(t *testing.T, fd protoreflect.FileDescriptor) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "set.binpb")
	if err := os.WriteFile(file, descset.Of(fd), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

func TestCtlAgainstCluster(t *testing.T) {
	clearSildEnv(t)
	c := registrytest.Start(t, 3)
	bundle := filepath.Join(c.Servers[0].Dir, registry.FileBundle)
	leader := c.Leader()
	follower := c.Followers()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// ctlAt runs `sild ctl` against server m with the admin key.
	ctlAt := func(m *registrytest.Member, args ...string) (string, string, error) {
		base := []string{"ctl", "--registry", m.Srv.APIAddr(), "--trust", bundle, "--api-key", c.Admin}
		return runCmd(ctx, append(base, args...)...)
	}
	mustCtl := func(t *testing.T, m *registrytest.Member, args ...string) string {
		t.Helper()
		out, errOut, err := ctlAt(m, args...)
		if err != nil {
			t.Fatalf("sild ctl %s: %v (stderr %q)", strings.Join(args, " "), err, errOut)
		}
		return out
	}
	fromJSON := func(t *testing.T, out string, m proto.Message) {
		t.Helper()
		if err := protojson.Unmarshal([]byte(out), m); err != nil {
			t.Fatalf("json output %q: %v", out, err)
		}
	}

	t.Run("member add through follower, list as table and json", func(t *testing.T) {
		out := mustCtl(t, follower, "member", "add", "EE/GOV/70000310", "--name", "Ministry of Examples")
		if !strings.Contains(out, "member EE/GOV/70000310 added") {
			t.Fatalf("add output %q", out)
		}
		out = mustCtl(t, leader, "member", "list")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "MEMBER") ||
			!strings.Contains(lines[1], "EE/GOV/70000310") || !strings.Contains(lines[1], "Ministry of Examples") {
			t.Fatalf("table:\n%s", out)
		}
		var resp registryv1.ListMembersResponse
		fromJSON(t, mustCtl(t, follower, "member", "list", "-o", "json", "--stale"), &resp)
		// A stale read may lag; the linearizable read must not.
		fromJSON(t, mustCtl(t, follower, "member", "list", "-o", "json"), &resp)
		if len(resp.GetMembers()) != 1 || resp.GetMembers()[0].GetName() != "Ministry of Examples" ||
			resp.GetMembers()[0].GetId().GetMemberCode() != "70000310" {
			t.Fatalf("json: %v", &resp)
		}
	})

	t.Run("duplicate gets status and reason", func(t *testing.T) {
		_, _, err := ctlAt(follower, "member", "add", "EE/GOV/70000310")
		if err == nil {
			t.Fatal("duplicate member accepted")
		}
		if status.Code(err) != codes.AlreadyExists || rpcerr.Reason(err) != rpcerr.ReasonAlreadyExists {
			t.Fatalf("err = %v (code %v)", err, status.Code(err))
		}
		for _, want := range []string{"add member:", "already exists", "reason ALREADY_EXISTS", "code AlreadyExists"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
	})

	t.Run("unknown reference", func(t *testing.T) {
		_, _, err := ctlAt(leader, "subsystem", "add", "EE/GOV/99999999/x")
		if err == nil || rpcerr.Reason(err) == "" || !strings.Contains(err.Error(), "reason ") {
			t.Fatalf("subsystem of unknown member: %v", err)
		}
	})

	t.Run("malformed identifier is refused before sending", func(t *testing.T) {
		_, _, err := ctlAt(leader, "member", "add", "EE/GOV")
		if err == nil || !strings.Contains(err.Error(), `member "EE/GOV"`) || status.Code(err) != codes.Unknown {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("missing api key", func(t *testing.T) {
		_, _, err := runCmd(ctx, "ctl", "--registry", leader.Srv.APIAddr(), "--trust", bundle, "member", "list")
		if err == nil || !strings.Contains(err.Error(), "no API key") || !strings.Contains(err.Error(), "SILD_API_KEY") {
			t.Fatalf("err = %v", err)
		}
		keyFile := filepath.Join(c.Servers[0].Dir, registry.FileAdminKey)
		if _, _, err := runCmd(ctx, "ctl", "--registry", leader.Srv.APIAddr(), "--trust", bundle, "--api-key-file", keyFile, "member", "list"); err != nil {
			t.Fatalf("--api-key-file: %v", err)
		}
		_, _, err = runCmd(ctx, "ctl", "--registry", leader.Srv.APIAddr(), "--trust", bundle, "--api-key-file", keyFile, "--api-key", c.Admin, "member", "list")
		if err == nil || !strings.Contains(err.Error(), "give one") {
			t.Fatalf("both key flags: %v", err)
		}
		_, _, err = runCmd(ctx, "ctl", "--registry", leader.Srv.APIAddr(), "--trust", bundle, "--api-key", "sild_0_wrong", "member", "list")
		if rpcerr.Reason(err) != rpcerr.ReasonUnauthenticated {
			t.Fatalf("wrong key: %v", err)
		}
	})

	t.Run("environment supplies the global flags", func(t *testing.T) {
		t.Setenv("SILD_REGISTRY", follower.Srv.APIAddr())
		t.Setenv("SILD_TRUST", bundle)
		t.Setenv("SILD_API_KEY", c.Admin)
		t.Setenv("SILD_OUTPUT", "json")
		out, _, err := runCmd(ctx, "ctl", "raft", "status")
		if err != nil {
			t.Fatal(err)
		}
		var st registryv1.RaftStatusResponse
		fromJSON(t, out, &st)
		if st.GetServerId() != follower.ID {
			t.Fatalf("status from %q, want %q", st.GetServerId(), follower.ID)
		}
		// A flag beats the environment.
		if out, _, err = runCmd(ctx, "ctl", "raft", "status", "-o", "table"); err != nil || !strings.Contains(out, "SERVER") {
			t.Fatalf("table: %q %v", out, err)
		}
	})

	t.Run("several registry addresses: the first that answers", func(t *testing.T) {
		dead := "127.0.0.1:1"
		out, _, err := runCmd(ctx, "ctl", "--registry", dead+","+follower.Srv.APIAddr(), "--trust", bundle, "--api-key", c.Admin, "raft", "status", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var st registryv1.RaftStatusResponse
		fromJSON(t, out, &st)
		if st.GetServerId() != follower.ID {
			t.Fatalf("answered by %q, want %q", st.GetServerId(), follower.ID)
		}
		_, _, err = runCmd(ctx, "ctl", "--registry", dead, "--trust", bundle, "--api-key", c.Admin, "--timeout", "5s", "raft", "status")
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "code Unavailable") {
			t.Fatalf("dead server: %v", err)
		}
	})

	t.Run("bad trust bundle", func(t *testing.T) {
		junk := filepath.Join(t.TempDir(), "junk.pem")
		if err := os.WriteFile(junk, []byte("not pem"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := runCmd(ctx, "ctl", "--registry", leader.Srv.APIAddr(), "--trust", junk, "--api-key", c.Admin, "member", "list")
		if err == nil || !strings.Contains(err.Error(), "trust bundle") {
			t.Fatalf("err = %v", err)
		}
		// A bundle of another ecosystem does not verify the server.
		other, err := pki.NewCA(mustTD(t, "fi.sild.test"), "FI root", time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		fi := filepath.Join(t.TempDir(), "fi.pem")
		if err := os.WriteFile(fi, pki.EncodeCerts(other.Cert), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err = runCmd(ctx, "ctl", "--registry", leader.Srv.APIAddr(), "--trust", fi, "--api-key", c.Admin, "--timeout", "5s", "member", "list")
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("foreign bundle: %v", err)
		}
	})

	t.Run("reader role is refused writes", func(t *testing.T) {
		var created registryv1.CreateApiKeyResponse
		fromJSON(t, mustCtl(t, leader, "apikey", "create", "auditor", "--role", "reader", "-o", "json"), &created)
		if created.GetSecret() == "" || created.GetKey().GetRole() != registryv1.Role_ROLE_READER {
			t.Fatalf("created %v", &created)
		}
		// The leader: a follower checks keys against its local state, which
		// may not have applied the new key yet.
		base := []string{"ctl", "--registry", leader.Srv.APIAddr(), "--trust", bundle, "--api-key", created.GetSecret()}
		if _, _, err := runCmd(ctx, append(base, "member", "list")...); err != nil {
			t.Fatalf("reader list: %v", err)
		}
		_, _, err := runCmd(ctx, append(base, "member", "add", "EE/GOV/1")...)
		if rpcerr.Reason(err) != rpcerr.ReasonPermissionDenied || !strings.Contains(err.Error(), "reason PERMISSION_DENIED") {
			t.Fatalf("reader write: %v", err)
		}
		out := mustCtl(t, leader, "apikey", "list")
		if !strings.Contains(out, created.GetKey().GetId()) || !strings.Contains(out, "reader") {
			t.Fatalf("apikey list:\n%s", out)
		}
		mustCtl(t, leader, "apikey", "revoke", created.GetKey().GetId())
		_, _, err = runCmd(ctx, append(base, "member", "list")...)
		if rpcerr.Reason(err) != rpcerr.ReasonUnauthenticated {
			t.Fatalf("revoked key: %v", err)
		}
		if _, _, err := ctlAt(leader, "apikey", "create", "x", "--role", "root"); err == nil || !strings.Contains(err.Error(), "--role") {
			t.Fatalf("bad role: %v", err)
		}
	})

	t.Run("subsystems nodes registrations requests", func(t *testing.T) {
		mustCtl(t, follower, "subsystem", "add", "EE/GOV/70000310/licensing")
		mustCtl(t, follower, "node", "add", "EE/GOV/70000310/ss1")
		out, errOut, err := ctlAt(follower, "node", "token", "EE/GOV/70000310/ss1", "--ttl", "2h")
		if err != nil || strings.Count(out, "\n") != 1 || len(strings.TrimSpace(out)) < 20 || !strings.Contains(errOut, "one-time join token") {
			t.Fatalf("token: out %q stderr %q err %v", out, errOut, err)
		}
		if out := mustCtl(t, leader, "node", "list"); !strings.Contains(out, "EE/GOV/70000310/ss1") || !strings.Contains(out, "pending") {
			t.Fatalf("node list:\n%s", out)
		}
		var reg registryv1.RegisterSubsystemResponse
		fromJSON(t, mustCtl(t, follower, "node", "register", "EE/GOV/70000310/licensing", "EE/GOV/70000310/ss1", "-o", "json"), &reg)
		id := reg.GetRequest().GetId()
		if id == 0 {
			t.Fatalf("register: %v", &reg)
		}
		var reqs registryv1.ListRequestsResponse
		fromJSON(t, mustCtl(t, leader, "request", "list", "--state", "all", "-o", "json"), &reqs)
		if len(reqs.GetRequests()) == 0 {
			t.Fatal("no requests listed")
		}
		if reg.GetRequest().GetState() == registryv1.RequestState_REQUEST_STATE_PENDING {
			out := mustCtl(t, leader, "request", "list", "--state", "pending")
			if !strings.Contains(out, "register_subsystem") {
				t.Fatalf("pending:\n%s", out)
			}
			mustCtl(t, leader, "request", "approve", itoa(id))
		}
		out = mustCtl(t, leader, "subsystem", "list")
		if !strings.Contains(out, "EE/GOV/70000310/licensing") || !strings.Contains(out, "EE/GOV/70000310/ss1") {
			t.Fatalf("subsystem list after approval:\n%s", out)
		}
		if _, _, err := ctlAt(leader, "request", "approve", "x"); err == nil {
			t.Fatal("bad request id accepted")
		}
		mustCtl(t, leader, "request", "auto-approve", "register_subsystem", "on")
		mustCtl(t, leader, "node", "unregister", "EE/GOV/70000310/licensing", "EE/GOV/70000310/ss1")
		mustCtl(t, leader, "node", "remove", "EE/GOV/70000310/ss1")
		if out := mustCtl(t, leader, "node", "list"); !strings.Contains(out, "revoked") {
			t.Fatalf("node list after remove:\n%s", out)
		}
	})

	t.Run("groups", func(t *testing.T) {
		mustCtl(t, follower, "group", "add", "security-servers", "--description", "all of them")
		mustCtl(t, follower, "group", "add-member", "security-servers", "EE/GOV/70000310/licensing")
		out := mustCtl(t, leader, "group", "list")
		if !strings.Contains(out, "security-servers") || !strings.Contains(out, "EE/GOV/70000310/licensing") {
			t.Fatalf("group list:\n%s", out)
		}
		mustCtl(t, follower, "group", "remove-member", "security-servers", "EE/GOV/70000310/licensing")
		mustCtl(t, follower, "group", "remove", "security-servers")
		if out := mustCtl(t, leader, "group", "list"); strings.Contains(out, "security-servers") {
			t.Fatalf("group still listed:\n%s", out)
		}
	})

	t.Run("service catalogue", func(t *testing.T) {
		set := descriptorSet(t, registryv1.File_sild_registry_v1_admin_proto)
		svc := "EE/GOV/70000310/licensing/sild.registry.v1.AdminService"
		if _, _, err := ctlAt(follower, "service", "publish", svc); err == nil || !strings.Contains(err.Error(), "--descriptor-set") {
			t.Fatalf("publish without descriptors: %v", err)
		}
		if _, _, err := ctlAt(follower, "service", "publish", "EE/GOV/70000310/licensing/no.such.Service", "--descriptor-set", set); err == nil ||
			!strings.Contains(err.Error(), "does not define service no.such.Service") {
			t.Fatalf("publish of undefined service: %v", err)
		}
		mustCtl(t, follower, "service", "publish", svc, "--descriptor-set", set)
		// Or straight from a running backend by reflection, v1 or, from an
		// older server, v1alpha alone: what is published is what the
		// backend was compiled with.
		for name, register := range map[string]func(*grpc.Server){
			"v1": func(s *grpc.Server) { reflection.RegisterV1(s) },
			"v1alpha": func(s *grpc.Server) {
				v1alphagrpc.RegisterServerReflectionServer(s, reflection.NewServer(reflection.ServerOptions{Services: s}))
			},
		} {
			backend := grpc.NewServer()
			testpb.RegisterTestServiceServer(backend, testpb.UnimplementedTestServiceServer{})
			register(backend)
			bl, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go backend.Serve(bl)
			fromBackend := "EE/GOV/70000310/licensing/grpc.testing.TestService"
			mustCtl(t, follower, "service", "publish", fromBackend, "--from-backend", bl.Addr().String())
			backend.Stop()
			var list registryv1.ListServicesResponse
			fromJSON(t, mustCtl(t, leader, "service", "list", "-o", "json"), &list)
			var set []byte
			for _, e := range list.GetServices() {
				if serviceStr(e.GetService()) == fromBackend {
					set = e.GetFileDescriptorSet()
				}
			}
			sd, err := descset.Service(set, "grpc.testing.TestService")
			if err != nil {
				t.Fatalf("%s: published descriptors: %v", name, err)
			}
			if got, want := protodesc.ToFileDescriptorProto(sd.ParentFile()), protodesc.ToFileDescriptorProto(testpb.File_grpc_testing_test_proto); !proto.Equal(got, want) {
				t.Fatalf("%s: published %v, want %v", name, got, want)
			}
			mustCtl(t, follower, "service", "remove", fromBackend)
		}
		var list registryv1.ListServicesResponse
		fromJSON(t, mustCtl(t, leader, "service", "list", "-o", "json"), &list)
		if len(list.GetServices()) != 1 || list.GetServices()[0].GetEnabled() || len(list.GetServices()[0].GetFileDescriptorSet()) == 0 {
			t.Fatalf("services: %v", &list)
		}
		mustCtl(t, follower, "service", "enable", svc)
		if out := mustCtl(t, leader, "service", "list"); !strings.Contains(out, svc) || !strings.Contains(out, "true") {
			t.Fatalf("service list:\n%s", out)
		}
		mustCtl(t, follower, "service", "disable", svc)
		mustCtl(t, follower, "service", "remove", svc)
		if out := mustCtl(t, leader, "service", "list"); strings.Contains(out, svc) {
			t.Fatalf("service still listed:\n%s", out)
		}
	})

	t.Run("raft status, server token, config", func(t *testing.T) {
		out := mustCtl(t, follower, "raft", "status")
		if strings.Count(out, "follower") < 2 || !strings.Contains(out, leader.ID+"  ") || !strings.Contains(out, "leader "+leader.ID) {
			t.Fatalf("raft status:\n%s", out)
		}
		var st registryv1.RaftStatusResponse
		fromJSON(t, mustCtl(t, follower, "raft", "status", "-o", "json"), &st)
		if len(st.GetServers()) != 3 || st.GetLeaderId() != leader.ID || st.GetCommitIndex() == 0 {
			t.Fatalf("raft status json: %v", &st)
		}
		var tok registryv1.CreateServerTokenResponse
		fromJSON(t, mustCtl(t, leader, "server", "token", "r9", "--voter", "-o", "json"), &tok)
		if tok.GetToken() == "" || !tok.GetExpiresAt().IsValid() {
			t.Fatalf("server token: %v", &tok)
		}
		if _, _, err := ctlAt(leader, "server", "remove", "r9"); rpcerr.Reason(err) != rpcerr.ReasonNotFound {
			t.Fatalf("remove unknown server: %v", err)
		}
		out = mustCtl(t, follower, "config", "show")
		for _, want := range []string{"instance", "EE", "ee.sild.test", "members", "spiffe://ee.sild.test/registry/config"} {
			if !strings.Contains(out, want) {
				t.Fatalf("config show lacks %q:\n%s", want, out)
			}
		}
		var g registryv1.GlobalConfig
		fromJSON(t, mustCtl(t, follower, "config", "show", "-o", "json"), &g)
		if g.GetInstance() != "EE" || g.GetVersion() == 0 || len(g.GetMembers()) != 1 {
			t.Fatalf("config json: instance %q version %d members %d", g.GetInstance(), g.GetVersion(), len(g.GetMembers()))
		}
		out = mustCtl(t, leader, "config", "rotate-key")
		if !strings.Contains(out, "rotated") || !strings.Contains(out, "spiffe://ee.sild.test/registry/config") {
			t.Fatalf("rotate-key: %q", out)
		}
	})

	t.Run("bad arguments are refused before sending", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"member", "list", "-o", "yaml"}, "table or json"},
			{[]string{"request", "list", "--state", "maybe"}, "--state"},
			{[]string{"request", "reject", "0"}, "positive number"},
			{[]string{"request", "auto-approve", "register_subsystem", "sometimes"}, "on or off"},
			{[]string{"node", "register", "EE/GOV/70000310/licensing", "EE/GOV"}, `node "EE/GOV"`},
			{[]string{"group", "add-member", "g", "EE/GOV/70000310"}, "subsystem"},
			{[]string{"service", "publish", "EE/GOV/70000310/licensing/not a name", "--descriptor-set", "x"}, "service"},
			{[]string{"member", "add"}, "accepts 1 arg"},
		} {
			_, _, err := ctlAt(leader, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) || status.Code(err) != codes.Unknown {
				t.Errorf("%v: err = %v, want %q", tc.args, err, tc.want)
			}
		}
	})
}

func itoa(u uint64) string { return strconv.FormatUint(u, 10) }

func mustTD(t *testing.T, s string) spiffeid.TrustDomain {
	t.Helper()
	td, err := spiffeid.TrustDomainFromString(s)
	if err != nil {
		t.Fatal(err)
	}
	return td
}
