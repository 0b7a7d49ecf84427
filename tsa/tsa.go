// Package tsa is an RFC 3161 time-stamping authority and its client, built on
// encoding/asn1 and crypto only.
//
// The authority (New) is an http.Handler: POST a DER TimeStampReq with content
// type application/timestamp-query and it answers a DER TimeStampResp with
// content type application/timestamp-reply. It accepts SHA-256 imprints only,
// echoes the nonce, gives every token a unique serial number that only grows
// (seeded from the clock, so it keeps growing across restarts), states its
// accuracy and policy, and signs a CMS SignedData (RFC 5652) with the signed
// attributes contentType, signingTime, messageDigest and signingCertificateV2
// (RFC 5035 ESSCertIDv2). The key and certificate come from pki: a KindTSA
// certificate carries the critical timeStamping extended key usage that RFC
// 3161 requires. Bad requests get status "rejection" with a failInfo.
//
// The client side is Request (ask an authority for a token over HTTP) and
// Verify (check a token offline against a trust bundle). A token also checks
// with OpenSSL, given the SHA-256 digest that was stamped in hex:
//
//	openssl ts -verify -digest <hex> -in token.der -token_in -CAfile ca.pem
//
// and `openssl ts -reply -in token.der -token_in -text` prints it.
package tsa

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"sort"
	"sync"
	"time"
)

// Content types of RFC 3161 over HTTP.
const (
	ContentTypeQuery = "application/timestamp-query"
	ContentTypeReply = "application/timestamp-reply"
)

// maxRequestBytes bounds a TimeStampReq; a real one is under 200 bytes.
const maxRequestBytes = 16 << 10

// DefaultPolicy is the TSA policy OID used when Config.Policy is empty.
var DefaultPolicy = defaultPolicyOIDArc

// Config configures an authority.
type Config struct {
	// Signer is the time-stamping key (ECDSA P-256).
	Signer crypto.Signer
	// Cert certifies Signer (pki.KindTSA); Chain holds intermediates, if any,
	// and is included in tokens after Cert.
	Cert  *x509.Certificate
	Chain []*x509.Certificate
	// Policy is the TSA policy OID put in every token; requests naming
	// another policy are rejected with unacceptedPolicy.
	Policy asn1.ObjectIdentifier
	// Accuracy is the stated accuracy of genTime (default 1 s).
	Accuracy time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives one line per refused request (default: discard).
	Logger *slog.Logger
}

// DefaultConfig returns a Config with the defaults filled in; Signer and Cert
// must still be set.
func DefaultConfig() Config {
	return Config{Policy: DefaultPolicy, Accuracy: time.Second, Now: time.Now}
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	if c.Signer == nil {
		return errors.New("tsa config: Signer is required")
	}
	if _, ok := c.Signer.Public().(*ecdsa.PublicKey); !ok {
		return fmt.Errorf("tsa config: Signer must be ECDSA, got %T", c.Signer.Public())
	}
	if c.Cert == nil {
		return errors.New("tsa config: Cert is required")
	}
	if pub, ok := c.Cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(c.Signer.Public()) {
		return errors.New("tsa config: Cert does not certify Signer")
	}
	if len(c.Cert.ExtKeyUsage) != 1 || c.Cert.ExtKeyUsage[0] != x509.ExtKeyUsageTimeStamping {
		return errors.New("tsa config: Cert must have the timeStamping extended key usage only")
	}
	if c.Accuracy < 0 {
		return errors.New("tsa config: Accuracy must not be negative")
	}
	return nil
}

// Authority is an RFC 3161 time-stamping authority. It is safe for concurrent
// use and starts no goroutines.
type Authority struct {
	cfg    Config
	certs  []byte // DER certificates for the SignedData certificates field
	essID  []byte // DER SigningCertificateV2 attribute value
	logger *slog.Logger

	mu   sync.Mutex
	last *big.Int // last serial number issued
}

// New returns an authority for cfg.
func New(cfg Config) (*Authority, error) {
	if cfg.Policy == nil {
		cfg.Policy = DefaultPolicy
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Accuracy == 0 {
		cfg.Accuracy = time.Second
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Authority{cfg: cfg, logger: cfg.Logger, last: big.NewInt(0)}
	if a.logger == nil {
		a.logger = slog.New(slog.DiscardHandler)
	}
	for _, c := range append([]*x509.Certificate{cfg.Cert}, cfg.Chain...) {
		a.certs = append(a.certs, c.Raw...)
	}
	sum := sha256.Sum256(cfg.Cert.Raw)
	ess, err := asn1.Marshal(signingCertificateV2{Certs: []essCertIDv2{{
		CertHash: sum[:],
		IssuerSerial: issuerSerial{
			Issuer: asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true,
				Bytes: mustMarshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: cfg.Cert.RawIssuer})},
			Serial: cfg.Cert.SerialNumber,
		},
	}}})
	if err != nil {
		return nil, fmt.Errorf("new tsa: %w", err)
	}
	a.essID = ess
	return a, nil
}

func mustMarshal(v any) []byte {
	b, err := asn1.Marshal(v)
	if err != nil {
		panic(err) // only called on values that always marshal
	}
	return b
}

// ServeHTTP answers POST application/timestamp-query.
func (a *Authority) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != ContentTypeQuery {
		http.Error(w, "content type must be "+ContentTypeQuery, http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBytes+1))
	if err != nil {
		http.Error(w, "read request", http.StatusBadRequest)
		return
	}
	var resp []byte
	if len(body) > maxRequestBytes {
		resp = rejection(failBadDataFormat, "request too large")
	} else {
		resp = a.Respond(body)
	}
	w.Header().Set("Content-Type", ContentTypeReply)
	_, _ = w.Write(resp)
}

// Respond turns a DER TimeStampReq into a DER TimeStampResp: a granted token,
// or a rejection with a failInfo. It is the handler without HTTP, for
// in-process use.
func (a *Authority) Respond(req []byte) []byte {
	q, fail, msg := parseRequest(req)
	if fail >= 0 {
		a.logger.Info("time-stamp request rejected", "reason", msg)
		return rejection(fail, msg)
	}
	if q.ReqPolicy != nil && !q.ReqPolicy.Equal(a.cfg.Policy) {
		a.logger.Info("time-stamp request rejected", "reason", "unaccepted policy", "policy", q.ReqPolicy.String())
		return rejection(failUnacceptedPolicy, "unaccepted policy")
	}
	token, err := a.issue(q)
	if err != nil {
		a.logger.Error("time-stamp failed", "err", err)
		return rejection(failSystemFailure, "system failure")
	}
	return mustMarshal(timeStampResp{
		Status:         pkiStatusInfo{Status: statusGranted},
		TimeStampToken: asn1.RawValue{FullBytes: token},
	})
}

// parseRequest decodes and checks a TimeStampReq. fail is -1 when it is fine.
func parseRequest(der []byte) (q timeStampReq, fail int, msg string) {
	rest, err := asn1.Unmarshal(der, &q)
	if err != nil || len(rest) != 0 {
		return q, failBadDataFormat, "malformed request"
	}
	if q.Version != 1 {
		return q, failBadRequest, "unsupported version"
	}
	if !q.MessageImprint.HashAlgorithm.Algorithm.Equal(oidSHA256) {
		return q, failBadAlg, "only SHA-256 imprints are accepted"
	}
	if p := q.MessageImprint.HashAlgorithm.Parameters; len(p.FullBytes) != 0 && !bytes.Equal(p.FullBytes, asn1.NullBytes) {
		return q, failBadAlg, "unexpected hash parameters"
	}
	if len(q.MessageImprint.HashedMessage) != sha256.Size {
		return q, failBadDataFormat, "imprint length does not match SHA-256"
	}
	if len(q.Extensions) != 0 {
		return q, failUnacceptedExtension, "extensions are not supported"
	}
	if q.Nonce != nil && (q.Nonce.Sign() < 0 || q.Nonce.BitLen() > 256) {
		return q, failBadRequest, "nonce out of range"
	}
	return q, -1, ""
}

func rejection(bit int, text string) []byte {
	fi := asn1.BitString{Bytes: make([]byte, bit/8+1), BitLength: bit + 1}
	fi.Bytes[bit/8] |= 0x80 >> (bit % 8)
	return mustMarshal(timeStampResp{Status: pkiStatusInfo{Status: statusRejected, StatusString: []asn1.RawValue{{Class: asn1.ClassUniversal, Tag: asn1.TagUTF8String, Bytes: []byte(text)}}, FailInfo: fi}})
}

// nextSerial returns a serial number greater than every one issued before by
// this authority and, as long as the clock does not go back, by earlier runs.
func (a *Authority) nextSerial(now time.Time) *big.Int {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := big.NewInt(now.UnixNano())
	if s.Cmp(a.last) <= 0 {
		s.Add(a.last, big.NewInt(1))
	}
	a.last = s
	return new(big.Int).Set(s)
}

func (a *Authority) issue(q timeStampReq) ([]byte, error) {
	now := a.cfg.Now().UTC()
	info := tstInfo{
		Version:        1,
		Policy:         a.cfg.Policy,
		MessageImprint: messageImprint{HashAlgorithm: pkix.AlgorithmIdentifier{Algorithm: oidSHA256}, HashedMessage: q.MessageImprint.HashedMessage},
		SerialNumber:   a.nextSerial(now),
		GenTime:        now.Truncate(time.Second),
		Accuracy:       accuracyOf(a.cfg.Accuracy),
		Nonce:          q.Nonce,
	}
	content, err := asn1.Marshal(info)
	if err != nil {
		return nil, fmt.Errorf("marshal tst info: %w", err)
	}
	digest := sha256.Sum256(content)
	attrs, err := signedAttributes(digest[:], now, a.essID)
	if err != nil {
		return nil, err
	}
	h := sha256.Sum256(setOf(attrs))
	sig, err := a.cfg.Signer.Sign(rand.Reader, h[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	si := signerInfo{
		Version:            1,
		SID:                issuerAndSerial{Issuer: asn1.RawValue{FullBytes: a.cfg.Cert.RawIssuer}, Serial: a.cfg.Cert.SerialNumber},
		DigestAlgorithm:    pkix.AlgorithmIdentifier{Algorithm: oidSHA256},
		SignedAttrs:        asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: attrs},
		SignatureAlgorithm: pkix.AlgorithmIdentifier{Algorithm: oidECDSAWithSHA256},
		Signature:          sig,
	}
	sd := signedData{
		Version:          3,
		DigestAlgorithms: []pkix.AlgorithmIdentifier{{Algorithm: oidSHA256}},
		EncapContentInfo: encapContentInfo{EContentType: oidTSTInfo, EContent: content},
		Certificates:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: a.certs},
		SignerInfos:      []signerInfo{si},
	}
	var sdDER []byte
	if q.CertReq {
		sdDER, err = asn1.Marshal(sd)
	} else {
		sdDER, err = asn1.Marshal(signedDataNoCerts{sd.Version, sd.DigestAlgorithms, sd.EncapContentInfo, sd.SignerInfos})
	}
	if err != nil {
		return nil, fmt.Errorf("marshal signed data: %w", err)
	}
	return asn1.Marshal(contentInfo{
		ContentType: oidSignedData,
		Content:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: sdDER},
	})
}

func accuracyOf(d time.Duration) accuracy {
	var a accuracy
	a.Seconds = int(d / time.Second)
	d -= time.Duration(a.Seconds) * time.Second
	a.Millis = int(d / time.Millisecond)
	d -= time.Duration(a.Millis) * time.Millisecond
	a.Micros = int(d / time.Microsecond)
	return a
}

// signedAttributes returns the DER attributes (without the SET header), in
// DER SET OF order.
func signedAttributes(digest []byte, now time.Time, ess []byte) ([]byte, error) {
	values := []struct {
		oid asn1.ObjectIdentifier
		v   []byte
	}{
		{oidContentType, mustMarshal(oidTSTInfo)},
		{oidSigningTime, mustMarshal(now.Truncate(time.Second))},
		{oidMessageDigest, mustMarshal(digest)},
		{oidSigningCertV2, ess},
	}
	var encs [][]byte
	for _, v := range values {
		b, err := asn1.Marshal(attribute{Type: v.oid, Values: asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: v.v}})
		if err != nil {
			return nil, fmt.Errorf("marshal attribute %s: %w", v.oid, err)
		}
		encs = append(encs, b)
	}
	sort.Slice(encs, func(i, j int) bool { return bytes.Compare(encs[i], encs[j]) < 0 })
	return bytes.Join(encs, nil), nil
}

// setOf wraps DER elements in a SET header.
func setOf(body []byte) []byte {
	return mustMarshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: body})
}
