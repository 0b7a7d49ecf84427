package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/node"
)

func newLedgerQueryCmd() *cobra.Command {
	var (
		src                             ledgerSource
		client, service, user, from, to string
		limit                           uint32
		output                          string
	)
	cmd := &cobra.Command{
		Use:   "query (--data DIR | --node-admin HOST:PORT) (--client C | --service S | --user U) [--from T] [--to T]",
		Short: "List the exchanges a ledger recorded for a client, a service or a user",
		Long: `List the records of a node's ledger, oldest first: the calls a client
subsystem made (--client), the calls to a service (--service
SUBSYSTEM/SERVICE), or the calls made on behalf of a user (--user, the
sild-user-id the calls carried: who looked at whose data, and why). --from and
--to (RFC 3339) bound the calls' start times; --limit caps the answer (default
100, at most 1000; the last line says when more matched: ask again with
--from set to the last start time).

From a running node, ask its admin listener (--node-admin, with an API key of
the node's admin_keys; the reader role suffices). From a stopped node (or a
copy of its data), open its ledger directory (--data).

Export a record's evidence with 'sild ledger export --message-id'.`,
		Example: `  sild ledger query --node-admin 127.0.0.1:9443 --api-key-file reader.key --user EE38001085718
  sild ledger query --data /var/lib/sild/node/ledger --client EE/GOV/70000310/licensing --from 2026-11-01T00:00:00Z -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := bindEnv(cmd.Flags(), nil, "api-key", "api-key-file"); err != nil {
				return err
			}
			if err := checkOutput(output); err != nil {
				return err
			}
			req := &nodev1.ListRecordsRequest{Limit: limit}
			given := 0
			if client != "" {
				given++
				sub, err := ident.ParseSubsystem(client)
				if err != nil {
					return fmt.Errorf("--client: %w", err)
				}
				req.By = &nodev1.ListRecordsRequest_Client{Client: sub.Proto()}
			}
			if service != "" {
				given++
				svc, err := ident.ParseService(service)
				if err != nil {
					return fmt.Errorf("--service: %w", err)
				}
				req.By = &nodev1.ListRecordsRequest_Service{Service: svc.Proto()}
			}
			if user != "" {
				given++
				req.By = &nodev1.ListRecordsRequest_UserId{UserId: user}
			}
			if given != 1 {
				return errors.New("give one of --client, --service and --user")
			}
			for _, b := range []struct {
				flag, v string
				dst     **timestamppb.Timestamp
			}{{"--from", from, &req.From}, {"--to", to, &req.To}} {
				if b.v == "" {
					continue
				}
				t, err := time.Parse(time.RFC3339Nano, b.v)
				if err != nil {
					return fmt.Errorf("%s: want an RFC 3339 time such as 2026-11-23T10:00:00Z", b.flag)
				}
				*b.dst = timestamppb.New(t)
			}
			var resp *nodev1.ListRecordsResponse
			switch {
			case src.check() != nil:
				return src.check()
			case src.admin != "":
				adm, closeConn, err := src.dial()
				if err != nil {
					return err
				}
				defer closeConn()
				ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
				defer cancel()
				if resp, err = adm.ListRecords(ctx, req); err != nil {
					return callError("query "+src.admin, err)
				}
			default:
				l, err := openLedgerDir(src.dataDir, "")
				if err != nil {
					return err
				}
				defer l.Close()
				if resp, err = node.QueryRecords(l, req); err != nil {
					return fmt.Errorf("query: %w", err)
				}
			}
			c := &ctl{opts: &ctlOptions{output: output}, out: cmd.OutOrStdout(), errOut: cmd.ErrOrStderr()}
			if c.json() {
				return c.printJSON(resp)
			}
			rows := make([][]string, 0, len(resp.GetRecords()))
			for _, lr := range resp.GetRecords() {
				var r ledgerv1.Record
				if err := lr.GetRecord().UnmarshalTo(&r); err != nil {
					return fmt.Errorf("record %d: %w", lr.GetIndex(), err)
				}
				side := strings.ToLower(strings.TrimPrefix(r.GetSide().String(), "SIDE_"))
				st := codes.Code(r.GetStatusCode()).String()
				if r.GetStatusReason() != "" {
					st += " " + r.GetStatusReason()
				}
				rows = append(rows, []string{r.GetStartTime().AsTime().UTC().Format(time.RFC3339), side, r.GetMessageId(), r.GetClient(),
					r.GetTarget() + "/" + r.GetService() + "/" + r.GetMethod(), r.GetUserId(), r.GetPurpose(), st})
			}
			if err := c.table([]string{"STARTED (UTC)", "SIDE", "MESSAGE ID", "CLIENT", "CALLED", "USER", "PURPOSE", "STATUS"}, rows); err != nil {
				return err
			}
			if resp.GetMore() {
				fmt.Fprintln(c.out, "(more records matched: ask again with --from set to the last start time)")
			}
			return nil
		},
	}
	f := cmd.Flags()
	src.flags(f)
	f.StringVar(&client, "client", "", "calls made by this client subsystem")
	f.StringVar(&service, "service", "", "calls to this service, SUBSYSTEM/SERVICE")
	f.StringVar(&user, "user", "", "calls made on behalf of this user id")
	f.StringVar(&from, "from", "", "only calls started at or after this time (RFC 3339)")
	f.StringVar(&to, "to", "", "only calls started before this time (RFC 3339)")
	f.Uint32Var(&limit, "limit", 0, "at most this many records (default 100, at most 1000)")
	f.StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}
