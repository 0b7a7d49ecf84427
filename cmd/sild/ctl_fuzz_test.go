package main

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/internal/descset"
)

// FuzzCheckDescriptorSet feeds arbitrary bytes to the check `sild ctl
// service publish` runs on an operator's descriptor file: it must refuse or
// accept, never panic, and accept only sets that define the service.
func FuzzCheckDescriptorSet(f *testing.F) {
	admin := descset.Of(registryv1.File_sild_registry_v1_admin_proto)
	f.Add(admin, "sild.registry.v1.AdminService")
	f.Add(admin, "sild.registry.v1.Member")
	f.Add(descset.Of(timestamppb.File_google_protobuf_timestamp_proto), "google.protobuf.Timestamp")
	f.Add([]byte{}, "x.Y")
	f.Add([]byte("\x0a\x02\x0a\x00"), "a.B")
	f.Fuzz(func(t *testing.T, data []byte, service string) {
		if checkDescriptorSet(data, service) != nil {
			return
		}
		var set descriptorpb.FileDescriptorSet
		if err := proto.Unmarshal(data, &set); err != nil {
			t.Fatalf("accepted undecodable bytes: %v", err)
		}
		files, err := protodesc.NewFiles(&set)
		if err != nil {
			t.Fatalf("accepted unlinkable files: %v", err)
		}
		if _, err := files.FindDescriptorByName(protoreflect.FullName(service)); err != nil {
			t.Fatalf("accepted a set without %q", service)
		}
	})
}
