package registry

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/apikey"
	"github.com/sildmesh/sild/internal/atomicfile"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry/fsm"
)

// Files in the data directory.
const (
	fileKey      = "server.key" // this server's SVID key (PEM)
	fileCert     = "server.crt" // its SVID chain (PEM)
	FileBundle   = "bundle.pem" // the ecosystem's roots
	fileInit     = "init.pb"    // the Init command until it is applied
	FileAdminKey = "admin.key"  // the first admin API key (bootstrap only)
)

// prepareIdentity loads this server's SVID or creates one: at bootstrap from
// a new CA (returning the Init command to propose), at join from the
// cluster.
func (s *Server) prepareIdentity(ctx context.Context) (*registryv1.Init, error) {
	dir := s.cfg.DataDir
	if _, err := os.Stat(filepath.Join(dir, fileCert)); err == nil {
		if err := s.loadIdentity(); err != nil {
			return nil, err
		}
		return s.pendingInit()
	}
	switch {
	case s.cfg.Bootstrap:
		return s.bootstrapIdentity()
	case s.cfg.Join != "":
		return nil, s.joinCluster(ctx)
	default:
		return nil, fmt.Errorf("data dir %s has no server identity: start the first server with --bootstrap, the others with --join", dir)
	}
}

func (s *Server) loadIdentity() error {
	dir := s.cfg.DataDir
	keyPEM, err := os.ReadFile(filepath.Join(dir, fileKey))
	if err != nil {
		return fmt.Errorf("load identity: %w", err)
	}
	key, err := pki.DecodeKey(keyPEM)
	if err != nil {
		return fmt.Errorf("load identity: %w", err)
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, fileCert))
	if err != nil {
		return fmt.Errorf("load identity: %w", err)
	}
	chain, err := pki.DecodeCerts(certPEM)
	if err != nil {
		return fmt.Errorf("load identity: %w", err)
	}
	bundlePEM, err := os.ReadFile(filepath.Join(dir, FileBundle))
	if err != nil {
		return fmt.Errorf("load identity: %w", err)
	}
	roots, err := pki.DecodeCerts(bundlePEM)
	if err != nil {
		return fmt.Errorf("load identity: %w", err)
	}
	return s.setIdentity(key, chain, roots, false)
}

// setIdentity installs an SVID and roots, and saves them when save is set.
func (s *Server) setIdentity(key crypto.Signer, chain, roots []*x509.Certificate, save bool) error {
	svid, err := pki.NewSVID(key, chain...)
	if err != nil {
		return fmt.Errorf("server identity: %w", err)
	}
	if id, err := ident.RegistryFromSPIFFEID(svid.ID); err != nil || id != s.cfg.ServerID {
		return fmt.Errorf("server identity: SVID %s is not registry server %q", svid.ID, s.cfg.ServerID)
	}
	if save {
		keyPEM, err := pki.EncodeKey(key)
		if err != nil {
			return err
		}
		if err := atomicfile.Write(s.cfg.DataDir, fileKey, keyPEM); err != nil {
			return err
		}
		if err := atomicfile.Write(s.cfg.DataDir, FileBundle, pki.EncodeCerts(roots...)); err != nil {
			return err
		}
		if err := atomicfile.Write(s.cfg.DataDir, fileCert, pki.EncodeCerts(chain...)); err != nil {
			return err
		}
	}
	s.svids.Set(svid)
	s.bundle.Set(x509bundle.FromX509Authorities(svid.ID.TrustDomain(), roots))
	return nil
}

func (s *Server) pendingInit() (*registryv1.Init, error) {
	data, err := os.ReadFile(filepath.Join(s.cfg.DataDir, fileInit))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pending init: %w", err)
	}
	var in registryv1.Init
	if err := proto.Unmarshal(data, &in); err != nil {
		return nil, fmt.Errorf("pending init: %w", err)
	}
	return &in, nil
}

// bootstrapIdentity creates the ecosystem's keys and this server's SVID,
// or, restoring a backup, takes the keys from it.
func (s *Server) bootstrapIdentity() (*registryv1.Init, error) {
	if s.cfg.Restore != nil {
		return s.restoreIdentity()
	}
	now := time.Now()
	td, err := spiffeid.TrustDomainFromString(s.cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("trust domain: %w", err)
	}
	ca, err := pki.NewCA(td, s.cfg.Instance+" sild root", s.cfg.CAValidity, now)
	if err != nil {
		return nil, err
	}
	signer, err := issueKeyPair(ca, pki.KindSigning, "config", s.cfg.CAValidity, now)
	if err != nil {
		return nil, err
	}
	tsaKP, err := issueKeyPair(ca, pki.KindTSA, "tsa", s.cfg.CAValidity, now)
	if err != nil {
		return nil, err
	}
	caKey, err := pkcs8(ca.Key)
	if err != nil {
		return nil, err
	}
	adminKey, secret, err := newAPIKey("bootstrap admin", registryv1.Role_ROLE_ADMIN, now)
	if err != nil {
		return nil, err
	}
	in := &registryv1.Init{
		Instance: s.cfg.Instance, TrustDomain: s.cfg.TrustDomain,
		Ca:           &registryv1.KeyPair{Certificate: ca.Cert.Raw, Key: caKey},
		ConfigSigner: signer, Tsa: tsaKP, AdminKey: adminKey,
		Settings: &registryv1.ConfigSettings{CheckpointIntervalSeconds: 10, TimestampFailureGraceSeconds: 3600},
	}
	key, chain, err := s.issueSelf(ca, now)
	if err != nil {
		return nil, err
	}
	data, err := proto.Marshal(in)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(s.cfg.DataDir, fileInit, data); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(s.cfg.DataDir, FileAdminKey, []byte(secret+"\n")); err != nil {
		return nil, err
	}
	if err := s.setIdentity(key, chain, []*x509.Certificate{ca.Cert}, true); err != nil {
		return nil, err
	}
	s.log.Info("created ecosystem keys", "instance", s.cfg.Instance, "trust_domain", td.Name(),
		"admin_key_file", filepath.Join(s.cfg.DataDir, FileAdminKey))
	return in, nil
}

// issueSelf makes a new key and SVID for this server from ca.
func (s *Server) issueSelf(ca *pki.CA, now time.Time) (crypto.Signer, []*x509.Certificate, error) {
	key, err := pki.NewKey()
	if err != nil {
		return nil, nil, err
	}
	id, err := ident.RegistrySPIFFEID(ca.TrustDomain, s.cfg.ServerID)
	if err != nil {
		return nil, nil, err
	}
	cert, err := ca.Issue(pki.KindSVID, key.Public(), id, s.cfg.NodeSVIDTTL, now)
	if err != nil {
		return nil, nil, err
	}
	return key, []*x509.Certificate{cert}, nil
}

func issueKeyPair(ca *pki.CA, kind pki.Kind, name string, ttl time.Duration, now time.Time) (*registryv1.KeyPair, error) {
	key, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	id, err := ident.RegistrySPIFFEID(ca.TrustDomain, name)
	if err != nil {
		return nil, err
	}
	cert, err := ca.Issue(kind, key.Public(), id, ttl, now)
	if err != nil {
		return nil, err
	}
	der, err := pkcs8(key)
	if err != nil {
		return nil, err
	}
	return &registryv1.KeyPair{Certificate: cert.Raw, Key: der}, nil
}

func pkcs8(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return der, nil
}

// keyPair parses a replicated key pair.
func keyPair(kp *registryv1.KeyPair) (*x509.Certificate, crypto.Signer, error) {
	if kp == nil {
		return nil, nil, errors.New("missing key pair")
	}
	cert, err := x509.ParseCertificate(kp.GetCertificate())
	if err != nil {
		return nil, nil, fmt.Errorf("key pair certificate: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kp.GetKey())
	if err != nil {
		return nil, nil, fmt.Errorf("key pair key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, errors.New("key pair key: not a signer")
	}
	return cert, signer, nil
}

// stateCA returns the CA held in the replicated state.
func stateCA(st *fsm.State) (*pki.CA, error) {
	cert, key, err := keyPair(st.CA)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	td, err := spiffeid.TrustDomainFromString(st.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return &pki.CA{Cert: cert, Key: key, TrustDomain: td}, nil
}

// newAPIKey makes an API key: the stored form and the secret to hand out,
// "sild_<id>_<secret>".
func newAPIKey(name string, role registryv1.Role, now time.Time) (*registryv1.StoredApiKey, string, error) {
	idb := make([]byte, 6)
	sec := make([]byte, 24)
	if _, err := rand.Read(idb); err != nil {
		return nil, "", err
	}
	if _, err := rand.Read(sec); err != nil {
		return nil, "", err
	}
	id := hex.EncodeToString(idb)
	secret := base64.RawURLEncoding.EncodeToString(sec)
	return &registryv1.StoredApiKey{
		Key:        &registryv1.ApiKey{Id: id, Name: name, Role: role, CreatedAt: timestamppb.New(now)},
		SecretHash: hashSecret(secret),
	}, "sild_" + id + "_" + secret, nil
}

// hashSecret is how API key secrets and join tokens are stored.
func hashSecret(secret string) string { return apikey.Hash(secret) }

// newToken returns a random one-time token and its stored hash.
func newToken() (token, hash string, err error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", "", err
	}
	token = base64.RawURLEncoding.EncodeToString(b)
	return token, hashSecret(token), nil
}

// joinCluster obtains this server's SVID from a running server.
func (s *Server) joinCluster(ctx context.Context) error {
	roots := s.cfg.TrustBundle
	td, err := pki.TrustDomainOf(roots)
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	key, err := pki.NewKey()
	if err != nil {
		return err
	}
	csr, err := pki.NewCSR(key)
	if err != nil {
		return err
	}
	tc := tlsconfig.TLSClientConfig(x509bundle.FromX509Authorities(td, roots), pki.AuthorizeRegistry(td))
	conn, err := grpc.NewClient(s.cfg.Join, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		return fmt.Errorf("join %s: %w", s.cfg.Join, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req := &registryv1.JoinClusterRequest{
		Token:   s.cfg.Token,
		SvidCsr: csr,
		Server: &registryv1.ServerInfo{
			Id: s.cfg.ServerID, RaftAddress: s.cfg.AdvertiseRaft, ApiAddress: s.cfg.AdvertiseAPI, HttpAddress: s.cfg.AdvertiseHTTP,
		},
	}
	// While the cluster elects a leader (or the server asked cannot reach
	// it) the join is UNAVAILABLE: retry, as the refusal says, until the
	// deadline. A join the leader applied but whose answer was lost is
	// admitted again (same keys and addresses).
	var resp *registryv1.JoinClusterResponse
	for wait := 250 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		resp, err = registryv1.NewClusterServiceClient(conn).JoinCluster(ctx, req)
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			break
		}
		s.log.Info("join: no leader yet, retrying", "via", s.cfg.Join, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	if err != nil {
		return fmt.Errorf("join %s: %w", s.cfg.Join, err)
	}
	chain, err := pki.ParseDERs(resp.GetCertificates().GetSvidChain())
	if err != nil {
		return fmt.Errorf("join: svid: %w", err)
	}
	bundle, err := pki.ParseDERs(resp.GetCertificates().GetTrustBundle())
	if err != nil || len(bundle) == 0 {
		return fmt.Errorf("join: trust bundle: %v", err)
	}
	s.log.Info("joined the registry cluster", "via", s.cfg.Join)
	return s.setIdentity(key, chain, bundle, true)
}

// renewSelf re-issues this server's SVID from the replicated CA once half of
// its lifetime has passed.
func (s *Server) renewSelf(now time.Time) {
	svid, err := s.svids.GetX509SVID()
	if err != nil {
		return
	}
	leaf := svid.Certificates[0]
	var ca *pki.CA
	var roots [][]byte
	s.fsm.Read(func(st *fsm.State, _ uint64) {
		if st.Initialized() {
			ca, err = stateCA(st)
			roots = st.Roots()
		}
	})
	if ca == nil || err != nil {
		return
	}
	trusted, err := pki.ParseDERs(roots)
	if err != nil {
		return
	}
	halfLife := now.Before(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2))
	fromCurrentCA := leaf.CheckSignatureFrom(ca.Cert) == nil
	if halfLife && fromCurrentCA {
		// Still young and from the current root: only make sure the roots
		// trusted for peers follow the state (a CA rotation).
		if !sameRoots(s.bundle, svid.ID.TrustDomain(), trusted) {
			err = s.setIdentity(svid.PrivateKey, svid.Certificates, trusted, true)
			if err != nil {
				s.log.Warn("update trust bundle", "err", err)
			}
		}
		return
	}
	key, chain, err := s.issueSelf(ca, now)
	if err == nil {
		err = s.setIdentity(key, chain, trusted, true)
	}
	if err != nil {
		s.log.Warn("renew own svid", "err", err)
		return
	}
	s.log.Info("renewed own svid", "expires", chain[0].NotAfter)
}

// restoreIdentity issues this server's SVID from the CA of a backup and
// returns the Init command that restores it.
func (s *Server) restoreIdentity() (*registryv1.Init, error) {
	st := fsm.FromProto(s.cfg.Restore)
	ca, err := stateCA(st)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	key, chain, err := s.issueSelf(ca, time.Now())
	if err != nil {
		return nil, err
	}
	in := &registryv1.Init{Restore: s.cfg.Restore}
	data, err := proto.Marshal(in)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(s.cfg.DataDir, fileInit, data); err != nil {
		return nil, err
	}
	if err := s.setIdentity(key, chain, []*x509.Certificate{ca.Cert}, true); err != nil {
		return nil, err
	}
	s.log.Info("restoring the ecosystem from a backup", "instance", st.Instance, "members", len(st.Members), "nodes", len(st.Nodes))
	return in, nil
}

// sameRoots reports whether the bundle source holds exactly roots for td.
func sameRoots(src *pki.BundleSource, td spiffeid.TrustDomain, roots []*x509.Certificate) bool {
	b, err := src.GetX509BundleForTrustDomain(td)
	if err != nil {
		return false
	}
	have := b.X509Authorities()
	if len(have) != len(roots) {
		return false
	}
	for i := range roots {
		if !have[i].Equal(roots[i]) {
			return false
		}
	}
	return true
}
