package gconf

import (
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/pki"
)

// signer returns a function signing with a new key certified by ca.
func signer(t *testing.T, ca *pki.CA, kind pki.Kind, path string) func(*registryv1.GlobalConfig) *registryv1.SignedConfig {
	t.Helper()
	key, _ := pki.NewKey()
	cert, err := ca.Issue(kind, key.Public(), spiffeid.RequireFromString("spiffe://ee.sild.test"+path), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sign := func(c *registryv1.GlobalConfig) *registryv1.SignedConfig {
		sc, err := Sign(c, key, cert)
		if err != nil {
			t.Fatal(err)
		}
		return sc
	}
	return sign
}

func TestSignVerify(t *testing.T) {
	now := time.Now()
	td := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	ca, _ := pki.NewCA(td, "EE", time.Hour, now)
	other, _ := pki.NewCA(td, "evil", time.Hour, now)
	roots := []*x509.Certificate{ca.Cert}
	cfg := &registryv1.GlobalConfig{Instance: "EE", TrustDomain: "ee.sild.test", Version: 3, ExpiresAt: timestamppb.New(now.Add(time.Minute))}
	sign := signer(t, ca, pki.KindSigning, "/registry/config")
	sc := sign(cfg)
	got, err := Verify(sc, roots, now)
	if err != nil || !proto.Equal(got, cfg) {
		t.Fatalf("verify: %v", err)
	}
	flip := func(b []byte, i int) []byte { c := append([]byte(nil), b...); c[i%len(c)] ^= 1; return c }
	nodeSign := signer(t, ca, pki.KindSigning, "/node/GOV/1/ss1")
	svidSign := signer(t, ca, pki.KindSVID, "/registry/r1")
	evilSign := signer(t, other, pki.KindSigning, "/registry/config")
	cases := []struct {
		name string
		sc   *registryv1.SignedConfig
		at   time.Time
		want error
	}{
		{"changed config byte", &registryv1.SignedConfig{Config: flip(sc.Config, 5), Signature: sc.Signature, SignerChain: sc.SignerChain}, now, ErrSignature},
		{"changed signature", &registryv1.SignedConfig{Config: sc.Config, Signature: flip(sc.Signature, 10), SignerChain: sc.SignerChain}, now, ErrSignature},
		{"no signature", &registryv1.SignedConfig{Config: sc.Config}, now, ErrMalformed},
		{"expired", sc, now.Add(2 * time.Minute), ErrExpired},
		{"signed by a node", nodeSign(cfg), now, ErrSigner},
		{"signed with an SVID", svidSign(cfg), now, ErrSigner},
		{"signed by another CA", evilSign(cfg), now, ErrSigner},
		{"other trust domain", sign(&registryv1.GlobalConfig{TrustDomain: "fi.sild.test", ExpiresAt: cfg.ExpiresAt}), now, ErrSigner},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Verify(tc.sc, roots, tc.at); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func FuzzVerify(f *testing.F) {
	now := time.Now()
	td := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	ca, _ := pki.NewCA(td, "EE", time.Hour, now)
	key, _ := pki.NewKey()
	cert, _ := ca.Issue(pki.KindSigning, key.Public(), spiffeid.RequireFromString("spiffe://ee.sild.test/registry/config"), time.Hour, now)
	sc, _ := Sign(&registryv1.GlobalConfig{TrustDomain: "ee.sild.test", ExpiresAt: timestamppb.New(now.Add(time.Hour))}, key, cert)
	data, _ := proto.Marshal(sc)
	f.Add(data)
	f.Fuzz(func(t *testing.T, b []byte) {
		var in registryv1.SignedConfig
		if proto.Unmarshal(b, &in) != nil {
			return
		}
		cfg, err := Verify(&in, []*x509.Certificate{ca.Cert}, now)
		if err == nil && !proto.Equal(&in, sc) && string(in.Config) != string(sc.Config) {
			t.Fatalf("a different configuration verified: %v", cfg)
		}
	})
}
