package tsa

import (
	"crypto/x509"
	"encoding/asn1"
	"testing"
	"time"
)

// FuzzRespond feeds arbitrary requests to the authority: it must never panic
// and must always answer a well-formed TimeStampResp.
func FuzzRespond(f *testing.F) {
	x := newTestTSA(f)
	req, _, err := newRequest(digestOf("seed"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(req)
	f.Add([]byte{0x30, 0x00})
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var resp timeStampResp
		rest, err := asn1.Unmarshal(x.auth.Respond(b), &resp)
		if err != nil || len(rest) != 0 {
			t.Fatalf("reply does not decode: %v", err)
		}
		if resp.Status.Status == statusGranted {
			if _, err := parseToken(resp.TimeStampToken.FullBytes); err != nil {
				t.Fatalf("granted token does not parse: %v", err)
			}
		}
	})
}

// FuzzVerify feeds arbitrary tokens and replies to the parsers.
func FuzzVerify(f *testing.F) {
	x := newTestTSA(f)
	d := digestOf("seed")
	tok, err := x.auth.Stamp(d)
	if err != nil {
		f.Fatal(err)
	}
	req, _, _ := newRequest(d)
	f.Add(tok)
	f.Add(x.auth.Respond(req))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	roots := []*x509.Certificate{x.ca.Cert}
	f.Fuzz(func(t *testing.T, b []byte) {
		if ts, err := Verify(b, d, roots); err == nil && ts.After(time.Now().Add(time.Hour)) {
			t.Fatalf("verified token from the future: %v", ts)
		}
		_, _ = ParseReply(b)
	})
}
