package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/ledger"
	"github.com/sildmesh/sild/node/access"
	"github.com/sildmesh/sild/node/envelope"
)

// adminServer is the node's AdminService: the provider's access rights
// (access.Server) and the evidence in the node's ledger.
type adminServer struct {
	*access.Server
	ledger func() *ledger.Ledger // nil until the node has joined
	log    *slog.Logger
}

func refuseAdmin(code codes.Code, reason, msg string) error {
	return rpcerr.New(code, reason, access.Component, msg)
}

// ExportEvidence implements AdminService: the evidence bundle of one message
// id, from the running ledger.
func (s *adminServer) ExportEvidence(ctx context.Context, req *nodev1.ExportEvidenceRequest) (*nodev1.ExportEvidenceResponse, error) {
	roles := []string{access.RoleAdmin, access.RoleReader}
	if req.GetIncludeBodies() {
		roles = roles[:1] // bodies are the exchanged data itself
	}
	if err := access.Authorize(ctx, roles...); err != nil {
		return nil, err
	}
	id := req.GetMessageId()
	if !envelope.ValidMessageID(id) {
		return nil, refuseAdmin(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, "message_id: 1 to 256 printable ASCII characters")
	}
	led := s.ledger()
	if led == nil {
		return nil, refuseAdmin(codes.Unavailable, rpcerr.ReasonLedgerUnavailable, "the ledger is not open yet (the node has not joined)")
	}
	b, err := led.Export(id)
	switch {
	case errors.Is(err, ledger.ErrNotFound):
		return nil, refuseAdmin(codes.NotFound, rpcerr.ReasonNotFound, "this node's ledger has no record of message id "+id)
	case errors.Is(err, ledger.ErrNoCheckpoint):
		return nil, refuseAdmin(codes.Unavailable, rpcerr.ReasonUnavailable, "no signed checkpoint covers the records yet; retry in a second")
	case err != nil:
		s.log.Error("export evidence", "message_id", id, "err", err)
		return nil, refuseAdmin(codes.Internal, rpcerr.ReasonInternal, "the evidence could not be read")
	}
	if !req.GetIncludeBodies() {
		for _, it := range b.GetItems() {
			it.Body = nil
		}
	}
	raw, err := proto.Marshal(b)
	if err != nil {
		return nil, refuseAdmin(codes.Internal, rpcerr.ReasonInternal, "the evidence could not be encoded")
	}
	return &nodev1.ExportEvidenceResponse{Bundle: raw, Records: uint32(len(b.GetItems())),
		Stamped: len(b.GetCheckpoint().GetTimestampToken()) > 0}, nil
}

// Bounds of ListRecords.
const (
	defaultRecordLimit = 100
	maxRecordLimit     = 1000
)

// ListRecords implements AdminService: the records of one ledger query.
func (s *adminServer) ListRecords(ctx context.Context, req *nodev1.ListRecordsRequest) (*nodev1.ListRecordsResponse, error) {
	if err := access.Authorize(ctx, access.RoleAdmin, access.RoleReader); err != nil {
		return nil, err
	}
	led := s.ledger()
	if led == nil {
		return nil, refuseAdmin(codes.Unavailable, rpcerr.ReasonLedgerUnavailable, "the ledger is not open yet (the node has not joined)")
	}
	resp, err := QueryRecords(led, req)
	var refusal *rpcerr.Error
	switch {
	case errors.As(err, &refusal):
		return nil, refusal
	case err != nil:
		s.log.Error("list records", "err", err)
		return nil, refuseAdmin(codes.Internal, rpcerr.ReasonInternal, "the ledger could not be read")
	}
	return resp, nil
}

// recordQuery is a checked ListRecords request.
type recordQuery struct {
	client   *ident.Subsystem
	service  *ident.Service
	user     string
	from, to time.Time
	limit    int
}

// parseRecordQuery checks req; a bad request is an *rpcerr.Error naming the
// field.
func parseRecordQuery(req *nodev1.ListRecordsRequest) (recordQuery, error) {
	bad := func(msg string) error { return refuseAdmin(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, msg) }
	q := recordQuery{limit: int(req.GetLimit())}
	switch {
	case q.limit == 0:
		q.limit = defaultRecordLimit
	case q.limit > maxRecordLimit:
		return q, bad(fmt.Sprintf("limit: at most %d", maxRecordLimit))
	}
	for _, b := range []struct {
		name string
		ts   *timestamppb.Timestamp
		dst  *time.Time
	}{{"from", req.GetFrom(), &q.from}, {"to", req.GetTo(), &q.to}} {
		if b.ts == nil {
			continue
		}
		if err := b.ts.CheckValid(); err != nil {
			return q, bad(b.name + ": not a valid time")
		}
		*b.dst = b.ts.AsTime()
	}
	if !q.from.IsZero() && !q.to.IsZero() && !q.from.Before(q.to) {
		return q, bad("from: must be before to")
	}
	switch by := req.GetBy().(type) {
	case *nodev1.ListRecordsRequest_Client:
		sub, err := ident.SubsystemFromProto(by.Client)
		if err != nil {
			return q, bad("client: " + err.Error())
		}
		q.client = &sub
	case *nodev1.ListRecordsRequest_Service:
		svc, err := ident.ServiceFromProto(by.Service)
		if err != nil {
			return q, bad("service: " + err.Error())
		}
		q.service = &svc
	case *nodev1.ListRecordsRequest_UserId:
		if !envelope.ValidUserID(by.UserId) {
			return q, bad("user_id: 1 to 256 printable ASCII characters")
		}
		q.user = by.UserId
	default:
		return q, bad("give one of client, service and user_id")
	}
	return q, nil
}

// QueryRecords answers a ListRecords request from led (a running node's
// ledger, or one opened from a stopped node's directory). A bad request is
// an *rpcerr.Error naming the field; other errors are the ledger's.
func QueryRecords(led *ledger.Ledger, req *nodev1.ListRecordsRequest) (*nodev1.ListRecordsResponse, error) {
	q, err := parseRecordQuery(req)
	if err != nil {
		return nil, err
	}
	var recs []*ledger.Stored
	switch {
	case q.client != nil:
		recs, err = led.ByClient(q.client.String(), q.from, q.to, q.limit+1)
	case q.service != nil:
		recs, err = led.ByService(q.service.Subsystem.String(), q.service.Name, q.from, q.to, q.limit+1)
	default:
		recs, err = led.ByUser(q.user, q.from, q.to, q.limit+1)
	}
	if err != nil {
		return nil, err
	}
	resp := &nodev1.ListRecordsResponse{More: len(recs) > q.limit}
	for _, r := range recs[:min(len(recs), q.limit)] {
		a, err := anypb.New(r.Record)
		if err != nil {
			return nil, err
		}
		resp.Records = append(resp.Records, &nodev1.LedgerRecord{Index: r.Index, Record: a})
	}
	return resp, nil
}
