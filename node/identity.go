package node

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/atomicfile"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry/gconf"
)

// Files in the data directory.
const (
	fileSVIDKey    = "svid.key"
	fileSVIDCert   = "svid.crt"
	fileSignKey    = "signing.key"
	fileSignCert   = "signing.crt"
	fileBundle     = "bundle.pem"
	fileConfig     = "config.pb"
	dirAccess      = "access"
	dirLedger      = "ledger"
	joinRPCTimeout = 30 * time.Second
)

// identity is the node's two keys and their certificates.
type identity struct {
	svidKey, signKey     crypto.Signer
	svidChain, signChain []*x509.Certificate
	roots                []*x509.Certificate
	// obtained is when the node got the certificates from the registry (for
	// one loaded from disk, when they were stored): their lifetime starts
	// then, their NotBefore is back-dated for slow clocks.
	obtained time.Time
}

func (id *identity) expiry() time.Time {
	exp := id.svidChain[0].NotAfter
	if e := id.signChain[0].NotAfter; e.Before(exp) {
		exp = e
	}
	return exp
}

// lifetime is how long the identity is valid from when it was obtained.
func (id *identity) lifetime() time.Duration { return id.expiry().Sub(id.obtained) }

// renewAt is when the identity should be renewed: renewBefore ahead of
// expiry, or halfway through its lifetime when renewBefore is zero or not
// shorter than the lifetime (renewing as soon as renewed, over and over);
// fellBack reports the latter case of a non-zero renewBefore.
func (id *identity) renewAt(renewBefore time.Duration) (at time.Time, fellBack bool) {
	life := id.lifetime()
	if renewBefore > 0 && renewBefore < life {
		return id.expiry().Add(-renewBefore), false
	}
	return id.obtained.Add(life / 2), renewBefore > 0
}

// Retries of a failed renewal: the first after a tenth of the time that
// renewing ahead of expiry leaves (at least minRenewRetry, at most
// maxRenewRetry), each further one after twice as long, up to
// maxRenewRetry, but never later than halfway to expiry.
const (
	minRenewRetry = time.Second
	maxRenewRetry = 30 * time.Second
)

// retryIn is how long to wait before retrying after failures failed
// renewals (1 for the first), at now.
func (id *identity) retryIn(renewBefore time.Duration, failures int, now time.Time) time.Duration {
	at, _ := id.renewAt(renewBefore)
	d := min(maxRenewRetry, max(minRenewRetry, id.expiry().Sub(at)/10))
	for i := 1; i < failures && d < maxRenewRetry; i++ {
		d = min(2*d, maxRenewRetry)
	}
	if left := id.expiry().Sub(now); left > 0 {
		d = min(d, max(minRenewRetry, left/2))
	}
	return d
}

// keySwitchGrace is how long after its configuration lists a renewed
// signing key the node goes on signing with the previous one, so that the
// other nodes receive that configuration too: the watch streams of this
// ecosystem deliver it at once (a reconnecting one within its 5 s
// backoff), a federated registry copies it within its federation refresh
// (30 s by default). The next renewal, which drops the previous key from
// the configuration, waits as long again after the switch, for what was
// signed with it to reach the other side.
const keySwitchGrace = time.Minute

// switchGrace is keySwitchGrace, or a quarter of the time until the
// identity is to be renewed if that is shorter (short lifetimes).
func (id *identity) switchGrace(renewBefore time.Duration) time.Duration {
	at, _ := id.renewAt(renewBefore)
	return max(0, min(keySwitchGrace, at.Sub(id.obtained)/4))
}

func loadIdentity(dir string) (*identity, error) {
	read := func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, name)) }
	id := &identity{}
	var err error
	load := func(name string, fn func([]byte) error) {
		if err != nil {
			return
		}
		var data []byte
		if data, err = read(name); err == nil {
			err = fn(data)
		}
		if err != nil {
			err = fmt.Errorf("load %s: %w", name, err)
		}
	}
	load(fileSVIDKey, func(b []byte) (e error) { id.svidKey, e = pki.DecodeKey(b); return })
	load(fileSignKey, func(b []byte) (e error) { id.signKey, e = pki.DecodeKey(b); return })
	load(fileSVIDCert, func(b []byte) (e error) { id.svidChain, e = pki.DecodeCerts(b); return })
	load(fileSignCert, func(b []byte) (e error) { id.signChain, e = pki.DecodeCerts(b); return })
	load(fileBundle, func(b []byte) (e error) { id.roots, e = pki.DecodeCerts(b); return })
	if err != nil {
		return nil, err
	}
	if len(id.svidChain) == 0 || len(id.signChain) == 0 || len(id.roots) == 0 {
		return nil, errors.New("load identity: empty certificate file")
	}
	id.obtained = id.svidChain[0].NotBefore
	if fi, err := os.Stat(filepath.Join(dir, fileSVIDCert)); err == nil && fi.ModTime().After(id.obtained) {
		id.obtained = fi.ModTime() // save wrote it when the node got it
	}
	return id, nil
}

func (id *identity) save(dir string) error {
	svidKey, err := pki.EncodeKey(id.svidKey)
	if err != nil {
		return err
	}
	signKey, err := pki.EncodeKey(id.signKey)
	if err != nil {
		return err
	}
	// Keys first: a crash in between leaves new keys with old certificates,
	// which loadIdentity refuses (key mismatch) rather than mixing them up.
	for _, f := range []struct {
		name string
		data []byte
	}{
		{fileSVIDKey, svidKey}, {fileSignKey, signKey},
		{fileSVIDCert, pki.EncodeCerts(id.svidChain...)}, {fileSignCert, pki.EncodeCerts(id.signChain...)},
		{fileBundle, pki.EncodeCerts(id.roots...)},
	} {
		if err := atomicfile.Write(dir, f.name, f.data); err != nil {
			return err
		}
	}
	return nil
}

// newKeys makes fresh SVID (ECDSA P-256) and signing (Ed25519) keys with
// their CSRs.
func newKeys() (svid, sign crypto.Signer, svidCSR, signCSR []byte, err error) {
	if svid, err = pki.NewKey(); err != nil {
		return
	}
	// Message signatures use Ed25519: cheaper to make and to check than
	// ECDSA P-256 and made for every exchange (the SVID stays P-256).
	if _, sign, err = ed25519.GenerateKey(rand.Reader); err != nil {
		return
	}
	if svidCSR, err = pki.NewCSR(svid); err != nil {
		return
	}
	signCSR, err = pki.NewCSR(sign)
	return
}

// certsFrom parses and checks issued certificates against the keys.
func certsFrom(c *registryv1.Certificates, svidKey, signKey crypto.Signer, self ident.Node) (*identity, error) {
	id := &identity{svidKey: svidKey, signKey: signKey, obtained: time.Now()}
	var err error
	if id.svidChain, err = pki.ParseDERs(c.GetSvidChain()); err != nil || len(id.svidChain) == 0 {
		return nil, fmt.Errorf("svid chain: %v", err)
	}
	if id.signChain, err = pki.ParseDERs(c.GetSigningChain()); err != nil || len(id.signChain) == 0 {
		return nil, fmt.Errorf("signing chain: %v", err)
	}
	if id.roots, err = pki.ParseDERs(c.GetTrustBundle()); err != nil || len(id.roots) == 0 {
		return nil, fmt.Errorf("trust bundle: %v", err)
	}
	svid, err := pki.NewSVID(svidKey, id.svidChain...)
	if err != nil {
		return nil, err
	}
	got, err := ident.NodeFromSPIFFEID(svid.ID, self.Member.Instance)
	if err != nil || got != self {
		return nil, fmt.Errorf("issued SVID %s is not for node %s", svid.ID, self)
	}
	if _, err := pki.Verify(id.signChain[0], id.roots, pki.KindSigning, time.Now()); err != nil {
		return nil, fmt.Errorf("signing certificate: %w", err)
	}
	return id, nil
}

// join obtains the node's identity with its join token, which the caller
// (startIdentity) has checked is set.
func (n *Node) join(ctx context.Context) (*identity, *registryv1.SignedConfig, error) {
	roots, err := n.cfg.roots()
	if err != nil {
		return nil, nil, err
	}
	td, err := pki.TrustDomainOf(roots)
	if err != nil {
		return nil, nil, err
	}
	tc := tlsconfig.TLSClientConfig(x509bundle.FromX509Authorities(td, roots), pki.AuthorizeRegistry(td))
	conn, err := grpc.NewClient(n.cfg.Registry, grpc.WithTransportCredentials(credentials.NewTLS(tc)), gconf.DialOption)
	if err != nil {
		return nil, nil, fmt.Errorf("join: %w", err)
	}
	defer conn.Close()
	svidKey, signKey, svidCSR, signCSR, err := newKeys()
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, joinRPCTimeout)
	defer cancel()
	resp, err := registryv1.NewNodeServiceClient(conn).Join(ctx, &registryv1.JoinRequest{
		Token: n.cfg.JoinToken, Node: n.self.Proto(), SvidCsr: svidCSR, SigningCsr: signCSR, Address: n.exchangeAdvertise(),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("join via %s: %w", n.cfg.Registry, err)
	}
	id, err := certsFrom(resp.GetCertificates(), svidKey, signKey, n.self)
	if err != nil {
		return nil, nil, fmt.Errorf("join: %w", err)
	}
	return id, resp.GetConfig(), nil
}

// renew replaces the node's keys and certificates over mTLS and installs
// the new ones; the exchange signer moves to the new signing key later
// (switchSigningKey).
func (n *Node) renew(ctx context.Context) (*identity, error) {
	conn, err := n.registryConn()
	if err != nil {
		return nil, err
	}
	svidKey, signKey, svidCSR, signCSR, err := newKeys()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, joinRPCTimeout)
	defer cancel()
	resp, err := registryv1.NewNodeServiceClient(conn).Renew(ctx, &registryv1.RenewRequest{
		SvidCsr: svidCSR, SigningCsr: signCSR, Address: n.exchangeAdvertise(),
	})
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	id, err := certsFrom(resp.GetCertificates(), svidKey, signKey, n.self)
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	if err := id.save(n.cfg.DataDir); err != nil {
		return nil, err
	}
	return id, n.install(id)
}

// install makes id the node's identity: new handshakes present the new SVID
// (calls in flight keep their connections) and the ledger signs its
// checkpoints with the new key. Exchanges are signed with the key the
// signer was made with, or last switched to (switchSigningKey): the other
// nodes check those signatures against the keys their configuration lists.
func (n *Node) install(id *identity) error {
	svid, err := pki.NewSVID(id.svidKey, id.svidChain...)
	if err != nil {
		return err
	}
	n.svids.Set(svid)
	n.setRoots(id.roots)
	n.idMu.Lock()
	n.id = id
	n.idMu.Unlock()
	if led := n.Ledger(); led != nil {
		if err := led.SetSigner(id.signKey, id.signChain); err != nil {
			return err
		}
	}
	n.log.Info("identity installed", "svid", svid.ID.String(), "expires", id.expiry().UTC().Format(time.RFC3339))
	return nil
}

// switchSigningKey moves the exchange signer from the signing key of old
// to that of next, which a renewal just installed. The registry lists both
// keys for this node until its next renewal, but the other nodes know the
// new one only once they have a configuration issued since: so the signer
// switches once the configuration in use lists the new key and
// switchGrace has passed since, for the others to receive it too. It
// switches sooner if the old key stops being usable: halfway from the
// renewal to the old certificate's expiry (so that what it signs still
// verifies when it is time-stamped, and later offline), or once the
// configuration no longer trusts the old certificate's root (a finished CA
// rotation). It returns when it switched, or false if ctx ended first (a
// restart signs with the new key, which the registry recorded before
// issuing its certificate).
func (n *Node) switchSigningKey(ctx context.Context, old, next *identity) (time.Time, bool) {
	kid, err := pki.KeyHash(next.signKey.Public())
	if err != nil { // certsFrom checked the key; unreachable
		n.log.Error("renewed signing key", "err", err)
		return time.Now(), true
	}
	grace := next.switchGrace(n.cfg.RenewBefore)
	deadline := next.obtained.Add(old.signChain[0].NotAfter.Sub(next.obtained) / 2)
	var listed time.Time // when the configuration in use first listed kid
	for {
		changed := n.TopologyChanged()
		now := time.Now()
		top := n.Topology()
		if listed.IsZero() && top != nil && top.Node(n.self).GetSigningKeyHash() == kid {
			listed = now
		}
		why := ""
		switch {
		case !listed.IsZero() && !now.Before(listed.Add(grace)):
			why = "the configuration lists it"
		case !now.Before(deadline):
			why = "the previous signing certificate is close to expiry"
		case top != nil && !trustsSigning(top.Roots, old, now) && trustsSigning(top.Roots, next, now):
			why = "the configuration no longer trusts the previous signing certificate"
		}
		if why != "" {
			if n.signer != nil {
				if err := n.signer.SetIdentity(next.signKey, next.signChain); err != nil {
					n.log.Error("switch signing key", "err", err)
				}
			}
			n.log.Info("exchanges signed with the renewed key", "key", kid, "because", why)
			return now, true
		}
		wake := deadline
		if !listed.IsZero() && listed.Add(grace).Before(wake) {
			wake = listed.Add(grace)
		}
		t := time.NewTimer(time.Until(wake))
		select {
		case <-ctx.Done():
			t.Stop()
			return time.Time{}, false
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// trustsSigning reports whether id's signing certificate is valid at now
// under roots.
func trustsSigning(roots []*x509.Certificate, id *identity, now time.Time) bool {
	_, err := pki.Verify(id.signChain[0], roots, pki.KindSigning, now)
	return err == nil
}
