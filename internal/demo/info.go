package demo

import (
	"strings"

	"github.com/sildmesh/sild/internal/demo/services"
	"github.com/sildmesh/sild/internal/mesh"
)

func (d *Demo) printRegistries() {
	d.Printf("\nRegistries (gRPC API over TLS: verify with the trust bundle, authenticate with the admin API key):\n")
	for _, r := range []*mesh.Registry{d.EE, d.FI} {
		d.Printf("  %s  trust domain %s\n", r.Instance, r.TrustDomain.Name())
		d.Printf("      admin API key  %s\n", r.AdminKey)
		d.Printf("      trust bundle   %s\n", r.BundleFile)
		for _, s := range r.Servers {
			d.Printf("      %s  api %s  raft %s  http %s  bundle endpoint %s\n", s.ID(), s.APIAddr(), s.RaftAddr(), s.HTTPAddr(), s.BundleEndpointURL())
		}
	}
}

func (d *Demo) printNodes() {
	d.Printf("\nNodes (consumer: plaintext gRPC for member systems; admin: gRPC + REST + /metrics with the node's API key):\n")
	for _, p := range d.parties() {
		d.Printf("  %-26s %s  consumer %s  exchange %s  admin %s\n", p.Label, p.NodeID, p.Node.ConsumerAddr(), p.Node.ExchangeAddr(), p.Node.AdminAddr())
		d.Printf("  %-26s subsystem %s", "", p.Subsystem)
		if p.Service != "" {
			d.Printf(", serves %s (backend %s)", p.Service, p.Backend)
		}
		d.Printf("\n  %-26s admin API key %s\n", "", p.Node.AdminKey)
	}
	if d.REST != "" {
		d.Printf("  REST bridge of the licensing authority's node: %s/r1/<provider subsystem>/<service>/<method>\n", d.REST)
	}

	lic := d.Licensing
	grpcurl := func(target *Party) string {
		return "grpcurl -plaintext -H " + shq("sild-client: "+lic.Subsystem.String()) + " -H " + shq("sild-target: "+target.Subsystem.String())
	}
	addr := lic.Node.ConsumerAddr()
	code := `{"registry_code":"` + services.CompanyCode + `"}`
	d.Printf("\nTry (in another terminal; grpcurl: go install github.com/fullstorydev/grpcurl/cmd/grpcurl@latest):\n")
	d.Printf("  # gRPC through the licensing authority's node; reflection comes from the mesh catalogue\n")
	d.Printf("  %s %s list\n", grpcurl(d.Business), addr)
	d.Printf("  %s %s describe %s\n", grpcurl(d.Business), addr, d.Business.Service)
	d.Printf("  %s -d %s %s %s/GetCompany\n", grpcurl(d.Business), shq(code), addr, d.Business.Service)
	d.Printf("  %s -d %s %s %s/ListCompanyEvents\n", grpcurl(d.Business), shq(code), addr, d.Business.Service)
	d.Printf("  %s -d %s %s %s/GetPerson\n", grpcurl(d.Populace), shq(`{"personal_code":"`+services.BoardMemberCode+`"}`), addr, d.Populace.Service)
	if d.REST != "" {
		d.Printf("  # the same mesh over REST (JSON in and out, transcoded from the published descriptors)\n")
		d.Printf("  curl -s -H %s -H 'Content-Type: application/json' -d %s %s%s\n", shq("Sild-Client: "+lic.Subsystem.String()),
			shq(`{"registryCode":"`+services.CompanyCode+`"}`), d.REST, restPath(d.Tax, "GetTaxStatus"))
	}
	d.Printf("  # the tax board's access rights on its node (or over its admin REST API)\n")
	d.Printf("  %s ctl access list --node-admin %s --api-key %s\n", d.Command, d.Tax.Node.AdminAddr(), d.Tax.Node.AdminKey)
	d.Printf("  curl -s -H %s http://%s/v1/access\n", shq("Authorization: Bearer "+d.Tax.Node.AdminKey), d.Tax.Node.AdminAddr())
	d.Printf("  # who asked for data on behalf of user %s, and why: the licensing authority's ledger\n", userID)
	d.Printf("  %s ledger query --node-admin %s --api-key %s --user %s\n", d.Command, lic.Node.AdminAddr(), lic.Node.AdminKey, userID)
	d.Printf("  # the evidence of step 1 from the licensing authority's running node, checked offline\n")
	d.Printf("  %s ledger export --node-admin %s --api-key %s --message-id demo-1 -o demo-1.bundle\n", d.Command, lic.Node.AdminAddr(), lic.Node.AdminKey)
	d.Printf("  %s ledger verify demo-1.bundle --trust %s\n", d.Command, d.EE.BundleFile)
	d.Printf("  # operate EE's registry\n")
	d.Printf("  export SILD_REGISTRY=%s SILD_TRUST=%s SILD_API_KEY=%s\n", d.EE.Servers[1].APIAddr(), d.EE.BundleFile, d.EE.AdminKey)
	for _, c := range []string{"raft status", "subsystem list", "service list", "federation list", "config show"} {
		d.Printf("  %s ctl %s\n", d.Command, c)
	}
}

// shq quotes s for a POSIX shell.
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
