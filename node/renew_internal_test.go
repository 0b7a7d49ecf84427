package node

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sildmesh/sild/pki"
)

// issuedIdentity is an identity as the registry issues it at obtained,
// valid for ttl (pki back-dates NotBefore).
func issuedIdentity(t *testing.T, obtained time.Time, ttl time.Duration) *identity {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("ee.sild.test")
	ca, err := pki.NewCA(td, "EE test root", 48*time.Hour, obtained.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromPath(td, "/node/GOV/70000310/ss1")
	svidKey, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	_, signKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := ca.Issue(pki.KindSVID, svidKey.Public(), id, ttl, obtained)
	if err != nil {
		t.Fatal(err)
	}
	sign, err := ca.Issue(pki.KindSigning, signKey.Public(), id, ttl, obtained)
	if err != nil {
		t.Fatal(err)
	}
	return &identity{svidKey: svidKey, signKey: signKey, svidChain: []*x509.Certificate{svid}, signChain: []*x509.Certificate{sign},
		roots: []*x509.Certificate{ca.Cert}, obtained: obtained}
}

// The renewal time: renew_before ahead of expiry, or at half the lifetime
// (counted from when the node got the certificates, not from their
// back-dated NotBefore) when renew_before is unset or would renew at once.
func TestRenewAt(t *testing.T) {
	t0 := time.Now().Truncate(time.Second)
	for _, tc := range []struct {
		name        string
		ttl, before time.Duration
		want        time.Duration // after t0
		fellBack    bool
	}{
		{name: "default: half-life", ttl: 24 * time.Hour, want: 12 * time.Hour},
		{name: "renew_before", ttl: 24 * time.Hour, before: time.Hour, want: 23 * time.Hour},
		{name: "renew_before just short of the lifetime", ttl: 24 * time.Hour, before: 24*time.Hour - 2*time.Second, want: 2 * time.Second},
		{name: "renew_before equal to the lifetime", ttl: 24 * time.Hour, before: 24 * time.Hour, want: 12 * time.Hour, fellBack: true},
		{name: "renew_before beyond the lifetime", ttl: time.Minute, before: 2 * time.Minute, want: 30 * time.Second, fellBack: true},
		{name: "short lifetime, half-life", ttl: time.Minute, want: 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := issuedIdentity(t, t0, tc.ttl)
			at, fellBack := id.renewAt(tc.before)
			if got := at.Sub(t0); got != tc.want || fellBack != tc.fellBack {
				t.Fatalf("renewAt(%s) = t0+%s (fell back: %v), want t0+%s (%v)", tc.before, got, fellBack, tc.want, tc.fellBack)
			}
		})
	}
}

// A failed renewal is retried after a tenth of the time renewing ahead of
// expiry leaves, between 1 s and 30 s, then after twice as long each time
// up to 30 s, never later than halfway to expiry.
func TestRenewRetry(t *testing.T) {
	t0 := time.Now().Truncate(time.Second)
	day, short := issuedIdentity(t, t0, 24*time.Hour), issuedIdentity(t, t0, time.Minute)
	for _, tc := range []struct {
		name   string
		id     *identity
		before time.Duration
		now    time.Duration // after t0
		want   []time.Duration
	}{
		{name: "defaults", id: day, now: 12 * time.Hour, want: []time.Duration{30 * time.Second, 30 * time.Second, 30 * time.Second}},
		{name: "renew_before 1h", id: day, before: time.Hour, now: 23 * time.Hour, want: []time.Duration{30 * time.Second, 30 * time.Second}},
		{name: "renew_before 60s", id: day, before: time.Minute, now: 24*time.Hour - time.Minute,
			want: []time.Duration{6 * time.Second, 12 * time.Second, 24 * time.Second, 30 * time.Second, 30 * time.Second}},
		{name: "short lifetime: halfway to expiry at most", id: short, now: 30 * time.Second,
			want: []time.Duration{3 * time.Second, 6 * time.Second, 12 * time.Second, 15 * time.Second}},
		{name: "close to expiry: at least 1 s", id: short, now: 59 * time.Second, want: []time.Duration{time.Second, time.Second}},
		{name: "expired", id: short, now: time.Hour, want: []time.Duration{3 * time.Second, 6 * time.Second, 12 * time.Second, 24 * time.Second, 30 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i, want := range tc.want {
				if got := tc.id.retryIn(tc.before, i+1, t0.Add(tc.now)); got != want {
					t.Fatalf("retry after %d failures: %s, want %s", i+1, got, want)
				}
			}
		})
	}
}

// The grace before and after a switch of signing keys is a minute, or a
// quarter of the time to the next renewal if that is shorter.
func TestSwitchGrace(t *testing.T) {
	t0 := time.Now().Truncate(time.Second)
	day, short := issuedIdentity(t, t0, 24*time.Hour), issuedIdentity(t, t0, time.Minute)
	for _, tc := range []struct {
		id     *identity
		before time.Duration
		want   time.Duration
	}{
		{day, 0, keySwitchGrace},
		{day, 24*time.Hour - 2*time.Second, 500 * time.Millisecond},
		{short, 0, 7500 * time.Millisecond},
		{short, 2 * time.Minute, 7500 * time.Millisecond},
	} {
		if got := tc.id.switchGrace(tc.before); got != tc.want {
			t.Errorf("switchGrace(%s) of a %s identity: %s, want %s", tc.before, tc.id.lifetime(), got, tc.want)
		}
	}
}
