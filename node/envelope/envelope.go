// Package envelope holds what a sild node wraps around a forwarded call:
// the consumer request headers and their strict validation, the digests each
// side signs (unary digest and stream hash chain), and the replay window for
// message ids.
package envelope

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/rpcerr"
)

// Request headers read from member systems.
const (
	HeaderClient    = "sild-client"
	HeaderTarget    = "sild-target"
	HeaderMessageID = "sild-message-id"
	HeaderUserID    = "sild-user-id"
	HeaderPurpose   = "sild-purpose"
)

// HeaderRequestTime is the time the consumer node took the call (RFC 3339,
// UTC, milliseconds), set by that node whatever a member system sent. Both
// chains bind it, so a provider can refuse a request older than the ids it
// remembers (Fresh).
const HeaderRequestTime = "sild-request-time"

// MaxClockSkew is how far apart the clocks of two nodes may be: a request
// from further in the future than this is not fresh.
const MaxClockSkew = time.Minute

// ComponentConsumer is the rpcerr component of consumer-side refusals.
const ComponentConsumer = "node.consumer"

// maxFieldLen bounds message ids, user ids and purposes.
const maxFieldLen = 256

// Request is a validated consumer call.
type Request struct {
	Client, Target  ident.Subsystem
	MessageID       string
	UserID, Purpose string
	Service, Method string // from the :path, validated by ident.ParseFullMethod
	// Time is when the consumer node took the call (HeaderRequestTime);
	// zero if the request carries none.
	Time time.Time
}

// StampTime sets r.Time to t as HeaderRequestTime carries it.
func (r *Request) StampTime(t time.Time) { r.Time = t.UTC().Truncate(time.Millisecond) }

// TimeHeader is r.Time as HeaderRequestTime carries it ("" if zero).
func (r Request) TimeHeader() string {
	if r.Time.IsZero() {
		return ""
	}
	return r.Time.UTC().Format(time.RFC3339Nano)
}

// Fresh reports whether a request taken at t may be accepted at now by a
// provider that remembers message ids for window: not from further ahead
// than the clocks' skew, and young enough that its id, if it was seen
// before, is still remembered.
func Fresh(t, now time.Time, window time.Duration) bool {
	skew := min(MaxClockSkew, window/4)
	return !t.After(now.Add(skew)) && now.Sub(t) <= window-skew
}

// FullMethod is the canonical gRPC path of the call.
func (r Request) FullMethod() string { return "/" + r.Service + "/" + r.Method }

// NewMessageID returns a random 128-bit message id in hex.
func NewMessageID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func invalid(msg string) error {
	return rpcerr.New(codes.InvalidArgument, rpcerr.ReasonInvalidArgument, ComponentConsumer, msg)
}

// single returns the one value of key, refusing repeated headers.
func single(md metadata.MD, key string) (string, bool, error) {
	v := md.Get(key)
	switch len(v) {
	case 0:
		return "", false, nil
	case 1:
		return v[0], true, nil
	}
	return "", false, invalid("header " + key + " given more than once")
}

// ParseRequest validates the consumer headers and the method path of one
// call. A missing message id is generated.
func ParseRequest(md metadata.MD, fullMethod string) (Request, error) {
	var r Request
	svc, m, err := ident.ParseFullMethod(fullMethod)
	if err != nil {
		return r, invalid("invalid method path")
	}
	r.Service, r.Method = svc, m
	c, ok, err := single(md, HeaderClient)
	if err != nil {
		return r, err
	}
	if !ok {
		return r, rpcerr.New(codes.Unauthenticated, rpcerr.ReasonUnknownClient, ComponentConsumer, "missing "+HeaderClient)
	}
	if r.Client, err = ident.ParseSubsystem(c); err != nil {
		return r, rpcerr.New(codes.InvalidArgument, rpcerr.ReasonInvalidIdentifier, ComponentConsumer, "invalid "+HeaderClient)
	}
	t, ok, err := single(md, HeaderTarget)
	if err != nil {
		return r, err
	}
	if !ok {
		return r, invalid("missing " + HeaderTarget)
	}
	if r.Target, err = ident.ParseSubsystem(t); err != nil {
		return r, rpcerr.New(codes.InvalidArgument, rpcerr.ReasonInvalidIdentifier, ComponentConsumer, "invalid "+HeaderTarget)
	}
	for _, f := range []struct {
		key string
		dst *string
	}{{HeaderMessageID, &r.MessageID}, {HeaderUserID, &r.UserID}, {HeaderPurpose, &r.Purpose}} {
		v, _, err := single(md, f.key)
		if err != nil {
			return r, err
		}
		if len(v) > maxFieldLen || !printable(v) {
			return r, invalid("invalid " + f.key)
		}
		*f.dst = v
	}
	if r.MessageID == "" {
		r.MessageID = NewMessageID()
	}
	v, _, err := single(md, HeaderRequestTime)
	if err != nil {
		return r, err
	}
	if v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil || len(v) > 40 {
			return r, invalid("invalid " + HeaderRequestTime + ": want RFC 3339")
		}
		r.StampTime(t)
	}
	return r, nil
}

// ValidMessageID reports whether id is a message id a request may carry
// (1 to 256 printable ASCII characters), for places that take one from
// elsewhere, such as an evidence export.
func ValidMessageID(id string) bool { return id != "" && len(id) <= maxFieldLen && printable(id) }

// ValidUserID reports whether id is a user id a request may carry (the same
// rule as message ids), for queries by user.
func ValidUserID(id string) bool { return ValidMessageID(id) }

// printable reports whether s is printable ASCII without control characters.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// Direction tells which way a digested message travels.
type Direction byte

// Directions.
const (
	DirRequest  Direction = 'Q'
	DirResponse Direction = 'A'
)

// Chain is the running hash chain over the messages of one direction of a
// call: h0 = SHA-256(binding), h_i = SHA-256(h_{i-1} || len || frame).
// A unary message is a chain of length one. Chain is not safe for
// concurrent use.
type Chain struct {
	sum [32]byte
	n   uint64
	h   hash.Hash
}

// NewChain starts a chain bound to the call: direction, message id, method,
// client, target, user id, purpose and request time, each length-prefixed so fields
// cannot run together. Both signatures thus cover who asked on whose behalf
// and why, as both ledgers record it.
func NewChain(dir Direction, r Request) *Chain {
	h := sha256.New()
	h.Write([]byte("sild-chain-v3"))
	h.Write([]byte{byte(dir)})
	for _, f := range []string{r.MessageID, r.FullMethod(), r.Client.String(), r.Target.String(), r.UserID, r.Purpose, r.TimeHeader()} {
		writeLen(h, uint64(len(f)))
		h.Write([]byte(f))
	}
	c := &Chain{h: h}
	h.Sum(c.sum[:0])
	return c
}

func writeLen(h hash.Hash, n uint64) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], n)
	h.Write(b[:])
}

// Add folds one message into the chain.
func (c *Chain) Add(frame []byte) {
	c.h.Reset()
	c.h.Write(c.sum[:])
	writeLen(c.h, uint64(len(frame)))
	c.h.Write(frame)
	c.h.Sum(c.sum[:0])
	c.n++
}

// Sum is the current chain head.
func (c *Chain) Sum() [32]byte { return c.sum }

// Count is how many messages were added.
func (c *Chain) Count() uint64 { return c.n }
