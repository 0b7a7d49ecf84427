package meta

import (
	"context"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	v1reflectiongrpc "google.golang.org/grpc/reflection/grpc_reflection_v1"
	v1alphareflectiongrpc "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	metav1 "github.com/sildmesh/sild/gen/sild/meta/v1"
	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/internal/descset"
	"github.com/sildmesh/sild/node/topology"
)

// catalogue is the reflection view of one target (or of all, target ""),
// built from one configuration version.
type catalogue struct {
	files    *protoregistry.Files
	types    *dynamicpb.Types
	services map[string]grpc.ServiceInfo
}

func (c *catalogue) GetServiceInfo() map[string]grpc.ServiceInfo { return c.services }

// reflector serves server reflection per stream from the catalogue.
type reflector struct {
	top   func() *topology.Topology
	mu    sync.Mutex
	cache map[cacheKey]*catalogue
}

type cacheKey struct {
	version uint64
	target  string
}

func registerReflection(s grpc.ServiceRegistrar, top func() *topology.Topology) {
	r := &reflector{top: top, cache: map[cacheKey]*catalogue{}}
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
	return reflection.ServerOptions{Services: c, DescriptorResolver: c.files, ExtensionResolver: extensions{c.types}}
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
	c := build(top, target)
	if len(r.cache) > 64 {
		clear(r.cache)
	}
	r.cache[key] = c
	return c
}

// build collects the files of the target's published services (every
// service when target is ""), plus the MetaService's own. A file another
// provider already registered under the same name is used as is.
func build(top *topology.Topology, target string) *catalogue {
	c := &catalogue{files: new(protoregistry.Files), services: map[string]grpc.ServiceInfo{}}
	add := func(fd protoreflect.FileDescriptor) {
		if _, err := c.files.FindFileByPath(fd.Path()); err == nil {
			return
		}
		for i := 0; i < fd.Imports().Len(); i++ {
			if imp := fd.Imports().Get(i).FileDescriptor; imp != nil && !imp.IsPlaceholder() {
				if _, err := c.files.FindFileByPath(imp.Path()); err != nil {
					_ = c.files.RegisterFile(imp)
				}
			}
		}
		_ = c.files.RegisterFile(fd)
	}
	add(metav1.File_sild_meta_v1_meta_proto)
	c.services[metav1.MetaService_ServiceDesc.ServiceName] = grpc.ServiceInfo{}
	if top != nil {
		var sub ident.Subsystem
		if target != "" {
			var err error
			if sub, err = ident.ParseSubsystem(target); err != nil {
				top = nil
			}
		}
		if top != nil {
			for _, e := range allServices(top) {
				svc, err := ident.ServiceFromProto(e.GetService())
				if err != nil || !e.GetEnabled() || (target != "" && svc.Subsystem != sub) {
					continue
				}
				files, err := descset.Parse(e.GetFileDescriptorSet())
				if err != nil {
					continue
				}
				d, err := files.FindDescriptorByName(protoreflect.FullName(svc.Name))
				if err != nil {
					continue
				}
				addWithDeps(add, d.ParentFile(), files)
				c.services[svc.Name] = grpc.ServiceInfo{}
			}
		}
	}
	c.types = dynamicpb.NewTypes(c.files)
	return c
}

// addWithDeps registers fd after its imports (depth first).
func addWithDeps(add func(protoreflect.FileDescriptor), fd protoreflect.FileDescriptor, files *protoregistry.Files) {
	for i := 0; i < fd.Imports().Len(); i++ {
		if dep, err := files.FindFileByPath(fd.Imports().Get(i).Path()); err == nil {
			addWithDeps(add, dep, files)
		}
	}
	add(fd)
}

// extensions resolves extensions by number; ranging over a message's
// extensions reports none (published services rarely use extensions, and
// reflection clients only need them for extendable messages).
type extensions struct{ *dynamicpb.Types }

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

var _ protodesc.Resolver = (*protoregistry.Files)(nil)
