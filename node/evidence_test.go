package node_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
	"github.com/sildmesh/sild/internal/apikey"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/ledger"
	"github.com/sildmesh/sild/node"
	"github.com/sildmesh/sild/registry/registrytest"
)

// An operator exports the evidence of an exchange from a running node, over
// gRPC and REST, and it verifies offline against the ecosystem's roots.
func TestExportEvidenceWhileRunning(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	readerKey, _ := apikey.Generate()
	m := startTwoNodes(t, ctx, nil, func(c *node.Config) {
		c.AdminKeys = append(c.AdminKeys, node.AdminKey{Hash: apikey.Hash(readerKey), Role: "reader"})
	})
	m.grant(t, ctx)
	if _, err := m.call(t, ctx, "evidence-1"); err != nil {
		t.Fatal(err)
	}
	adm := nodev1.NewAdminServiceClient(dial(t, m.b.n.AdminAddr()))
	as := func(key string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}

	// The checkpoint is signed within a second and time-stamped soon after.
	var resp *nodev1.ExportEvidenceResponse
	registrytest.WaitFor(t, 30*time.Second, "a stamped bundle", func() bool {
		var err error
		resp, err = adm.ExportEvidence(as(readerKey), &nodev1.ExportEvidenceRequest{MessageId: "evidence-1"})
		return err == nil && resp.GetStamped()
	})
	v, err := ledger.VerifyBundle(resp.GetBundle(), m.c.Roots)
	if err != nil || resp.GetRecords() != 1 {
		t.Fatalf("exported bundle (%d records): %v", resp.GetRecords(), err)
	}
	if len(v.Records) != 1 || v.Records[0].Record.GetMessageId() != "evidence-1" {
		t.Fatalf("verified records: %v", v.Records)
	}

	// The same over REST, as a legacy auditing tool would fetch it.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.b.n.AdminAddr()+"/v1/evidence/evidence-1", nil)
	req.Header.Set("Authorization", "Bearer "+readerKey)
	hr, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var raw json.RawMessage
	if err := json.NewDecoder(hr.Body).Decode(&raw); err != nil || hr.StatusCode != http.StatusOK {
		t.Fatalf("REST: %d %v", hr.StatusCode, err)
	}
	hr.Body.Close()
	var restResp nodev1.ExportEvidenceResponse
	if err := protojson.Unmarshal(raw, &restResp); err != nil {
		t.Fatal(err)
	}
	if _, err := ledger.VerifyBundle(restResp.GetBundle(), m.c.Roots); err != nil {
		t.Fatalf("bundle over REST: %v", err)
	}

	for _, tc := range []struct {
		name   string
		ctx    context.Context
		req    *nodev1.ExportEvidenceRequest
		code   codes.Code
		reason string
	}{
		{"unknown message id", as(readerKey), &nodev1.ExportEvidenceRequest{MessageId: "no-such-message"}, codes.NotFound, rpcerr.ReasonNotFound},
		{"empty message id", as(readerKey), &nodev1.ExportEvidenceRequest{}, codes.InvalidArgument, rpcerr.ReasonInvalidArgument},
		{"control character", as(readerKey), &nodev1.ExportEvidenceRequest{MessageId: "a\nb"}, codes.InvalidArgument, rpcerr.ReasonInvalidArgument},
		{"bodies need admin", as(readerKey), &nodev1.ExportEvidenceRequest{MessageId: "evidence-1", IncludeBodies: true}, codes.PermissionDenied, rpcerr.ReasonPermissionDenied},
		{"no key", ctx, &nodev1.ExportEvidenceRequest{MessageId: "evidence-1"}, codes.Unauthenticated, rpcerr.ReasonUnauthenticated},
	} {
		_, err := adm.ExportEvidence(tc.ctx, tc.req)
		if status.Code(err) != tc.code || rpcerr.Reason(err) != tc.reason {
			t.Errorf("%s: %v (reason %q), want %v %s", tc.name, err, rpcerr.Reason(err), tc.code, tc.reason)
		}
	}
	if _, err := adm.ExportEvidence(as(m.adminKey), &nodev1.ExportEvidenceRequest{MessageId: "evidence-1", IncludeBodies: true}); err != nil {
		t.Fatalf("admin with bodies: %v", err)
	}

	// Who called on behalf of the user, over REST with the reader's key.
	req, _ = http.NewRequestWithContext(ctx, http.MethodPost, "http://"+m.b.n.AdminAddr()+"/v1/records:query",
		strings.NewReader(`{"userId":"EE38001085718"}`))
	req.Header.Set("Authorization", "Bearer "+readerKey)
	hr, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(hr.Body)
	hr.Body.Close()
	var listed nodev1.ListRecordsResponse
	if hr.StatusCode != http.StatusOK || protojson.Unmarshal(body, &listed) != nil || len(listed.GetRecords()) != 1 || listed.GetMore() {
		t.Fatalf("records by user over REST: %d %s", hr.StatusCode, body)
	}
	var rec ledgerv1.Record
	if err := listed.GetRecords()[0].GetRecord().UnmarshalTo(&rec); err != nil || rec.GetMessageId() != "evidence-1" || rec.GetPurpose() != "licence-check" {
		t.Fatalf("record by user: %v %v", &rec, err)
	}
	for name, q := range map[string]*nodev1.ListRecordsRequest{
		"no query":  {},
		"bad user":  {By: &nodev1.ListRecordsRequest_UserId{UserId: "a\nb"}},
		"too many":  {By: &nodev1.ListRecordsRequest_UserId{UserId: "u"}, Limit: 1001},
		"bad range": {By: &nodev1.ListRecordsRequest_UserId{UserId: "u"}, From: timestamppb.New(time.Now()), To: timestamppb.New(time.Now().Add(-time.Hour))},
	} {
		if _, err := adm.ListRecords(as(readerKey), q); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := adm.ListRecords(ctx, &nodev1.ListRecordsRequest{By: &nodev1.ListRecordsRequest_UserId{UserId: "u"}}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("without a key: %v", err)
	}
}
