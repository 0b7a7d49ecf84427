package exchange

import (
	"bytes"
	"maps"
	"slices"
	"sync"

	"google.golang.org/grpc/metadata"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
)

// Capture is what of an exchange's content a side passes to its Recorder
// with the record, for the ledger to keep (the node's body setting of the
// subsystem: off, metadata, full).
type Capture int

const (
	// CaptureNone passes no body.
	CaptureNone Capture = iota
	// CaptureHeaders passes the request headers, response headers and
	// trailers.
	CaptureHeaders
	// CaptureMessages passes the headers and every message, up to
	// Config.MaxCapture bytes of messages per exchange.
	CaptureMessages
)

// DefaultMaxCapture bounds the message bytes kept of one exchange.
const DefaultMaxCapture = 16 << 20

// capture collects the body of one exchange. A nil *capture collects
// nothing, so the hot path of a subsystem without bodies costs one nil
// check. Requests and responses arrive on two goroutines.
type capture struct {
	messages bool
	left     int // message bytes that may still be kept

	mu   sync.Mutex
	body *ledgerv1.Body
}

// newCapture starts the body of an exchange whose request headers are md,
// for mode (nil for CaptureNone).
func newCapture(mode Capture, max int, md metadata.MD) *capture {
	if mode != CaptureHeaders && mode != CaptureMessages {
		return nil
	}
	return &capture{messages: mode == CaptureMessages, left: max,
		body: &ledgerv1.Body{RequestHeaders: headers(md)}}
}

// request keeps a copy of a request message.
func (c *capture) request(b []byte) {
	if c != nil && c.messages {
		c.message(&c.body.RequestMessages, b)
	}
}

// response keeps a copy of a response message.
func (c *capture) response(b []byte) {
	if c != nil && c.messages {
		c.message(&c.body.ResponseMessages, b)
	}
}

func (c *capture) message(to *[][]byte, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.body.Truncated || len(b) > c.left {
		c.body.Truncated = true // and nothing after, so what is kept is a prefix
		return
	}
	c.left -= len(b)
	*to = append(*to, bytes.Clone(b))
}

// responseHeaders keeps the response headers md and returns them
// unchanged (a relayHooks.header).
func (c *capture) responseHeaders(md metadata.MD) metadata.MD {
	if c == nil {
		return md
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.body.ResponseHeaders = headers(md)
	return md
}

// result is the body to record with the response trailers md, or nil.
func (c *capture) result(trailers metadata.MD) *ledgerv1.Body {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.body.ResponseTrailers = headers(trailers)
	return c.body
}

// headers lists md's entries in key order (each value its own entry, in
// the order received).
func headers(md metadata.MD) []*ledgerv1.Header {
	var out []*ledgerv1.Header
	for _, k := range slices.Sorted(maps.Keys(md)) {
		for _, v := range md[k] {
			out = append(out, &ledgerv1.Header{Key: k, Value: []byte(v)})
		}
	}
	return out
}
