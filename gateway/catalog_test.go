package gateway

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// FuzzDescriptorSet feeds arbitrary published descriptor sets (they come
// from other organisations through the catalogue) to the resolver: it must
// return a service or an error, never panic.
func FuzzDescriptorSet(f *testing.F) {
	ts, _ := proto.Marshal(&descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{
		protodesc.ToFileDescriptorProto(timestamppb.File_google_protobuf_timestamp_proto)}})
	f.Add(ts, "google.protobuf.Timestamp")
	f.Add([]byte{0x0a, 0x02, 0x0a, 0x00}, "x.Y")
	f.Fuzz(func(t *testing.T, raw []byte, name string) {
		si := resolveService(raw, name)
		if (si.err == nil) != (si.svc != nil) {
			t.Fatalf("service %v with error %v", si.svc, si.err)
		}
	})
}
