package forward

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// Frame is one gRPC message, kept as the raw serialized bytes.
type Frame struct {
	// Data holds the message bytes. A Frame received by the codec owns one
	// reference; sending it through the codec hands that reference to gRPC.
	Data mem.BufferSlice
}

// Len is the message size in bytes.
func (f *Frame) Len() int { return f.Data.Len() }

// Bytes returns a copy of the message bytes.
func (f *Frame) Bytes() []byte { return f.Data.Materialize() }

// Free releases the frame's reference; used when a frame is dropped.
func (f *Frame) Free() {
	f.Data.Free()
	f.Data = nil
}

// Codec is an encoding.CodecV2 named "proto" that passes frames through
// without decoding them. It is meant for grpc.ForceServerCodecV2 and
// grpc.ForceCodecV2 only; it is never registered globally. Messages that
// are not frames (services a proxying server also serves itself, such as
// reflection) go through the standard proto codec.
type Codec struct{}

var protoCodec = encoding.GetCodecV2(proto.Name)

// Name reports "proto" so peers see the ordinary content-type.
func (Codec) Name() string { return "proto" }

// Marshal hands the frame's bytes to gRPC, which frees them once sent.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*Frame)
	if !ok {
		return protoCodec.Marshal(v)
	}
	d := f.Data
	f.Data = nil
	return d, nil
}

// Unmarshal keeps a reference to the received bytes in the frame.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*Frame)
	if !ok {
		return protoCodec.Unmarshal(data, v)
	}
	data.Ref()
	f.Data = data
	return nil
}
