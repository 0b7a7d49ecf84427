package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sildmesh/sild/gateway"
	demov1 "github.com/sildmesh/sild/gen/sild/demo/v1"
	"github.com/sildmesh/sild/internal/demo/services"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/node/envelope"
)

// stepTimeout bounds one scenario call.
const stepTimeout = 20 * time.Second

// userID and purpose are what the licensing official's calls carry (the
// person on whose behalf, the legal purpose); both land in the ledgers.
const (
	userID  = "EE38001085718"
	purpose = "licence-application-2041"
)

// call prepares a call from client's member system to its own node, aimed at
// target's subsystem, with message id msgID.
func (d *Demo) call(ctx context.Context, client, target *Party, msgID string) (*grpc.ClientConn, context.Context, context.CancelFunc, error) {
	conn, err := client.Node.Dial()
	if err != nil {
		return nil, nil, nil, err
	}
	md := metadata.Pairs(envelope.HeaderClient, client.Subsystem.String(), envelope.HeaderTarget, target.Subsystem.String(),
		envelope.HeaderMessageID, msgID, envelope.HeaderUserID, userID, envelope.HeaderPurpose, purpose)
	ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(ctx, md), stepTimeout)
	return conn, ctx, func() { cancel(); conn.Close() }, nil
}

// receipts returns where both nodes recorded message msgID.
func (d *Demo) receipts(msgID string, consumer, provider *Party) (string, error) {
	c, err := consumer.Node.Receipt(msgID)
	if err != nil {
		return "", err
	}
	p, err := provider.Node.Receipt(msgID)
	if err != nil {
		return "", err
	}
	signed := "signed by both"
	if c.Record.GetConsumerSignature() == nil || (c.Record.GetStatusCode() == 0 && c.Record.GetProviderSignature() == nil) {
		signed = "NOT signed by both"
	}
	return fmt.Sprintf("ledger %s #%d, %s #%d, %s (message %s)", consumer.NodeID, c.Index, provider.NodeID, p.Index, signed, msgID), nil
}

// msgID returns the message id of scenario step n.
func msgID(n int) string { return fmt.Sprintf("demo-%d", n) }

func stepGetCompany(ctx context.Context, d *Demo) error {
	conn, ctx, done, err := d.call(ctx, d.Licensing, d.Business, msgID(1))
	if err != nil {
		return err
	}
	defer done()
	resp, err := demov1.NewBusinessRegistryServiceClient(conn).GetCompany(ctx, &demov1.GetCompanyRequest{RegistryCode: services.CompanyCode})
	if err != nil {
		return describe(err)
	}
	c := resp.GetCompany()
	rc, err := d.receipts(msgID(1), d.Licensing, d.Business)
	if err != nil {
		return err
	}
	d.Report("%s %s: %s, %s, board of %d | %s", c.GetRegistryCode(), c.GetName(), c.GetStatus(), c.GetRegisteredOn(), len(c.GetBoard()), rc)
	return nil
}

func stepCompanyEvents(ctx context.Context, d *Demo) error {
	conn, ctx, done, err := d.call(ctx, d.Licensing, d.Business, msgID(2))
	if err != nil {
		return err
	}
	defer done()
	s, err := demov1.NewBusinessRegistryServiceClient(conn).ListCompanyEvents(ctx, &demov1.ListCompanyEventsRequest{RegistryCode: services.CompanyCode})
	if err != nil {
		return describe(err)
	}
	var kinds []string
	for {
		ev, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return describe(err)
		}
		kinds = append(kinds, ev.GetKind())
	}
	if len(kinds) == 0 {
		return errors.New("no events streamed")
	}
	rc, err := d.receipts(msgID(2), d.Licensing, d.Business)
	if err != nil {
		return err
	}
	d.Report("%d events streamed (%s) | %s", len(kinds), strings.Join(kinds, ", "), rc)
	return nil
}

// restPath is the REST bridge's path of a provider's method.
func restPath(p *Party, method string) string {
	return "/r1/" + p.Subsystem.String() + "/" + p.Service + "/" + method
}

func stepTaxStatusREST(ctx context.Context, d *Demo) error {
	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	body := fmt.Sprintf(`{"registryCode":%q}`, services.CompanyCode)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.REST+restPath(d.Tax, "GetTaxStatus"), strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(gateway.HeaderClient, d.Licensing.Subsystem.String())
	req.Header.Set(gateway.HeaderMessageID, msgID(3))
	req.Header.Set(gateway.HeaderUserID, userID)
	req.Header.Set(gateway.HeaderPurpose, purpose)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(raw)))
	}
	var st struct {
		VatNumber      string `json:"vatNumber"`
		TaxDebtCents   string `json:"taxDebtCents"`
		InGoodStanding bool   `json:"inGoodStanding"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return fmt.Errorf("answer %s: %w", raw, err)
	}
	rc, err := d.receipts(msgID(3), d.Licensing, d.Tax)
	if err != nil {
		return err
	}
	debt := st.TaxDebtCents
	if debt == "" {
		debt = "0"
	}
	d.Report("HTTP 200, VAT %s, in good standing %t, tax debt %s cents | %s", st.VatNumber, st.InGoodStanding, debt, rc)
	return nil
}

// stepRefused shows a refusal: the tax board has granted nothing to the
// business registry, so its node refuses before the backend is reached,
// and both nodes record the refusal.
func stepRefused(ctx context.Context, d *Demo) error {
	conn, ctx, done, err := d.call(ctx, d.Business, d.Tax, msgID(4))
	if err != nil {
		return err
	}
	defer done()
	_, err = demov1.NewTaxBoardServiceClient(conn).GetTaxStatus(ctx, &demov1.GetTaxStatusRequest{RegistryCode: services.CompanyCode})
	if status.Code(err) != codes.PermissionDenied || rpcerr.Reason(err) != rpcerr.ReasonAccessDenied {
		return fmt.Errorf("want PermissionDenied/ACCESS_DENIED, got %v", describe(err))
	}
	rc, rerr := d.receipts(msgID(4), d.Business, d.Tax)
	if rerr != nil {
		rc = "not recorded: " + rerr.Error()
	}
	d.Report("refused as expected: %s by %s | %s", rpcerr.Reason(err), rpcerr.Component(err), rc)
	return nil
}

func stepCrossBorder(ctx context.Context, d *Demo) error {
	if d.FederationErr != nil {
		return fmt.Errorf("federation did not come up: %w", d.FederationErr)
	}
	conn, ctx, done, err := d.call(ctx, d.Licensing, d.Populace, msgID(5))
	if err != nil {
		return err
	}
	defer done()
	resp, err := demov1.NewPopulationRegisterServiceClient(conn).GetPerson(ctx, &demov1.GetPersonRequest{PersonalCode: services.BoardMemberCode})
	if err != nil {
		return fmt.Errorf("cross-border call: %w", describe(err))
	}
	p := resp.GetPerson()
	rc, err := d.receipts(msgID(5), d.Licensing, d.Populace)
	if err != nil {
		return err
	}
	d.Report("%s %s %s, born %s, %s | %s", p.GetPersonalCode(), p.GetGivenName(), p.GetFamilyName(), p.GetBirthDate(), p.GetMunicipality(), rc)
	return nil
}

// describe renders a gRPC error with its code, sild reason and component.
func describe(err error) error {
	if err == nil {
		return errors.New("no error")
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	if r := rpcerr.Reason(err); r != "" {
		return fmt.Errorf("%s %s (component %s): %s", st.Code(), r, rpcerr.Component(err), st.Message())
	}
	return fmt.Errorf("%s: %s", st.Code(), st.Message())
}

// stepCrossBorderBack: the Finnish population register looks up in the
// Estonian business registry the company whose board its resident sits on.
func stepCrossBorderBack(ctx context.Context, d *Demo) error {
	if d.FederationErr != nil {
		return fmt.Errorf("federation did not come up: %w", d.FederationErr)
	}
	conn, ctx, done, err := d.call(ctx, d.Populace, d.Business, msgID(6))
	if err != nil {
		return err
	}
	defer done()
	resp, err := demov1.NewBusinessRegistryServiceClient(conn).GetCompany(ctx, &demov1.GetCompanyRequest{RegistryCode: services.CompanyCode})
	if err != nil {
		return fmt.Errorf("cross-border call: %w", describe(err))
	}
	rc, err := d.receipts(msgID(6), d.Populace, d.Business)
	if err != nil {
		return err
	}
	d.Report("%s %s, %s | %s", resp.GetCompany().GetRegistryCode(), resp.GetCompany().GetName(), resp.GetCompany().GetStatus(), rc)
	return nil
}
