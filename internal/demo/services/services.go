// Package services holds the demo's sample member backends: the Estonian
// business registry and tax board and the Finnish population register,
// answering from small fixed data sets. They are ordinary gRPC servers that
// know nothing about sild.
package services

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	demov1 "github.com/sildmesh/sild/gen/sild/demo/v1"
)

// Sample data the demo's scenario asks about.
const (
	// CompanyCode is the registry code of the demo's company.
	CompanyCode = "14567890"
	// BoardMemberCode is the Finnish personal identity code of its board
	// member.
	BoardMemberCode = "131052-308T"
)

var companies = map[string]*demov1.Company{
	CompanyCode: {
		RegistryCode: CompanyCode, Name: "Põhjala Logistika OÜ", LegalForm: "OÜ", Status: "registered",
		RegisteredOn: "2018-09-03", Address: "Peterburi tee 2, 11415 Tallinn",
		Board: []*demov1.BoardMember{
			{Name: "Mari Tamm", Instance: "EE", PersonalCode: "48001012215"},
			{Name: "Matti Virtanen", Instance: "FI", PersonalCode: BoardMemberCode},
		},
	},
}

var events = map[string][]*demov1.ListCompanyEventsResponse{
	CompanyCode: {
		{Date: "2018-09-03", Kind: "registration", Description: "entered in the commercial register"},
		{Date: "2021-05-17", Kind: "board", Description: "Matti Virtanen appointed to the management board"},
		{Date: "2024-02-29", Kind: "annual-report", Description: "annual report 2023 submitted"},
	},
}

var taxes = map[string]*demov1.GetTaxStatusResponse{
	CompanyCode: {RegistryCode: CompanyCode, VatNumber: "EE102345678", TaxDebtCents: 0, InGoodStanding: true},
}

var people = map[string]*demov1.Person{
	BoardMemberCode: {PersonalCode: BoardMemberCode, GivenName: "Matti", FamilyName: "Virtanen", BirthDate: "1952-10-13", Municipality: "Helsinki", Alive: true},
}

// BusinessRegistry serves sild.demo.v1.BusinessRegistryService.
type BusinessRegistry struct {
	demov1.UnimplementedBusinessRegistryServiceServer
}

// GetCompany returns a company or NotFound.
func (BusinessRegistry) GetCompany(_ context.Context, req *demov1.GetCompanyRequest) (*demov1.GetCompanyResponse, error) {
	c, ok := companies[strings.TrimSpace(req.GetRegistryCode())]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no company with registry code %q", req.GetRegistryCode())
	}
	return &demov1.GetCompanyResponse{Company: c}, nil
}

// ListCompanyEvents streams a company's events or fails with NotFound.
func (BusinessRegistry) ListCompanyEvents(req *demov1.ListCompanyEventsRequest, s grpc.ServerStreamingServer[demov1.ListCompanyEventsResponse]) error {
	evs, ok := events[strings.TrimSpace(req.GetRegistryCode())]
	if !ok {
		return status.Errorf(codes.NotFound, "no company with registry code %q", req.GetRegistryCode())
	}
	for _, e := range evs {
		if err := s.Send(e); err != nil {
			return err
		}
	}
	return nil
}

// TaxBoard serves sild.demo.v1.TaxBoardService.
type TaxBoard struct {
	demov1.UnimplementedTaxBoardServiceServer
}

// GetTaxStatus returns a company's tax status or NotFound.
func (TaxBoard) GetTaxStatus(_ context.Context, req *demov1.GetTaxStatusRequest) (*demov1.GetTaxStatusResponse, error) {
	t, ok := taxes[strings.TrimSpace(req.GetRegistryCode())]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no taxpayer with registry code %q", req.GetRegistryCode())
	}
	return t, nil
}

// PopulationRegister serves sild.demo.v1.PopulationRegisterService.
type PopulationRegister struct {
	demov1.UnimplementedPopulationRegisterServiceServer
}

// GetPerson returns a person or NotFound.
func (PopulationRegister) GetPerson(_ context.Context, req *demov1.GetPersonRequest) (*demov1.GetPersonResponse, error) {
	p, ok := people[strings.ToUpper(strings.TrimSpace(req.GetPersonalCode()))]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no person with code %q", req.GetPersonalCode())
	}
	return &demov1.GetPersonResponse{Person: p}, nil
}
