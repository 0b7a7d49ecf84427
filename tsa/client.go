package tsa

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"time"

	"github.com/sildmesh/sild/pki"
)

// Errors of Request and Verify; check them with errors.Is.
var (
	// ErrRejected: the authority refused to time-stamp.
	ErrRejected = errors.New("time-stamp rejected")
	// ErrMalformed: a reply or token does not decode as RFC 3161 / CMS.
	ErrMalformed = errors.New("malformed time-stamp")
	// ErrImprint: the token stamps another digest (or echoes another nonce).
	ErrImprint = errors.New("time-stamp imprint mismatch")
	// ErrSignature: the CMS signature or its signed attributes do not verify.
	ErrSignature = errors.New("time-stamp signature invalid")
	// ErrCertificate: the signer certificate is missing, not a TSA
	// certificate, or does not chain to the trust bundle at genTime.
	ErrCertificate = errors.New("time-stamp certificate invalid")
)

// maxReplyBytes bounds a TimeStampResp read from an authority.
const maxReplyBytes = 1 << 20

// Request asks the authority at url to time-stamp digest (a SHA-256 hash) and
// returns the DER TimeStampToken (a CMS ContentInfo). The token includes the
// authority's certificate. The reply's imprint and nonce are checked, its
// signature is not: use Verify for that.
func Request(ctx context.Context, client *http.Client, url string, digest []byte) ([]byte, error) {
	if client == nil {
		client = http.DefaultClient
	}
	req, nonce, err := newRequest(digest)
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(req))
	if err != nil {
		return nil, fmt.Errorf("time-stamp request: %w", err)
	}
	hr.Header.Set("Content-Type", ContentTypeQuery)
	resp, err := client.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("time-stamp request: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBytes))
	if err != nil {
		return nil, fmt.Errorf("time-stamp request: read reply: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("time-stamp request: http status %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != ContentTypeReply {
		return nil, fmt.Errorf("time-stamp request: reply content type %q", ct)
	}
	return readReply(body, digest, nonce)
}

// Stamp time-stamps digest in-process (no HTTP) and returns the token, as
// Request would.
func (a *Authority) Stamp(digest []byte) ([]byte, error) {
	req, nonce, err := newRequest(digest)
	if err != nil {
		return nil, err
	}
	return readReply(a.Respond(req), digest, nonce)
}

func newRequest(digest []byte) ([]byte, *big.Int, error) {
	if len(digest) != sha256.Size {
		return nil, nil, fmt.Errorf("time-stamp request: digest must be %d bytes, got %d", sha256.Size, len(digest))
	}
	nonce, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, nil, fmt.Errorf("time-stamp request: %w", err)
	}
	req, err := asn1.Marshal(timeStampReq{
		Version:        1,
		MessageImprint: messageImprint{HashAlgorithm: pkix.AlgorithmIdentifier{Algorithm: oidSHA256}, HashedMessage: digest},
		Nonce:          nonce,
		CertReq:        true,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("time-stamp request: %w", err)
	}
	return req, nonce, nil
}

// ParseReply decodes a DER TimeStampResp; it returns the token if the status
// is granted, and an error wrapping ErrRejected with the status text if not.
func ParseReply(der []byte) ([]byte, error) {
	var resp timeStampResp
	rest, err := asn1.Unmarshal(der, &resp)
	if err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("%w: reply does not decode", ErrMalformed)
	}
	if s := resp.Status.Status; s != statusGranted && s != 1 /* grantedWithMods */ {
		var text []string
		for _, t := range resp.Status.StatusString {
			text = append(text, string(t.Bytes))
		}
		return nil, fmt.Errorf("%w: status %d %q failInfo %x", ErrRejected, s, text, resp.Status.FailInfo.Bytes)
	}
	if len(resp.TimeStampToken.FullBytes) == 0 {
		return nil, fmt.Errorf("%w: granted reply without token", ErrMalformed)
	}
	return resp.TimeStampToken.FullBytes, nil
}

func readReply(der, digest []byte, nonce *big.Int) ([]byte, error) {
	token, err := ParseReply(der)
	if err != nil {
		return nil, err
	}
	t, err := parseToken(token)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(t.info.MessageImprint.HashedMessage, digest) {
		return nil, fmt.Errorf("%w: reply stamps another digest", ErrImprint)
	}
	if t.info.Nonce == nil || t.info.Nonce.Cmp(nonce) != 0 {
		return nil, fmt.Errorf("%w: reply does not echo the nonce", ErrImprint)
	}
	return token, nil
}

// Token is what Verify learnt from a valid token.
type Token struct {
	GenTime time.Time
	Serial  *big.Int
	Policy  asn1.ObjectIdentifier
	Signer  *x509.Certificate
}

// Verify checks token against digest and the trust bundle roots: the CMS
// signature over the signed attributes, the messageDigest and contentType
// attributes, the ESS signingCertificateV2 binding, the message imprint, and
// that the signer is a time-stamping certificate chaining to roots at the
// token's time. It returns the time of the stamp.
func Verify(token, digest []byte, roots []*x509.Certificate) (time.Time, error) {
	t, err := VerifyToken(token, digest, roots)
	if err != nil {
		return time.Time{}, err
	}
	return t.GenTime, nil
}

// VerifyToken is Verify returning the token's details.
func VerifyToken(token, digest []byte, roots []*x509.Certificate) (*Token, error) {
	t, err := parseToken(token)
	if err != nil {
		return nil, err
	}
	if !t.info.MessageImprint.HashAlgorithm.Algorithm.Equal(oidSHA256) || !bytes.Equal(t.info.MessageImprint.HashedMessage, digest) {
		return nil, fmt.Errorf("%w: token does not stamp this digest", ErrImprint)
	}
	if t.cert == nil {
		return nil, fmt.Errorf("%w: token carries no signer certificate", ErrCertificate)
	}
	sum := sha256.Sum256(t.cert.Raw)
	if !bytes.Equal(sum[:], t.essHash) {
		return nil, fmt.Errorf("%w: signingCertificateV2 does not name the signer certificate", ErrSignature)
	}
	pub, ok := t.cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: signer key is %T, want ECDSA", ErrCertificate, t.cert.PublicKey)
	}
	h := sha256.Sum256(setOf(t.signedAttrs))
	if !ecdsa.VerifyASN1(pub, h[:], t.signature) {
		return nil, fmt.Errorf("%w: signature does not verify", ErrSignature)
	}
	if _, err := pki.Verify(t.cert, roots, pki.KindTSA, t.info.GenTime); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCertificate, err)
	}
	return &Token{GenTime: t.info.GenTime, Serial: t.info.SerialNumber, Policy: t.info.Policy, Signer: t.cert}, nil
}

type parsedToken struct {
	info        tstInfo
	cert        *x509.Certificate // signer, nil if not included
	signedAttrs []byte            // DER attributes without the SET header
	signature   []byte
	essHash     []byte
}

func malformed(what string) error { return fmt.Errorf("%w: %s", ErrMalformed, what) }

// parseToken decodes a token and checks everything that does not need the
// signer's key or a trust bundle: structure, algorithms, messageDigest,
// contentType.
func parseToken(der []byte) (*parsedToken, error) {
	var ci contentInfo
	rest, err := asn1.Unmarshal(der, &ci)
	if err != nil || len(rest) != 0 {
		return nil, malformed("content info does not decode")
	}
	if !ci.ContentType.Equal(oidSignedData) {
		return nil, malformed("content is not signed data")
	}
	var elems []asn1.RawValue
	rest, err = asn1.Unmarshal(ci.Content.Bytes, &elems)
	if err != nil || len(rest) != 0 || len(elems) < 4 {
		return nil, malformed("signed data does not decode")
	}
	var version int
	if rest, err := asn1.Unmarshal(elems[0].FullBytes, &version); err != nil || len(rest) != 0 || version != 3 {
		return nil, malformed("signed data version")
	}
	var algs []pkix.AlgorithmIdentifier
	if rest, err := asn1.UnmarshalWithParams(elems[1].FullBytes, &algs, "set"); err != nil || len(rest) != 0 || len(algs) != 1 || !algs[0].Algorithm.Equal(oidSHA256) {
		return nil, malformed("digest algorithms must be SHA-256")
	}
	encap, err := parseEncap(elems[2].FullBytes)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	i := 3
	for ; i < len(elems)-1; i++ {
		e := elems[i]
		switch {
		case e.Class == asn1.ClassContextSpecific && e.Tag == 0 && e.IsCompound && certs == nil:
			certs, err = x509.ParseCertificates(e.Bytes)
			if err != nil {
				return nil, malformed("certificates do not decode")
			}
		case e.Class == asn1.ClassContextSpecific && e.Tag == 1:
			// CRLs: not used.
		default:
			return nil, malformed("unexpected element in signed data")
		}
	}
	last := elems[len(elems)-1]
	if last.Class != asn1.ClassUniversal || last.Tag != asn1.TagSet {
		return nil, malformed("signer infos missing")
	}
	var sis []signerInfo
	if rest, err := asn1.UnmarshalWithParams(last.FullBytes, &sis, "set"); err != nil || len(rest) != 0 || len(sis) != 1 {
		return nil, malformed("want exactly one signer info")
	}
	si := sis[0]
	if si.Version != 1 || !si.DigestAlgorithm.Algorithm.Equal(oidSHA256) || !si.SignatureAlgorithm.Algorithm.Equal(oidECDSAWithSHA256) {
		return nil, malformed("signer info version or algorithms not supported")
	}
	if si.SignedAttrs.Class != asn1.ClassContextSpecific || si.SignedAttrs.Tag != 0 || !si.SignedAttrs.IsCompound {
		return nil, malformed("signed attributes missing")
	}
	t := &parsedToken{signedAttrs: si.SignedAttrs.Bytes, signature: si.Signature}
	attrs := map[string][]byte{}
	for rest := si.SignedAttrs.Bytes; len(rest) > 0; {
		var a attribute
		rest, err = asn1.Unmarshal(rest, &a)
		if err != nil || a.Values.Tag != asn1.TagSet || a.Values.Class != asn1.ClassUniversal {
			return nil, malformed("signed attribute does not decode")
		}
		var vals []asn1.RawValue
		if r, err := asn1.UnmarshalWithParams(a.Values.FullBytes, &vals, "set"); err != nil || len(r) != 0 || len(vals) != 1 {
			return nil, malformed("signed attribute must have one value")
		}
		k := a.Type.String()
		if _, dup := attrs[k]; dup {
			return nil, malformed("duplicate signed attribute")
		}
		attrs[k] = vals[0].FullBytes
	}
	var ct asn1.ObjectIdentifier
	if v, ok := attrs[oidContentType.String()]; !ok {
		return nil, malformed("contentType attribute missing")
	} else if r, err := asn1.Unmarshal(v, &ct); err != nil || len(r) != 0 || !ct.Equal(oidTSTInfo) {
		return nil, fmt.Errorf("%w: contentType attribute is not TSTInfo", ErrSignature)
	}
	var md []byte
	if v, ok := attrs[oidMessageDigest.String()]; !ok {
		return nil, malformed("messageDigest attribute missing")
	} else if r, err := asn1.Unmarshal(v, &md); err != nil || len(r) != 0 {
		return nil, malformed("messageDigest attribute does not decode")
	}
	if sum := sha256.Sum256(encap.EContent); !bytes.Equal(sum[:], md) {
		return nil, fmt.Errorf("%w: messageDigest does not match the content", ErrSignature)
	}
	var scv2 signingCertificateV2
	if v, ok := attrs[oidSigningCertV2.String()]; !ok {
		return nil, malformed("signingCertificateV2 attribute missing")
	} else if r, err := asn1.Unmarshal(v, &scv2); err != nil || len(r) != 0 || len(scv2.Certs) == 0 {
		return nil, malformed("signingCertificateV2 attribute does not decode")
	}
	if alg := scv2.Certs[0].HashAlgorithm.Algorithm; alg != nil && !alg.Equal(oidSHA256) {
		return nil, malformed("signingCertificateV2 hash algorithm not supported")
	}
	t.essHash = scv2.Certs[0].CertHash
	if rest, err := asn1.Unmarshal(encap.EContent, &t.info); err != nil || len(rest) != 0 || t.info.Version != 1 || t.info.SerialNumber == nil {
		return nil, malformed("TSTInfo does not decode")
	}
	if len(t.info.TSA.FullBytes) != 0 && (t.info.TSA.Class != asn1.ClassContextSpecific || t.info.TSA.Tag != 0) {
		return nil, malformed("TSTInfo extensions not supported")
	}
	for _, c := range certs {
		if bytes.Equal(c.RawIssuer, si.SID.Issuer.FullBytes) && c.SerialNumber.Cmp(si.SID.Serial) == 0 {
			t.cert = c
			break
		}
	}
	return t, nil
}

// parseEncap decodes an EncapsulatedContentInfo strictly (encoding/asn1 does
// not check the length of an explicit tag against its content).
func parseEncap(der []byte) (encapContentInfo, error) {
	var e encapContentInfo
	var parts []asn1.RawValue
	if rest, err := asn1.Unmarshal(der, &parts); err != nil || len(rest) != 0 || len(parts) != 2 {
		return e, malformed("encapsulated content does not decode")
	}
	if rest, err := asn1.Unmarshal(parts[0].FullBytes, &e.EContentType); err != nil || len(rest) != 0 || !e.EContentType.Equal(oidTSTInfo) {
		return e, malformed("encapsulated content is not a TSTInfo")
	}
	w := parts[1]
	if w.Class != asn1.ClassContextSpecific || w.Tag != 0 || !w.IsCompound {
		return e, malformed("encapsulated content missing")
	}
	if rest, err := asn1.Unmarshal(w.Bytes, &e.EContent); err != nil || len(rest) != 0 {
		return e, malformed("encapsulated content is not an octet string")
	}
	return e, nil
}
