package envelope

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/sildmesh/sild/internal/rpcerr"
)

const (
	client = "EE/GOV/70000001/licensing"
	target = "EE/GOV/70000002/business"
)

func TestParseRequest(t *testing.T) {
	ok := func() metadata.MD { return metadata.Pairs(HeaderClient, client, HeaderTarget, target) }
	with := func(kv ...string) metadata.MD { return metadata.Join(ok(), metadata.Pairs(kv...)) }
	tests := []struct {
		name   string
		md     metadata.MD
		path   string
		reason string // "" means accepted
	}{
		{"ok", ok(), "/business.v1.Registry/GetCompany", ""},
		{"ok with ids", with(HeaderMessageID, "m-1", HeaderUserID, "EE123", HeaderPurpose, "licence check"), "/business.v1.Registry/GetCompany", ""},
		{"dot dot", ok(), "/business.v1.Registry/../x", rpcerr.ReasonInvalidArgument},
		{"percent", ok(), "/business.v1.Registry/Get%43ompany", rpcerr.ReasonInvalidArgument},
		{"unicode look-alike", ok(), "/business.v1.Registry/GetСompany", rpcerr.ReasonInvalidArgument},
		{"no leading slash", ok(), "business.v1.Registry/GetCompany", rpcerr.ReasonInvalidArgument},
		{"extra segment", ok(), "/business.v1.Registry/GetCompany/x", rpcerr.ReasonInvalidArgument},
		{"empty", ok(), "", rpcerr.ReasonInvalidArgument},
		{"missing client", metadata.Pairs(HeaderTarget, target), "/a.B/C", rpcerr.ReasonUnknownClient},
		{"missing target", metadata.Pairs(HeaderClient, client), "/a.B/C", rpcerr.ReasonInvalidArgument},
		{"two clients", with(HeaderClient, target), "/a.B/C", rpcerr.ReasonInvalidArgument},
		{"bad client", metadata.Pairs(HeaderClient, "EE/GOV", HeaderTarget, target), "/a.B/C", rpcerr.ReasonInvalidIdentifier},
		{"bad target", metadata.Pairs(HeaderClient, client, HeaderTarget, "EE/GOV/x y/z"), "/a.B/C", rpcerr.ReasonInvalidIdentifier},
		{"control in message id", with(HeaderMessageID, "a\nb"), "/a.B/C", rpcerr.ReasonInvalidArgument},
		{"long purpose", with(HeaderPurpose, string(make([]byte, 300))), "/a.B/C", rpcerr.ReasonInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseRequest(tt.md, tt.path)
			if tt.reason == "" {
				if err != nil {
					t.Fatal(err)
				}
				if r.Client.String() != client || r.Target.String() != target || r.FullMethod() != tt.path || r.MessageID == "" {
					t.Fatalf("parsed %+v", r)
				}
				return
			}
			if got := rpcerr.Reason(err); got != tt.reason {
				t.Fatalf("reason %q, want %q (err %v)", got, tt.reason, err)
			}
			if got := rpcerr.Info(err).GetMetadata()["component"]; got != ComponentConsumer {
				t.Fatalf("component %q", got)
			}
		})
	}
}

func TestMessageIDGenerated(t *testing.T) {
	md := metadata.Pairs(HeaderClient, client, HeaderTarget, target)
	a, _ := ParseRequest(md, "/a.B/C")
	b, _ := ParseRequest(md, "/a.B/C")
	if a.MessageID == "" || a.MessageID == b.MessageID {
		t.Fatalf("ids %q %q", a.MessageID, b.MessageID)
	}
}

func TestChainBindsEverything(t *testing.T) {
	md := metadata.Pairs(HeaderClient, client, HeaderTarget, target, HeaderMessageID, "m1")
	r, err := ParseRequest(md, "/a.B/C")
	if err != nil {
		t.Fatal(err)
	}
	sum := func(dir Direction, r Request, frames ...string) [32]byte {
		c := NewChain(dir, r)
		for _, f := range frames {
			c.Add([]byte(f))
		}
		return c.Sum()
	}
	base := sum(DirRequest, r, "ab", "c")
	other := r
	other.MessageID = "m2"
	otherMethod := r
	otherMethod.Method = "D"
	swapped := r
	swapped.Client, swapped.Target = r.Target, r.Client
	user := r
	user.UserID = "EE38001085718"
	purpose := r
	purpose.Purpose = "licence check"
	userIntoPurpose := r
	userIntoPurpose.Purpose = "EE38001085718"
	timed := r
	timed.StampTime(time.Unix(1_800_000_000, 0))
	later := r
	later.StampTime(time.Unix(1_800_000_000, 1e6))
	for name, s := range map[string][32]byte{
		"request time":      sum(DirRequest, timed, "ab", "c"),
		"later time":        sum(DirRequest, later, "ab", "c"),
		"user id":           sum(DirRequest, user, "ab", "c"),
		"purpose":           sum(DirRequest, purpose, "ab", "c"),
		"user into purpose": sum(DirRequest, userIntoPurpose, "ab", "c"),
		"direction":         sum(DirResponse, r, "ab", "c"),
		"message id":        sum(DirRequest, other, "ab", "c"),
		"method":            sum(DirRequest, otherMethod, "ab", "c"),
		"client/target":     sum(DirRequest, swapped, "ab", "c"),
		"split":             sum(DirRequest, r, "a", "bc"),
		"order":             sum(DirRequest, r, "c", "ab"),
		"missing":           sum(DirRequest, r, "ab"),
		"extra empty":       sum(DirRequest, r, "ab", "c", ""),
	} {
		if s == base {
			t.Errorf("%s does not change the chain", name)
		}
	}
	if sum(DirRequest, user, "ab", "c") == sum(DirRequest, userIntoPurpose, "ab", "c") {
		t.Error("a user id moved into the purpose gives the same chain")
	}
	if sum(DirRequest, r, "ab", "c") != base {
		t.Fatal("chain not deterministic")
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add(client, target, "m", "/a.B/C")
	f.Add("EE/GOV/1/x", "EE/GOV/2/../y", "\x00", "/a.B/../C")
	f.Fuzz(func(t *testing.T, c, tg, id, path string) {
		md := metadata.Pairs(HeaderClient, c, HeaderTarget, tg, HeaderMessageID, id)
		r, err := ParseRequest(md, path)
		if err != nil {
			if rpcerr.Reason(err) == "" {
				t.Fatalf("refusal without reason: %v", err)
			}
			return
		}
		if r.FullMethod() != path {
			t.Fatalf("accepted path %q canonicalises to %q", path, r.FullMethod())
		}
		if !printable(r.MessageID) || len(r.MessageID) > maxFieldLen {
			t.Fatalf("bad message id %q", r.MessageID)
		}
	})
}

func TestRequestTime(t *testing.T) {
	at := time.Date(2026, 11, 23, 12, 0, 0, 123_456_789, time.UTC)
	var r Request
	r.StampTime(at)
	if r.TimeHeader() != "2026-11-23T12:00:00.123Z" {
		t.Fatalf("header %q", r.TimeHeader())
	}
	md := metadata.Pairs(HeaderClient, client, HeaderTarget, target, HeaderRequestTime, r.TimeHeader())
	p, err := ParseRequest(md, "/a.B/C")
	if err != nil || !p.Time.Equal(r.Time) || p.TimeHeader() != r.TimeHeader() {
		t.Fatalf("parsed %v (%q), %v", p.Time, p.TimeHeader(), err)
	}
	for _, bad := range []string{"yesterday", "2026-11-23", "2026-11-23T12:00:00.123Z" + strings.Repeat("0", 40)} {
		md := metadata.Pairs(HeaderClient, client, HeaderTarget, target, HeaderRequestTime, bad)
		if _, err := ParseRequest(md, "/a.B/C"); rpcerr.Reason(err) != rpcerr.ReasonInvalidArgument {
			t.Errorf("%q: %v", bad, err)
		}
	}
	now := time.Now()
	for _, tc := range []struct {
		at     time.Time
		window time.Duration
		want   bool
	}{
		{now, time.Hour, true},
		{now.Add(-58 * time.Minute), time.Hour, true},
		{now.Add(-59*time.Minute - time.Second), time.Hour, false}, // its id may be forgotten within the skew
		{now.Add(50 * time.Second), time.Hour, true},
		{now.Add(2 * time.Minute), time.Hour, false},
		{now.Add(-3 * time.Second), 20 * time.Second, true}, // a short window: a quarter of it is the skew
		{now.Add(-16 * time.Second), 20 * time.Second, false},
	} {
		if got := Fresh(tc.at, now, tc.window); got != tc.want {
			t.Errorf("Fresh(now%+v, window %v) = %v", tc.at.Sub(now), tc.window, got)
		}
	}
}
