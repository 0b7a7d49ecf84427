package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/sildmesh/sild/ident"
	"github.com/sildmesh/sild/node/topology"
)

// errUnknownService: the catalogue does not list the service.
var errUnknownService = errors.New("service not in the catalogue")

// serviceInfo is a published service, its descriptors resolved.
type serviceInfo struct {
	raw     []byte // the catalogue's descriptor set, to notice changes
	enabled bool
	svc     protoreflect.ServiceDescriptor
	types   *dynamicpb.Types
	err     error // the descriptor set does not define the service
}

// catalog caches the resolved descriptors of the services of the current
// topology. A new topology starts a new cache; entries whose descriptor set
// did not change are carried over, so only a changed catalogue costs a parse.
type catalog struct {
	mu   sync.Mutex
	top  *topology.Topology
	m    map[ident.Service]*serviceInfo
	prev map[ident.Service]*serviceInfo
}

// lookup returns the service's descriptors in top.
func (c *catalog) lookup(top *topology.Topology, id ident.Service) (*serviceInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.top != top {
		if c.m != nil {
			c.prev = c.m
		}
		c.top, c.m = top, map[ident.Service]*serviceInfo{}
	}
	if si := c.m[id]; si != nil {
		return si, si.err
	}
	e := top.Service(id)
	if e == nil {
		return nil, errUnknownService
	}
	raw := e.GetFileDescriptorSet()
	si := c.prev[id]
	if si == nil || !bytes.Equal(si.raw, raw) {
		si = resolveService(raw, id.Name)
	}
	si = &serviceInfo{raw: si.raw, enabled: e.GetEnabled(), svc: si.svc, types: si.types, err: si.err}
	c.m[id] = si
	return si, si.err
}

// resolveService parses a published descriptor set and finds service name
// in it. Imports the set lacks are taken from the well-known types linked
// into this binary (google/protobuf/*.proto).
func resolveService(raw []byte, name string) *serviceInfo {
	si := &serviceInfo{raw: raw}
	files, err := parseDescriptorSet(raw)
	if err != nil {
		si.err = err
		return si
	}
	d, err := files.FindDescriptorByName(protoreflect.FullName(name))
	if err != nil {
		si.err = fmt.Errorf("descriptor set does not define service %s", name)
		return si
	}
	svc, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		si.err = fmt.Errorf("%s is not a service", name)
		return si
	}
	si.svc, si.types = svc, dynamicpb.NewTypes(files)
	return si
}

// parseDescriptorSet builds a registry from a serialized FileDescriptorSet,
// adding the well-known files it imports but does not carry.
func parseDescriptorSet(raw []byte) (*protoregistry.Files, error) {
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(raw, &set); err != nil {
		return nil, fmt.Errorf("descriptor set: %w", err)
	}
	have := map[string]bool{}
	for _, f := range set.GetFile() {
		have[f.GetName()] = true
	}
	for i := 0; i < len(set.File); i++ {
		for _, dep := range set.File[i].GetDependency() {
			if have[dep] {
				continue
			}
			fd, err := protoregistry.GlobalFiles.FindFileByPath(dep)
			if err != nil {
				return nil, fmt.Errorf("descriptor set: import %s missing", dep)
			}
			have[dep] = true
			set.File = append(set.File, protodesc.ToFileDescriptorProto(fd))
		}
	}
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		return nil, fmt.Errorf("descriptor set: %w", err)
	}
	return files, nil
}

// protoreflectName converts a method name from a URL.
func protoreflectName(s string) protoreflect.Name { return protoreflect.Name(s) }
