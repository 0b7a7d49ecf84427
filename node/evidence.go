package node

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
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
