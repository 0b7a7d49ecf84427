package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry/fsm"
	"github.com/sildmesh/sild/registry/gconf"
)

// Federation between ecosystems: each registry serves its SPIFFE bundle
// endpoint and the FederationService on its federation listener (TLS with
// the registry's SVID; gRPC callers present theirs). The leader checks every
// link every FederationRefresh, or sooner when the peer's bundle asks so with
// its refresh hint (not under minRefresh): it fetches the peer's bundle (the
// first time pinned by the root fingerprint the operator gave, later
// authenticated by the bundle it has; at most maxBundleBytes and
// maxPeerRoots, no redirect, 200 only), then the peer's export directory
// over mTLS. A peer
// answers only if it has linked us too, so a link is active only when both
// sides added it. What the leader learns is committed as a LinkUpdate and
// reaches the nodes in the global configuration.

// bundleSource serves this ecosystem's roots to the bundle endpoint.
type bundleSource struct{ s *Server }

func (b bundleSource) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	xb, err := b.s.bundle.GetX509BundleForTrustDomain(td)
	if err != nil {
		return nil, err
	}
	sb := spiffebundle.FromX509Bundle(xb)
	sb.SetRefreshHint(b.s.cfg.FederationRefresh)
	return sb, nil
}

// federationHandler serves the bundle endpoint (GET /) and the gRPC
// FederationService on the federation listener.
func (s *Server) federationHandler() (http.Handler, *grpc.Server, error) {
	td, err := spiffeid.TrustDomainFromString(s.trustDomain())
	if err != nil {
		return nil, nil, err
	}
	bundleHandler, err := federation.NewHandler(td, bundleSource{s})
	if err != nil {
		return nil, nil, err
	}
	gs := grpc.NewServer()
	registryv1.RegisterFederationServiceServer(gs, &federationAPI{s: s})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			gs.ServeHTTP(w, r)
			return
		}
		bundleHandler.ServeHTTP(w, r)
	}), gs, nil
}

func (s *Server) federationTLS() *tls.Config {
	c := tlsconfig.TLSServerConfig(s.svids)
	c.ClientAuth = tls.RequestClientCert
	c.NextProtos = []string{"h2", "http/1.1"}
	return c
}

// federationAPI implements FederationService.
type federationAPI struct {
	registryv1.UnimplementedFederationServiceServer
	s *Server
}

func federationInactive(msg string) error {
	return rpcerr.New(codes.PermissionDenied, rpcerr.ReasonFederationInactive, "registry.federation", msg)
}

func (f *federationAPI) GetExportDirectory(ctx context.Context, _ *registryv1.GetExportDirectoryRequest) (*registryv1.GetExportDirectoryResponse, error) {
	certs, err := peerCertificates(ctx)
	if err != nil {
		return nil, err
	}
	// Trust only the peers we have linked (and not suspended).
	set := x509bundle.NewSet()
	byTD := map[string]string{}
	f.s.fsm.Read(func(st *fsm.State, _ uint64) {
		for _, l := range st.Links {
			if l.GetSuspended() || len(l.GetPeerBundle()) == 0 {
				continue
			}
			td, err := spiffeid.TrustDomainFromString(l.GetTrustDomain())
			roots, err2 := pki.ParseDERs(l.GetPeerBundle())
			if err != nil || err2 != nil {
				continue
			}
			set.Add(x509bundle.FromX509Authorities(td, roots))
			byTD[td.Name()] = l.GetInstance()
		}
	})
	id, _, err := x509svid.Verify(certs, set)
	if err != nil {
		return nil, federationInactive("this ecosystem has no active federation link with the caller's")
	}
	if !ident.IsRegistrySPIFFEID(id) {
		return nil, federationInactive("only registry servers may fetch the export directory")
	}
	var dir *registryv1.ExportDirectory
	f.s.fsm.Read(func(st *fsm.State, _ uint64) { dir = st.Directory(byTD[id.TrustDomain().Name()]) })
	return &registryv1.GetExportDirectoryResponse{Directory: dir}, nil
}

// federationLoop refreshes each link when it is due (every
// FederationRefresh, sooner if the peer's bundle asks for it with its
// refresh hint) while this server leads, and pending links (just added or
// resumed) at once.
func (s *Server) federationLoop(ctx context.Context) error {
	timer := time.NewTimer(s.cfg.FederationRefresh)
	defer timer.Stop()
	changed := s.fsm.Changed()
	due := map[string]time.Time{} // by peer instance; none: due now
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-changed:
		}
		changed = s.fsm.Changed()
		if s.raft.State() != raft.Leader {
			clear(due) // a new leader refreshes every link at once
			timer.Reset(s.cfg.FederationRefresh)
			continue
		}
		now := time.Now()
		var links []*registryv1.FederationLink
		s.fsm.Read(func(st *fsm.State, _ uint64) {
			for inst := range due {
				if l := st.Links[inst]; l == nil || l.GetSuspended() {
					delete(due, inst)
				}
			}
			for _, l := range st.Links {
				if !l.GetSuspended() && (l.GetState() == registryv1.LinkState_LINK_STATE_PENDING || !now.Before(due[l.GetInstance()])) {
					links = append(links, proto.Clone(l).(*registryv1.FederationLink))
				}
			}
		})
		for _, l := range links {
			hint := s.refreshLink(ctx, l)
			due[l.GetInstance()] = time.Now().Add(s.refreshInterval(hint))
		}
		next := s.cfg.FederationRefresh
		for _, at := range due {
			next = min(next, time.Until(at))
		}
		timer.Reset(max(next, time.Millisecond))
	}
}

// refreshInterval is how long to wait before refreshing a link whose
// bundle asked for hint: FederationRefresh, or the hint if shorter (but
// not under minRefresh).
func (s *Server) refreshInterval(hint time.Duration) time.Duration {
	d := s.cfg.FederationRefresh
	if hint > 0 && hint < d {
		d = min(max(hint, minRefresh), d)
	}
	return d
}

// refreshLink fetches a link's bundle and directory and commits what
// changed. It returns the refresh hint of the bundle fetched (0 if none).
func (s *Server) refreshLink(ctx context.Context, l *registryv1.FederationLink) time.Duration {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	u := &registryv1.LinkUpdate{Instance: l.GetInstance(), State: l.GetState(), Status: l.GetStatus()}
	pb, err := s.fetchPeerBundle(ctx, l)
	switch {
	case err != nil && len(l.GetPeerBundle()) == 0:
		u.State, u.Status = registryv1.LinkState_LINK_STATE_FAILED, "bundle endpoint: "+err.Error()
	case err != nil:
		u.Status = "bundle refresh failed (keeping the last bundle): " + err.Error()
	default:
		for _, r := range pb.roots {
			u.PeerBundle = append(u.PeerBundle, r.Raw)
		}
	}
	if len(u.PeerBundle) > 0 || len(l.GetPeerBundle()) > 0 {
		bundle := u.PeerBundle
		if len(bundle) == 0 {
			bundle = l.GetPeerBundle()
		}
		dir, err := s.fetchDirectory(ctx, l, bundle)
		switch {
		case err == nil:
			u.State, u.Status, u.Directory = registryv1.LinkState_LINK_STATE_ACTIVE, "active", dir
		case status.Code(err) == codes.PermissionDenied:
			u.State, u.Status = registryv1.LinkState_LINK_STATE_WAITING_FOR_PEER, "the peer has not linked this ecosystem (or suspended the link)"
		case l.GetState() == registryv1.LinkState_LINK_STATE_ACTIVE:
			u.Status = "peer registry unreachable, keeping the last directory: " + status.Convert(err).Message()
		default:
			u.State, u.Status = registryv1.LinkState_LINK_STATE_FAILED, "export directory: "+status.Convert(err).Message()
		}
	}
	same := u.GetState() == l.GetState() && u.GetStatus() == l.GetStatus() &&
		(len(u.PeerBundle) == 0 || equalDERs(u.PeerBundle, l.GetPeerBundle())) &&
		(u.Directory == nil || proto.Equal(u.Directory, l.GetDirectory()))
	if same {
		return pb.hint
	}
	if _, err := s.propose(ctx, &registryv1.Command{Op: &registryv1.Command_UpdateLink{UpdateLink: u}}); err != nil && ctx.Err() == nil {
		s.log.Warn("federation link update", "peer", l.GetInstance(), "err", err)
		return pb.hint
	}
	s.log.Info("federation link", "peer", l.GetInstance(), "state", u.GetState().String(), "status", u.GetStatus())
	return pb.hint
}

func equalDERs(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if string(a[i]) != string(b[i]) {
			return false
		}
	}
	return true
}

// maxBundleBytes and maxPeerRoots bound what a peer's bundle endpoint may
// serve: its roots go into Raft and every node's configuration.
const (
	maxBundleBytes = 1 << 20
	maxPeerRoots   = 16
	// minRefresh is the shortest refresh interval a peer's bundle may ask
	// for with its refresh hint.
	minRefresh = time.Second
)

// peerBundle is what a bundle endpoint served: the roots and the refresh
// interval the bundle asks for (0 if none).
type peerBundle struct {
	roots []*x509.Certificate
	hint  time.Duration
}

// fetchPeerBundle gets the peer's roots from its bundle endpoint.
func (s *Server) fetchPeerBundle(ctx context.Context, l *registryv1.FederationLink) (peerBundle, error) {
	td, err := spiffeid.TrustDomainFromString(l.GetTrustDomain())
	if err != nil {
		return peerBundle{}, err
	}
	endpointID, err := spiffeid.FromString(l.GetEndpointSpiffeId())
	if err != nil {
		return peerBundle{}, err
	}
	if len(l.GetPeerBundle()) > 0 {
		roots, err := pki.ParseDERs(l.GetPeerBundle())
		if err != nil {
			return peerBundle{}, err
		}
		// Later fetches: the endpoint is authenticated by the bundle held.
		tc := tlsconfig.TLSClientConfig(x509bundle.FromX509Authorities(td, roots), tlsconfig.AuthorizeID(endpointID))
		b, _, err := getBundle(ctx, td, l.GetBundleEndpointUrl(), tc)
		return b, err
	}
	return fetchPinned(ctx, td, endpointID, l.GetBundleEndpointUrl(), l.GetRootFingerprint())
}

// getBundle GETs and parses a SPIFFE bundle over TLS configured by tc. It
// follows no redirect, reads at most maxBundleBytes and refuses anything
// but 200 with a bundle of 1 to maxPeerRoots X.509 roots.
func getBundle(ctx context.Context, td spiffeid.TrustDomain, rawURL string, tc *tls.Config) (peerBundle, []*x509.Certificate, error) {
	var presented []*x509.Certificate
	tc = tc.Clone()
	verify := tc.VerifyConnection
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		presented = cs.PeerCertificates
		if verify != nil {
			return verify(cs)
		}
		return nil
	}
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, http.NoBody)
	if err != nil {
		return peerBundle{}, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			err = ue.Err
		}
		return peerBundle{}, nil, fmt.Errorf("fetch: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return peerBundle{}, nil, fmt.Errorf("status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBundleBytes+1))
	if err != nil {
		return peerBundle{}, nil, fmt.Errorf("read: %w", err)
	}
	if len(body) > maxBundleBytes {
		return peerBundle{}, nil, fmt.Errorf("bundle larger than %d bytes", maxBundleBytes)
	}
	b, err := parsePeerBundle(td, body)
	return b, presented, err
}

// parsePeerBundle parses a bundle served for td.
func parsePeerBundle(td spiffeid.TrustDomain, body []byte) (peerBundle, error) {
	b, err := spiffebundle.Parse(td, body)
	if err != nil {
		return peerBundle{}, fmt.Errorf("bundle for %s: %w", td, err)
	}
	roots := b.X509Authorities()
	switch {
	case len(roots) == 0:
		return peerBundle{}, fmt.Errorf("bundle for %s has no X.509 root", td)
	case len(roots) > maxPeerRoots:
		return peerBundle{}, fmt.Errorf("bundle for %s has %d X.509 roots, more than %d", td, len(roots), maxPeerRoots)
	}
	hint, _ := b.RefreshHint()
	return peerBundle{roots: roots, hint: hint}, nil
}

// fetchPinned is the first fetch of a peer's bundle: the TLS chain is
// checked against the bundle served, which must contain the root with the
// pinned fingerprint, and the endpoint must present endpointID.
func fetchPinned(ctx context.Context, td spiffeid.TrustDomain, endpointID spiffeid.ID, rawURL, fingerprint string) (peerBundle, error) {
	b, presented, err := getBundle(ctx, td, rawURL, &tls.Config{
		InsecureSkipVerify: true, // verified below against the pinned root
	})
	if err != nil {
		return peerBundle{}, err
	}
	var pinned *x509.Certificate
	for _, r := range b.roots {
		if pki.Fingerprint(r) == fingerprint {
			pinned = r
		}
	}
	if pinned == nil {
		return peerBundle{}, errors.New("no root in the served bundle matches the pinned fingerprint")
	}
	if rtd, err := spiffeid.TrustDomainFromURI(firstURI(pinned)); err != nil || rtd != td {
		return peerBundle{}, fmt.Errorf("the pinned root is not for trust domain %s", td)
	}
	id, _, err := x509svid.Verify(presented, x509bundle.FromX509Authorities(td, []*x509.Certificate{pinned}))
	if err != nil {
		return peerBundle{}, fmt.Errorf("endpoint certificate: %w", err)
	}
	if id != endpointID {
		return peerBundle{}, fmt.Errorf("endpoint presented %s, want %s", id, endpointID)
	}
	return b, nil
}

func firstURI(c *x509.Certificate) *url.URL {
	if len(c.URIs) == 0 {
		return &url.URL{}
	}
	return c.URIs[0]
}

// fetchDirectory calls the peer's FederationService over mTLS.
func (s *Server) fetchDirectory(ctx context.Context, l *registryv1.FederationLink, peerRoots [][]byte) (*registryv1.ExportDirectory, error) {
	td, err := spiffeid.TrustDomainFromString(l.GetTrustDomain())
	if err != nil {
		return nil, err
	}
	roots, err := pki.ParseDERs(peerRoots)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(l.GetBundleEndpointUrl())
	if err != nil {
		return nil, err
	}
	tc := tlsconfig.MTLSClientConfig(s.svids, x509bundle.FromX509Authorities(td, roots), pki.AuthorizeRegistry(td))
	conn, err := grpc.NewClient(u.Host, grpc.WithTransportCredentials(credentials.NewTLS(tc)), gconf.DialOption)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	resp, err := registryv1.NewFederationServiceClient(conn).GetExportDirectory(ctx, &registryv1.GetExportDirectoryRequest{})
	if err != nil {
		return nil, err
	}
	d := resp.GetDirectory()
	if d.GetTrustDomain() != td.Name() || d.GetInstance() != l.GetInstance() {
		return nil, status.Errorf(codes.DataLoss, "peer describes itself as %s (%s), the link says %s (%s)", d.GetInstance(), d.GetTrustDomain(), l.GetInstance(), td)
	}
	return checkDirectory(d)
}

// checkDirectory keeps only entries that belong to the peer's instance: a
// peer cannot announce subsystems, nodes or services of a third ecosystem.
func checkDirectory(d *registryv1.ExportDirectory) (*registryv1.ExportDirectory, error) {
	out := &registryv1.ExportDirectory{Instance: d.GetInstance(), TrustDomain: d.GetTrustDomain()}
	for _, sub := range d.GetSubsystems() {
		id, err := ident.SubsystemFromProto(sub.GetId())
		if err != nil || id.Member.Instance != d.GetInstance() {
			continue
		}
		clean := &registryv1.Subsystem{Id: sub.GetId()}
		for _, n := range sub.GetNodes() {
			if nid, err := ident.NodeFromProto(n); err == nil && nid.Member.Instance == d.GetInstance() {
				clean.Nodes = append(clean.Nodes, n)
			}
		}
		out.Subsystems = append(out.Subsystems, clean)
	}
	td, err := spiffeid.TrustDomainFromString(d.GetTrustDomain())
	if err != nil {
		return nil, status.Errorf(codes.DataLoss, "peer trust domain: %v", err)
	}
	for _, n := range d.GetNodes() {
		// A node's SPIFFE ID must be the one its identifier maps to in the
		// peer's trust domain: a peer cannot point calls at another's node.
		nid, err := ident.NodeFromProto(n.GetId())
		if err != nil || nid.Member.Instance != d.GetInstance() {
			continue
		}
		if want, err := ident.NodeSPIFFEID(td, nid); err == nil && n.GetSpiffeId() == want.String() {
			out.Nodes = append(out.Nodes, n)
		}
	}
	for _, e := range d.GetServices() {
		if svc, err := ident.ServiceFromProto(e.GetService()); err == nil && svc.Subsystem.Member.Instance == d.GetInstance() {
			out.Services = append(out.Services, e)
		}
	}
	return out, nil
}
