// Package descset handles the serialized FileDescriptorSets that providers
// publish in the service catalogue: parsing them into a registry of files,
// checking that one defines a given gRPC service, and fetching one from a
// running backend over gRPC server reflection.
package descset

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// Parse decodes a FileDescriptorSet and links its files (every import must
// be in the set).
func Parse(raw []byte) (*protoregistry.Files, error) {
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(raw, &set); err != nil {
		return nil, fmt.Errorf("not a binary FileDescriptorSet: %w", err)
	}
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		return nil, fmt.Errorf("%w (include every import, e.g. buf build --as-file-descriptor-set -o FILE)", err)
	}
	return files, nil
}

// Service parses raw and returns the descriptor of the gRPC service named.
func Service(raw []byte, service string) (protoreflect.ServiceDescriptor, error) {
	files, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	d, err := files.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		return nil, fmt.Errorf("does not define service %s", service)
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a service", service)
	}
	return sd, nil
}

// maxFiles bounds what FromReflection follows.
const maxFiles = 1000

// Server reflection's methods: v1, and v1alpha, which older servers offer
// alone. Their messages are the same on the wire, so v1alpha is spoken with
// v1's message types.
const (
	reflectionV1      = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
	reflectionV1Alpha = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
)

// FromReflection asks a backend's gRPC server reflection (v1, or v1alpha
// if the backend does not implement v1) for the file defining service and,
// transitively, the files it imports, and returns them as a serialized
// FileDescriptorSet, imports first.
func FromReflection(ctx context.Context, conn grpc.ClientConnInterface, service string) ([]byte, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the reflection streams
	first := &reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: service}}
	var stream grpc.ClientStream
	var resp *reflectionpb.ServerReflectionResponse
	var err error
	for _, method := range []string{reflectionV1, reflectionV1Alpha} {
		stream, err = conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, method)
		if err == nil {
			resp, err = exchange(stream, first)
		}
		if status.Code(err) != codes.Unimplemented {
			break
		}
	}
	if status.Code(err) == codes.Unimplemented {
		return nil, fmt.Errorf("reflection: the backend serves no gRPC server reflection (v1 or v1alpha): %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("reflection: %w", err)
	}
	defer stream.CloseSend()
	files := func(resp *reflectionpb.ServerReflectionResponse) ([]*descriptorpb.FileDescriptorProto, error) {
		if e := resp.GetErrorResponse(); e != nil {
			return nil, fmt.Errorf("reflection: %s", e.GetErrorMessage())
		}
		var out []*descriptorpb.FileDescriptorProto
		for _, b := range resp.GetFileDescriptorResponse().GetFileDescriptorProto() {
			fd := &descriptorpb.FileDescriptorProto{}
			if err := proto.Unmarshal(b, fd); err != nil {
				return nil, fmt.Errorf("reflection: bad descriptor: %w", err)
			}
			out = append(out, fd)
		}
		return out, nil
	}
	ask := func(req *reflectionpb.ServerReflectionRequest) ([]*descriptorpb.FileDescriptorProto, error) {
		resp, err := exchange(stream, req)
		if err != nil {
			return nil, fmt.Errorf("reflection: %w", err)
		}
		return files(resp)
	}
	have := map[string]*descriptorpb.FileDescriptorProto{}
	var order []string
	var visit func(fds []*descriptorpb.FileDescriptorProto) error
	visit = func(fds []*descriptorpb.FileDescriptorProto) error {
		for _, fd := range fds {
			if have[fd.GetName()] != nil {
				continue
			}
			if len(have) >= maxFiles {
				return errors.New("reflection: too many files")
			}
			have[fd.GetName()] = fd
			for _, dep := range fd.GetDependency() {
				if have[dep] != nil {
					continue
				}
				more, err := ask(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileByFilename{FileByFilename: dep}})
				if err != nil {
					return err
				}
				if err := visit(more); err != nil {
					return err
				}
			}
			order = append(order, fd.GetName())
		}
		return nil
	}
	fds, err := files(resp)
	if err != nil {
		return nil, err
	}
	if err := visit(fds); err != nil {
		return nil, err
	}
	set := &descriptorpb.FileDescriptorSet{}
	for _, name := range order {
		set.File = append(set.File, have[name])
	}
	raw, err := proto.Marshal(set)
	if err != nil {
		return nil, err
	}
	if _, err := Service(raw, service); err != nil {
		return nil, fmt.Errorf("reflected descriptors: %w", err)
	}
	return raw, nil
}

// exchange sends req on a reflection stream and receives the answer. A
// stream the server has ended (say, Unimplemented) fails the send with
// io.EOF; the status is then what the receive returns.
func exchange(stream grpc.ClientStream, req *reflectionpb.ServerReflectionRequest) (*reflectionpb.ServerReflectionResponse, error) {
	if err := stream.SendMsg(req); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	resp := &reflectionpb.ServerReflectionResponse{}
	if err := stream.RecvMsg(resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// Of returns the serialized FileDescriptorSet of files and, transitively,
// everything they import, imports first: what a provider publishes for
// services compiled into a Go program. It panics only if a descriptor
// cannot be encoded, which compiled descriptors always can.
func Of(files ...protoreflect.FileDescriptor) []byte {
	set := &descriptorpb.FileDescriptorSet{}
	seen := map[string]bool{}
	var add func(protoreflect.FileDescriptor)
	add = func(f protoreflect.FileDescriptor) {
		if seen[f.Path()] {
			return
		}
		seen[f.Path()] = true
		imps := f.Imports()
		for i := range imps.Len() {
			add(imps.Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(f))
	}
	for _, f := range files {
		add(f)
	}
	raw, err := proto.Marshal(set)
	if err != nil {
		panic(fmt.Sprintf("descset: encode descriptors: %v", err))
	}
	return raw
}
