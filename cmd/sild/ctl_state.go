package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/descset"
)

// Identifier arguments are parsed before anything is sent, so that a typo
// gets the parser's precise message instead of a round trip.

func argMember(s string) (*identv1.MemberId, error) {
	m, err := ident.ParseMember(s)
	if err != nil {
		return nil, fmt.Errorf("member %q: %w", s, err)
	}
	return m.Proto(), nil
}

func argSubsystem(s string) (*identv1.SubsystemId, error) {
	v, err := ident.ParseSubsystem(s)
	if err != nil {
		return nil, fmt.Errorf("subsystem %q: %w", s, err)
	}
	return v.Proto(), nil
}

func argNode(s string) (*identv1.NodeId, error) {
	v, err := ident.ParseNode(s)
	if err != nil {
		return nil, fmt.Errorf("node %q: %w", s, err)
	}
	return v.Proto(), nil
}

func argService(s string) (*identv1.ServiceId, error) {
	v, err := ident.ParseService(s)
	if err != nil {
		return nil, fmt.Errorf("service %q: %w", s, err)
	}
	return v.Proto(), nil
}

// Identifiers in answers are shown in canonical form; one the parser refuses
// (which a correct server never sends) is shown as "?".

func memberStr(p *identv1.MemberId) string {
	if v, err := ident.MemberFromProto(p); err == nil {
		return v.String()
	}
	return "?"
}

func subsystemStr(p *identv1.SubsystemId) string {
	if v, err := ident.SubsystemFromProto(p); err == nil {
		return v.String()
	}
	return "?"
}

func nodeStr(p *identv1.NodeId) string {
	if v, err := ident.NodeFromProto(p); err == nil {
		return v.String()
	}
	return "?"
}

func serviceStr(p *identv1.ServiceId) string {
	if v, err := ident.ServiceFromProto(p); err == nil {
		return v.String()
	}
	return "?"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newCtlMemberCmd(opts *ctlOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "member", Short: "Add, remove and list members (organisations)"}
	var name string
	add := &cobra.Command{
		Use: "add MEMBER", Short: "Add a member, e.g. EE/GOV/70000310", Args: cobra.ExactArgs(1),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			id, err := argMember(args[0])
			if err != nil {
				return err
			}
			resp, err := c.client.AddMember(ctx, &registryv1.AddMemberRequest{Id: id, Name: name})
			if err != nil {
				return callError("add member", err)
			}
			return c.done(resp, "member %s added", args[0])
		}),
	}
	add.Flags().StringVar(&name, "name", "", "the organisation's name")
	remove := &cobra.Command{
		Use: "remove MEMBER", Short: "Remove a member", Args: cobra.ExactArgs(1),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			id, err := argMember(args[0])
			if err != nil {
				return err
			}
			resp, err := c.client.RemoveMember(ctx, &registryv1.RemoveMemberRequest{Id: id})
			if err != nil {
				return callError("remove member", err)
			}
			return c.done(resp, "member %s removed", args[0])
		}),
	}
	var stale bool
	list := &cobra.Command{
		Use: "list", Short: "List members", Args: cobra.NoArgs,
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, _ []string) error {
			resp, err := c.client.ListMembers(ctx, &registryv1.ListMembersRequest{Read: readOpts(stale)})
			if err != nil {
				return callError("list members", err)
			}
			if c.json() {
				return c.printJSON(resp)
			}
			var rows [][]string
			for _, m := range resp.GetMembers() {
				rows = append(rows, []string{memberStr(m.GetId()), orDash(m.GetName())})
			}
			return c.table([]string{"MEMBER", "NAME"}, rows)
		}),
	}
	addStale(list, &stale)
	cmd.AddCommand(add, remove, list)
	return cmd
}

func newCtlSubsystemCmd(opts *ctlOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "subsystem", Short: "Add, remove and list subsystems (members' systems)"}
	add := &cobra.Command{
		Use: "add SUBSYSTEM", Short: "Add a subsystem, e.g. EE/GOV/70000310/licensing", Args: cobra.ExactArgs(1),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			id, err := argSubsystem(args[0])
			if err != nil {
				return err
			}
			resp, err := c.client.AddSubsystem(ctx, &registryv1.AddSubsystemRequest{Id: id})
			if err != nil {
				return callError("add subsystem", err)
			}
			return c.done(resp, "subsystem %s added", args[0])
		}),
	}
	remove := &cobra.Command{
		Use: "remove SUBSYSTEM", Short: "Remove a subsystem", Args: cobra.ExactArgs(1),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			id, err := argSubsystem(args[0])
			if err != nil {
				return err
			}
			resp, err := c.client.RemoveSubsystem(ctx, &registryv1.RemoveSubsystemRequest{Id: id})
			if err != nil {
				return callError("remove subsystem", err)
			}
			return c.done(resp, "subsystem %s removed", args[0])
		}),
	}
	var stale bool
	list := &cobra.Command{
		Use: "list", Short: "List subsystems and the nodes that host them", Args: cobra.NoArgs,
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, _ []string) error {
			resp, err := c.client.ListSubsystems(ctx, &registryv1.ListSubsystemsRequest{Read: readOpts(stale)})
			if err != nil {
				return callError("list subsystems", err)
			}
			if c.json() {
				return c.printJSON(resp)
			}
			var rows [][]string
			for _, s := range resp.GetSubsystems() {
				var nodes []string
				for _, n := range s.GetNodes() {
					nodes = append(nodes, nodeStr(n))
				}
				rows = append(rows, []string{subsystemStr(s.GetId()), orDash(strings.Join(nodes, ","))})
			}
			return c.table([]string{"SUBSYSTEM", "NODES"}, rows)
		}),
	}
	addStale(list, &stale)
	cmd.AddCommand(add, remove, list)
	return cmd
}

func nodeState(s registryv1.NodeState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "NODE_STATE_"))
}

func newCtlNodeCmd(opts *ctlOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "Manage security servers (nodes): add, join tokens, registrations, removal"}
	add := &cobra.Command{
		Use: "add NODE", Short: "Register a node, e.g. EE/GOV/70000310/ss1 (pending until it joins)", Args: cobra.ExactArgs(1),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			id, err := argNode(args[0])
			if err != nil {
				return err
			}
			resp, err := c.client.AddNode(ctx, &registryv1.AddNodeRequest{Id: id})
			if err != nil {
				return callError("add node", err)
			}
			return c.done(resp, "node %s added; create its join token with: sild ctl node token %s", args[0], args[0])
		}),
	}
	remove := &cobra.Command{
		Use: "remove NODE", Short: "Revoke a node: it can no longer renew and the configuration marks it revoked", Args: cobra.ExactArgs(1),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			id, err := argNode(args[0])
			if err != nil {
				return err
			}
			resp, err := c.client.RemoveNode(ctx, &registryv1.RemoveNodeRequest{Id: id})
			if err != nil {
				return callError("remove node", err)
			}
			return c.done(resp, "node %s revoked", args[0])
		}),
	}
	var stale bool
	list := &cobra.Command{
		Use: "list", Short: "List nodes with their state and address", Args: cobra.NoArgs,
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, _ []string) error {
			resp, err := c.client.ListNodes(ctx, &registryv1.ListNodesRequest{Read: readOpts(stale)})
			if err != nil {
				return callError("list nodes", err)
			}
			if c.json() {
				return c.printJSON(resp)
			}
			var rows [][]string
			for _, n := range resp.GetNodes() {
				rows = append(rows, []string{nodeStr(n.GetId()), nodeState(n.GetState()), orDash(n.GetAddress()), orDash(n.GetSvidKeyHash())})
			}
			return c.table([]string{"NODE", "STATE", "ADDRESS", "SVID KEY"}, rows)
		}),
	}
	addStale(list, &stale)
	var ttl time.Duration
	token := &cobra.Command{
		Use: "token NODE", Short: "Mint the one-time token a node joins with", Args: cobra.ExactArgs(1),
		Long: `Mint a one-time join token for a node added with 'sild ctl node add'.
The token is printed once; hand it to the node's operator. It expires after
--ttl (default 1h, at most 168h).`,
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			id, err := argNode(args[0])
			if err != nil {
				return err
			}
			req := &registryv1.CreateJoinTokenRequest{Node: id}
			if ttl != 0 {
				req.Ttl = durationpb.New(ttl)
			}
			resp, err := c.client.CreateJoinToken(ctx, req)
			if err != nil {
				return callError("create join token", err)
			}
			if c.json() {
				return c.printJSON(resp)
			}
			return c.secret(resp.GetToken(), "one-time join token for %s, expires %s", args[0], fmtTime(resp.GetExpiresAt()))
		}),
	}
	token.Flags().DurationVar(&ttl, "ttl", 0, "token lifetime (default 1h on the server, at most 168h)")
	register := &cobra.Command{
		Use: "register SUBSYSTEM NODE", Short: "Declare that NODE hosts SUBSYSTEM (a management request)", Args: cobra.ExactArgs(2),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			sub, err := argSubsystem(args[0])
			if err != nil {
				return err
			}
			node, err := argNode(args[1])
			if err != nil {
				return err
			}
			resp, err := c.client.RegisterSubsystem(ctx, &registryv1.RegisterSubsystemRequest{Subsystem: sub, Node: node})
			if err != nil {
				return callError("register subsystem", err)
			}
			q := resp.GetRequest()
			return c.done(resp, "request %d: %s on %s: %s", q.GetId(), args[0], args[1], requestState(q.GetState()))
		}),
	}
	unregister := &cobra.Command{
		Use: "unregister SUBSYSTEM NODE", Short: "Withdraw NODE from hosting SUBSYSTEM", Args: cobra.ExactArgs(2),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			sub, err := argSubsystem(args[0])
			if err != nil {
				return err
			}
			node, err := argNode(args[1])
			if err != nil {
				return err
			}
			resp, err := c.client.UnregisterSubsystem(ctx, &registryv1.UnregisterSubsystemRequest{Subsystem: sub, Node: node})
			if err != nil {
				return callError("unregister subsystem", err)
			}
			return c.done(resp, "%s no longer hosted on %s", args[0], args[1])
		}),
	}
	cmd.AddCommand(add, remove, list, token, register, unregister)
	return cmd
}

func newCtlGroupCmd(opts *ctlOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "group", Short: "Manage global groups of subsystems (usable in access rights)"}
	var desc string
	add := &cobra.Command{
		Use: "add CODE", Short: "Add a global group", Args: cobra.ExactArgs(1),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			resp, err := c.client.AddGroup(ctx, &registryv1.AddGroupRequest{Code: args[0], Description: desc})
			if err != nil {
				return callError("add group", err)
			}
			return c.done(resp, "group %s added", args[0])
		}),
	}
	add.Flags().StringVar(&desc, "description", "", "what the group is for")
	remove := &cobra.Command{
		Use: "remove CODE", Short: "Remove a global group", Args: cobra.ExactArgs(1),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			resp, err := c.client.RemoveGroup(ctx, &registryv1.RemoveGroupRequest{Code: args[0]})
			if err != nil {
				return callError("remove group", err)
			}
			return c.done(resp, "group %s removed", args[0])
		}),
	}
	addMember := &cobra.Command{
		Use: "add-member CODE SUBSYSTEM", Short: "Add a subsystem to a group", Args: cobra.ExactArgs(2),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			sub, err := argSubsystem(args[1])
			if err != nil {
				return err
			}
			resp, err := c.client.AddGroupMember(ctx, &registryv1.AddGroupMemberRequest{Code: args[0], Member: sub})
			if err != nil {
				return callError("add group member", err)
			}
			return c.done(resp, "%s added to group %s", args[1], args[0])
		}),
	}
	removeMember := &cobra.Command{
		Use: "remove-member CODE SUBSYSTEM", Short: "Remove a subsystem from a group", Args: cobra.ExactArgs(2),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			sub, err := argSubsystem(args[1])
			if err != nil {
				return err
			}
			resp, err := c.client.RemoveGroupMember(ctx, &registryv1.RemoveGroupMemberRequest{Code: args[0], Member: sub})
			if err != nil {
				return callError("remove group member", err)
			}
			return c.done(resp, "%s removed from group %s", args[1], args[0])
		}),
	}
	var stale bool
	list := &cobra.Command{
		Use: "list", Short: "List global groups and their members", Args: cobra.NoArgs,
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, _ []string) error {
			resp, err := c.client.ListGroups(ctx, &registryv1.ListGroupsRequest{Read: readOpts(stale)})
			if err != nil {
				return callError("list groups", err)
			}
			if c.json() {
				return c.printJSON(resp)
			}
			var rows [][]string
			for _, g := range resp.GetGroups() {
				var ms []string
				for _, m := range g.GetMembers() {
					ms = append(ms, subsystemStr(m))
				}
				rows = append(rows, []string{g.GetCode(), orDash(g.GetDescription()), orDash(strings.Join(ms, ","))})
			}
			return c.table([]string{"GROUP", "DESCRIPTION", "MEMBERS"}, rows)
		}),
	}
	addStale(list, &stale)
	cmd.AddCommand(add, remove, addMember, removeMember, list)
	return cmd
}

// readDescriptorSet reads a binary FileDescriptorSet (as `buf build
// --as-file-descriptor-set -o FILE` writes it) and checks that it defines
// the service name.
func readDescriptorSet(file, service string) ([]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("descriptor set: %w", err)
	}
	if err := checkDescriptorSet(data, service); err != nil {
		return nil, fmt.Errorf("descriptor set %s: %w", file, err)
	}
	return data, nil
}

// checkDescriptorSet checks that data is a serialized FileDescriptorSet
// whose files link (imports included) and define the service.
func checkDescriptorSet(data []byte, service string) error {
	_, err := descset.Service(data, service)
	return err
}

func newCtlServiceCmd(opts *ctlOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "service", Short: "Manage the service catalogue: publish, enable, disable, remove, list"}
	var descFile, fromBackend string
	var enabled bool
	publish := &cobra.Command{
		Use:   "publish SERVICE (--descriptor-set FILE | --from-backend ADDR)",
		Short: "Publish a subsystem's gRPC service with its protobuf descriptors",
		Long: `Publish a gRPC service of a subsystem, e.g.
EE/GOV/70000310/licensing/licensing.v1.Licenses, with the FileDescriptorSet
that defines it and everything it imports (buf build --as-file-descriptor-set
-o FILE), or fetched from the running backend by gRPC server reflection, v1
or v1alpha (--from-backend host:port, plaintext). Published services start
disabled unless --enabled is given.`,
		Args: cobra.ExactArgs(1),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			id, err := argService(args[0])
			if err != nil {
				return err
			}
			var set []byte
			switch {
			case descFile != "" && fromBackend != "":
				return fmt.Errorf("--descriptor-set and --from-backend: give one")
			case descFile != "":
				if set, err = readDescriptorSet(descFile, id.GetServiceName()); err != nil {
					return err
				}
			case fromBackend != "":
				conn, err := grpc.NewClient(fromBackend, grpc.WithTransportCredentials(insecure.NewCredentials()))
				if err != nil {
					return fmt.Errorf("--from-backend: %w", err)
				}
				defer conn.Close()
				if set, err = descset.FromReflection(ctx, conn, id.GetServiceName()); err != nil {
					return fmt.Errorf("--from-backend %s: %w", fromBackend, err)
				}
			default:
				return fmt.Errorf("--descriptor-set FILE or --from-backend ADDR is required")
			}
			resp, err := c.client.PublishService(ctx, &registryv1.PublishServiceRequest{Service: id, FileDescriptorSet: set, Enabled: enabled})
			if err != nil {
				return callError("publish service", err)
			}
			state := "disabled"
			if enabled {
				state = "enabled"
			}
			return c.done(resp, "service %s published (%s)", args[0], state)
		}),
	}
	publish.Flags().StringVar(&descFile, "descriptor-set", "", "binary FileDescriptorSet defining the service")
	publish.Flags().StringVar(&fromBackend, "from-backend", "", "fetch the descriptors from this backend's gRPC server reflection, v1 or v1alpha (host:port)")
	publish.Flags().BoolVar(&enabled, "enabled", false, "enable the service at once")
	setEnabled := func(use, short string, on bool) *cobra.Command {
		return &cobra.Command{
			Use: use + " SERVICE", Short: short, Args: cobra.ExactArgs(1),
			RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
				id, err := argService(args[0])
				if err != nil {
					return err
				}
				resp, err := c.client.SetServiceEnabled(ctx, &registryv1.SetServiceEnabledRequest{Service: id, Enabled: on})
				if err != nil {
					return callError(use+" service", err)
				}
				return c.done(resp, "service %s %sd", args[0], use)
			}),
		}
	}
	remove := &cobra.Command{
		Use: "remove SERVICE", Short: "Remove a service from the catalogue", Args: cobra.ExactArgs(1),
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, args []string) error {
			id, err := argService(args[0])
			if err != nil {
				return err
			}
			resp, err := c.client.RemoveService(ctx, &registryv1.RemoveServiceRequest{Service: id})
			if err != nil {
				return callError("remove service", err)
			}
			return c.done(resp, "service %s removed", args[0])
		}),
	}
	var stale bool
	list := &cobra.Command{
		Use: "list", Short: "List the service catalogue", Args: cobra.NoArgs,
		RunE: ctlRun(opts, func(ctx context.Context, c *ctl, _ []string) error {
			resp, err := c.client.ListServices(ctx, &registryv1.ListServicesRequest{Read: readOpts(stale)})
			if err != nil {
				return callError("list services", err)
			}
			if c.json() {
				return c.printJSON(resp)
			}
			var rows [][]string
			for _, s := range resp.GetServices() {
				rows = append(rows, []string{serviceStr(s.GetService()), strconv.FormatBool(s.GetEnabled()), strconv.Itoa(len(s.GetFileDescriptorSet()))})
			}
			return c.table([]string{"SERVICE", "ENABLED", "DESCRIPTORS (BYTES)"}, rows)
		}),
	}
	addStale(list, &stale)
	cmd.AddCommand(publish, setEnabled("enable", "Enable a published service", true),
		setEnabled("disable", "Disable a published service (nodes stop routing to it)", false), remove, list)
	return cmd
}
