package node

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
)

// FuzzParseRecordQuery: whatever ListRecords request arrives, it is either
// refused with INVALID_ARGUMENT naming what is wrong, or yields one
// well-formed query within the limits.
func FuzzParseRecordQuery(f *testing.F) {
	sub, _ := ident.ParseSubsystem("EE/GOV/70000310/licensing")
	for _, r := range []*nodev1.ListRecordsRequest{
		{By: &nodev1.ListRecordsRequest_UserId{UserId: "EE38001085718"}, Limit: 10},
		{By: &nodev1.ListRecordsRequest_Client{Client: sub.Proto()}, From: timestamppb.New(time.Unix(1, 0)), To: timestamppb.New(time.Unix(2, 0))},
		{By: &nodev1.ListRecordsRequest_Service{Service: ident.Service{Subsystem: sub, Name: "a.B"}.Proto()}},
		{By: &nodev1.ListRecordsRequest_Client{Client: &identv1.SubsystemId{}}},
		{Limit: 5000},
	} {
		b, _ := proto.Marshal(r)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var req nodev1.ListRecordsRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		q, err := parseRecordQuery(&req)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument || rpcerr.Reason(err) != rpcerr.ReasonInvalidArgument {
				t.Fatalf("refusal %v", err)
			}
			return
		}
		n := 0
		if q.client != nil {
			n++
			if q.client.Validate() != nil {
				t.Fatalf("invalid client %v accepted", q.client)
			}
		}
		if q.service != nil {
			n++
			if q.service.Validate() != nil {
				t.Fatalf("invalid service %v accepted", q.service)
			}
		}
		if q.user != "" {
			n++
		}
		if n != 1 || q.limit < 1 || q.limit > maxRecordLimit || (!q.from.IsZero() && !q.to.IsZero() && !q.from.Before(q.to)) {
			t.Fatalf("accepted %+v", q)
		}
	})
}
