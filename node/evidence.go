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

// QueryRecords answers a ListRecords request from led (a running node's
// ledger, or one opened from a stopped node's directory). A bad request is
// an *rpcerr.Error naming the field; other errors are the ledger's.
func QueryRecords(led *ledger.Ledger, req *nodev1.ListRecordsRequest) (*nodev1.ListRecordsResponse, error) {
	bad := func(msg string) error { return refuseAdmin(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, msg) }
	limit := int(req.GetLimit())
	switch {
	case limit == 0:
		limit = defaultRecordLimit
	case limit > maxRecordLimit:
		return nil, bad(fmt.Sprintf("limit: at most %d", maxRecordLimit))
	}
	var from, to time.Time
	if req.GetFrom() != nil {
		from = req.GetFrom().AsTime()
	}
	if req.GetTo() != nil {
		to = req.GetTo().AsTime()
	}
	if !from.IsZero() && !to.IsZero() && !from.Before(to) {
		return nil, bad("from: must be before to")
	}
	var recs []*ledger.Stored
	var err error
	switch by := req.GetBy().(type) {
	case *nodev1.ListRecordsRequest_Client:
		sub, perr := ident.SubsystemFromProto(by.Client)
		if perr != nil {
			return nil, bad("client: " + perr.Error())
		}
		recs, err = led.ByClient(sub.String(), from, to, limit+1)
	case *nodev1.ListRecordsRequest_Service:
		svc, perr := ident.ServiceFromProto(by.Service)
		if perr != nil {
			return nil, bad("service: " + perr.Error())
		}
		recs, err = led.ByService(svc.Subsystem.String(), svc.Name, from, to, limit+1)
	case *nodev1.ListRecordsRequest_UserId:
		if !envelope.ValidUserID(by.UserId) {
			return nil, bad("user_id: 1 to 256 printable ASCII characters")
		}
		recs, err = led.ByUser(by.UserId, from, to, limit+1)
	default:
		return nil, bad("give one of client, service and user_id")
	}
	if err != nil {
		return nil, err
	}
	resp := &nodev1.ListRecordsResponse{More: len(recs) > limit}
	for _, r := range recs[:min(len(recs), limit)] {
		a, err := anypb.New(r.Record)
		if err != nil {
			return nil, err
		}
		resp.Records = append(resp.Records, &nodev1.LedgerRecord{Index: r.Index, Record: a})
	}
	return resp, nil
}
