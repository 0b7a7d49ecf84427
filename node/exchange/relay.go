package exchange

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"

	"github.com/sildmesh/sild/node/forward"
)

// relayHooks are what one side does to the frames of a call. The relay is
// written here rather than on forward.Proxy because the exchange protocol
// drops and adds frames (the seal) and half-closes on a frame.
type relayHooks struct {
	// up handles a frame from the caller in place. It reports whether to
	// send it upstream and whether to half-close upstream afterwards. A frame
	// not sent must be freed by up.
	up func(f *forward.Frame) (send, closeSend bool, err error)
	// upEOF runs when the caller half-closes while upstream is still open;
	// it may return a last frame to send before the half-close.
	upEOF func() (*forward.Frame, error)
	// down handles a frame from upstream in place and reports whether to
	// send it on to the caller. A frame not sent must be freed by down.
	down func(f *forward.Frame) (send bool, err error)
	// header, if set, edits upstream headers before they are sent on.
	header func(metadata.MD) metadata.MD
}

// relayResult is the outcome of a relayed call.
type relayResult struct {
	err     error       // final error: upstream status, or local if local
	local   bool        // err arose on our side (hook, caller stream)
	trailer metadata.MD // upstream trailers (nil if local)
}

// localError is a refusal or failure on our side, as opposed to a status
// that came from upstream.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }

var errStreamDone = errors.New("stream done")

// relay copies one call between the caller ss and upstream cs (opened on a
// context that cancel ends) until the upstream status or a local failure.
// The response direction runs on the calling goroutine, the request
// direction on one more.
func relay(ss grpc.ServerStream, cs grpc.ClientStream, cancel context.CancelFunc, h relayHooks) relayResult {
	upErr := make(chan error, 1)
	go func() {
		err := pumpUp(ss, cs, h)
		upErr <- err // before cancel: the check below must see why
		if isLocal(err) {
			cancel()
		}
	}()
	down := pumpDown(cs, ss, h)
	select {
	case e := <-upErr:
		var le *localError
		if errors.As(e, &le) {
			return relayResult{err: le.err, local: true}
		}
	default:
		// The caller's RecvMsg returns once the handler returns; do not
		// wait for the request direction.
	}
	var le *localError
	if errors.As(down, &le) {
		cancel()
		return relayResult{err: le.err, local: true}
	}
	return relayResult{err: down, trailer: cs.Trailer()}
}

func isLocal(err error) bool {
	var le *localError
	return errors.As(err, &le)
}

func pumpUp(ss grpc.ServerStream, cs grpc.ClientStream, h relayHooks) error {
	closed := false
	for {
		f := &forward.Frame{}
		if err := ss.RecvMsg(f); err != nil {
			if err != io.EOF {
				return &localError{err}
			}
			if closed {
				return nil
			}
			last, err := h.upEOF()
			if err != nil {
				return &localError{err}
			}
			if last != nil {
				if err := cs.SendMsg(last); err != nil {
					last.Free()
					return errStreamDone
				}
			}
			if err := cs.CloseSend(); err != nil {
				return errStreamDone
			}
			return nil
		}
		if closed {
			f.Free()
			return &localError{errAfterSeal}
		}
		send, closeSend, err := h.up(f)
		if err != nil {
			if send {
				f.Free()
			}
			return &localError{err}
		}
		if send {
			if err := cs.SendMsg(f); err != nil {
				f.Free()
				// The real reason surfaces on the response side.
				return errStreamDone
			}
		}
		if closeSend {
			closed = true
			if err := cs.CloseSend(); err != nil {
				return errStreamDone
			}
		}
	}
}

func pumpDown(cs grpc.ClientStream, ss grpc.ServerStream, h relayHooks) error {
	md, err := cs.Header()
	if err != nil {
		return err
	}
	if h.header != nil {
		md = h.header(md)
	}
	if len(md) > 0 {
		if err := ss.SendHeader(md); err != nil {
			return &localError{err}
		}
	}
	for {
		f := &forward.Frame{}
		if err := cs.RecvMsg(f); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		send, err := h.down(f)
		if err != nil {
			if send {
				f.Free()
			}
			return &localError{err}
		}
		if !send {
			continue
		}
		if err := ss.SendMsg(f); err != nil {
			f.Free()
			return &localError{err}
		}
	}
}

// frameBytes returns the bytes of f, without a copy when they are in one
// buffer. The result is valid while f holds its data.
func frameBytes(f *forward.Frame) []byte {
	if len(f.Data) == 1 {
		return f.Data[0].ReadOnlyData()
	}
	b := f.Data.Materialize()
	f.Data.Free()
	f.Data = mem.BufferSlice{mem.SliceBuffer(b)}
	return b
}

// taggedFrame is a frame of tag followed by b (copied).
func taggedFrame(tag byte, b []byte) *forward.Frame {
	return &forward.Frame{Data: mem.BufferSlice{mem.SliceBuffer(append([]byte{tag}, b...))}}
}

// prepend puts tag in front of f's bytes without copying them.
func prepend(f *forward.Frame, tag byte) {
	f.Data = append(mem.BufferSlice{mem.SliceBuffer{tag}}, f.Data...)
}

// stripTag removes and returns the first byte of f and the remaining bytes
// (valid while f holds its data); ok is false for an empty frame.
func stripTag(f *forward.Frame) (tag byte, rest []byte, ok bool) {
	b := frameBytes(f) // now one buffer
	if len(b) == 0 {
		return 0, nil, false
	}
	left, right := mem.SplitUnsafe(f.Data[0], 1)
	left.Free()
	f.Data = mem.BufferSlice{right}
	return b[0], b[1:], true
}
