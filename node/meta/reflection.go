package meta

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"sync"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	v1reflectiongrpc "google.golang.org/grpc/reflection/grpc_reflection_v1"
	v1alphareflectiongrpc "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	metav1 "github.com/sildmesh/sild/gen/sild/meta/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/descset"
	"github.com/sildmesh/sild/node/topology"
)

// catalogue is the reflection view of one target (or of all, target ""),
// built from one configuration version.
type catalogue struct {
	files    *resolver
	types    extensions // one per set of files
	services map[string]grpc.ServiceInfo
}

func (c *catalogue) GetServiceInfo() map[string]grpc.ServiceInfo { return c.services }

// resolver looks names and paths up in several sets of files in turn: the
// node's own first, then each published service's, in catalogue order. Each
// set links on its own, so two services whose files share a path (say
// service.proto) are both described, each from its own file, rather than
// the later one being dropped. A service, or a method of one, is looked up
// first in the set published with that service.
type resolver struct {
	sets    []*protoregistry.Files
	service map[protoreflect.FullName]*protoregistry.Files
}

func (r *resolver) FindFileByPath(path string) (protoreflect.FileDescriptor, error) {
	for _, f := range r.sets {
		if fd, err := f.FindFileByPath(path); err == nil {
			return fd, nil
		}
	}
	return nil, protoregistry.NotFound
}

func (r *resolver) FindDescriptorByName(name protoreflect.FullName) (protoreflect.Descriptor, error) {
	for _, n := range []protoreflect.FullName{name, name.Parent()} {
		if f := r.service[n]; f != nil {
			if d, err := f.FindDescriptorByName(name); err == nil {
				return d, nil
			}
		}
	}
	for _, f := range r.sets {
		if d, err := f.FindDescriptorByName(name); err == nil {
			return d, nil
		}
	}
	return nil, protoregistry.NotFound
}

// reflector serves server reflection per stream from the catalogue.
type reflector struct {
	top   func() *topology.Topology
	log   *slog.Logger
	mu    sync.Mutex
	cache map[cacheKey]*catalogue
}

type cacheKey struct {
	version uint64
	target  string
}

func registerReflection(s grpc.ServiceRegistrar, top func() *topology.Topology, log *slog.Logger) {
	r := &reflector{top: top, log: log, cache: map[cacheKey]*catalogue{}}
	v1reflectiongrpc.RegisterServerReflectionServer(s, v1Reflection{r})
	v1alphareflectiongrpc.RegisterServerReflectionServer(s, v1alphaReflection{r})
}

// options builds the reflection options for a stream's sild-target.
func (r *reflector) options(ctx context.Context) reflection.ServerOptions {
	var target string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("sild-target"); len(v) == 1 {
			target = v[0]
		}
	}
	c := r.catalogue(target)
	return reflection.ServerOptions{Services: c, DescriptorResolver: c.files, ExtensionResolver: c.types}
}

func (r *reflector) catalogue(target string) *catalogue {
	top := r.top()
	var version uint64
	if top != nil {
		version = top.Version
	}
	key := cacheKey{version, target}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.cache[key]; c != nil {
		return c
	}
	c := build(top, target, r.log)
	if len(r.cache) > 64 {
		clear(r.cache)
	}
	r.cache[key] = c
	return c
}

// ownFiles are the node's own files: the MetaService's, and the error
// details its refusals carry (google.rpc.ErrorInfo), so that reflection
// clients can read them.
var ownFiles = func() *protoregistry.Files {
	files := new(protoregistry.Files)
	for _, fd := range []protoreflect.FileDescriptor{metav1.File_sild_meta_v1_meta_proto, errdetails.File_google_rpc_error_details_proto} {
		if err := registerWithImports(files, fd); err != nil {
			panic(fmt.Sprintf("meta: own descriptors: %v", err))
		}
	}
	return files
}()

// registerWithImports registers fd after its imports (depth first), each
// file once.
func registerWithImports(files *protoregistry.Files, fd protoreflect.FileDescriptor) error {
	if fd.IsPlaceholder() {
		return nil
	}
	if _, err := files.FindFileByPath(fd.Path()); err == nil {
		return nil
	}
	for i := 0; i < fd.Imports().Len(); i++ {
		if err := registerWithImports(files, fd.Imports().Get(i).FileDescriptor); err != nil {
			return err
		}
	}
	return files.RegisterFile(fd)
}

// build collects, for each of the target's published services (every
// service when target is ""), the file defining it and its imports, plus
// the node's own files.
//
// Reflection clients (grpcurl among them) cache files by path, per stream
// or per session, so a file that defines other things under a path that an
// earlier service's file already took would be taken for that one. Such a
// file is served under a path of its own, "sild/catalogue/<service>/<path>"
// (and the files importing it say so), and the renaming is logged. Files
// that differ only in file options or source info, as the well-known types
// compiled by different protoc versions do, count as the same file.
func build(top *topology.Topology, target string, log *slog.Logger) *catalogue {
	c := &catalogue{
		files:    &resolver{sets: []*protoregistry.Files{ownFiles}, service: map[protoreflect.FullName]*protoregistry.Files{}},
		types:    extensions{dynamicpb.NewTypes(ownFiles)},
		services: map[string]grpc.ServiceInfo{metav1.MetaService_ServiceDesc.ServiceName: {}},
	}
	if top == nil {
		return c
	}
	var sub ident.Subsystem
	if target != "" {
		var err error
		if sub, err = ident.ParseSubsystem(target); err != nil {
			return c
		}
	}
	type origin struct {
		service string // who brought the file first
		digest  [sha256.Size]byte
	}
	paths := map[string]origin{}
	ownFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		paths[fd.Path()] = origin{"the node", fileDigest(protodesc.ToFileDescriptorProto(fd))}
		return true
	})
	for _, e := range allServices(top) {
		svc, err := ident.ServiceFromProto(e.GetService())
		if err != nil || !e.GetEnabled() || (target != "" && svc.Subsystem != sub) {
			continue
		}
		if _, dup := c.services[svc.Name]; dup {
			continue // the same service of another subsystem: the first is described
		}
		sd, err := descset.Service(e.GetFileDescriptorSet(), svc.Name)
		if err != nil {
			continue
		}
		set := &descriptorpb.FileDescriptorSet{}
		renamed := map[string]string{}
		for _, fd := range withImports(sd.ParentFile()) { // imports first
			fdp := protodesc.ToFileDescriptorProto(fd)
			for i, dep := range fdp.GetDependency() {
				if to, ok := renamed[dep]; ok {
					fdp.Dependency[i] = to
				}
			}
			o := origin{svc.String(), fileDigest(fdp)}
			if first, ok := paths[fd.Path()]; !ok {
				paths[fd.Path()] = o
			} else if first.digest != o.digest {
				to := "sild/catalogue/" + svc.String() + "/" + fd.Path()
				renamed[fd.Path()] = to
				fdp.Name = proto.String(to)
				log.Info("reflection: a published service's file has the path of a different file published before it; reflection serves it under another path",
					slog.String("path", fd.Path()), slog.String("served_as", to), slog.String("service", o.service), slog.String("first", first.service),
					slog.Uint64("config_version", top.Version), slog.String("sild_target", target))
			}
			set.File = append(set.File, fdp)
		}
		files, err := protodesc.NewFiles(set)
		if err != nil {
			log.Warn("reflection: a published service's files do not link", slog.String("service", svc.String()), slog.Any("err", err))
			continue
		}
		c.files.sets = append(c.files.sets, files)
		c.files.service[sd.FullName()] = files
		c.types = append(c.types, dynamicpb.NewTypes(files))
		c.services[svc.Name] = grpc.ServiceInfo{}
	}
	return c
}

// withImports returns fd and, transitively, the files it imports, each
// once, imports first.
func withImports(fd protoreflect.FileDescriptor) []protoreflect.FileDescriptor {
	var out []protoreflect.FileDescriptor
	seen := map[string]bool{}
	var add func(protoreflect.FileDescriptor)
	add = func(f protoreflect.FileDescriptor) {
		if f.IsPlaceholder() || seen[f.Path()] {
			return
		}
		seen[f.Path()] = true
		for i := 0; i < f.Imports().Len(); i++ {
			add(f.Imports().Get(i).FileDescriptor)
		}
		out = append(out, f)
	}
	add(fd)
	return out
}

// fileDigest identifies what a file defines: its encoding without file
// options and source info.
func fileDigest(fdp *descriptorpb.FileDescriptorProto) [sha256.Size]byte {
	fdp = proto.CloneOf(fdp)
	fdp.Options, fdp.SourceCodeInfo = nil, nil
	raw, _ := proto.MarshalOptions{Deterministic: true}.Marshal(fdp)
	return sha256.Sum256(raw)
}

// extensions resolves extensions by name or number in the catalogue's
// sets of files, in turn; ranging over a message's extensions reports none
// (published services rarely use extensions, and reflection clients only
// need them for extendable messages).
type extensions []*dynamicpb.Types

func (x extensions) FindExtensionByName(field protoreflect.FullName) (protoreflect.ExtensionType, error) {
	for _, t := range x {
		if xt, err := t.FindExtensionByName(field); err == nil {
			return xt, nil
		}
	}
	return nil, protoregistry.NotFound
}

func (x extensions) FindExtensionByNumber(message protoreflect.FullName, field protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	for _, t := range x {
		if xt, err := t.FindExtensionByNumber(message, field); err == nil {
			return xt, nil
		}
	}
	return nil, protoregistry.NotFound
}

func (extensions) RangeExtensionsByMessage(protoreflect.FullName, func(protoreflect.ExtensionType) bool) {
}

type v1Reflection struct{ r *reflector }

func (v v1Reflection) ServerReflectionInfo(stream v1reflectiongrpc.ServerReflection_ServerReflectionInfoServer) error {
	return reflection.NewServerV1(v.r.options(stream.Context())).ServerReflectionInfo(stream)
}

type v1alphaReflection struct{ r *reflector }

func (v v1alphaReflection) ServerReflectionInfo(stream v1alphareflectiongrpc.ServerReflection_ServerReflectionInfoServer) error {
	return reflection.NewServer(v.r.options(stream.Context())).ServerReflectionInfo(stream)
}

var _ protodesc.Resolver = (*resolver)(nil)
