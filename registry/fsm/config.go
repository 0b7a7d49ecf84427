package fsm

import (
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/internal/descset"
	"github.com/sildmesh/sild/internal/rpcerr"
)

// ReasonBadDescriptors refuses a published service whose descriptor set does
// not parse or does not define the service.
const ReasonBadDescriptors = "BAD_DESCRIPTORS"

// CheckDescriptors checks that fds is a serialized FileDescriptorSet whose
// files link (every import present) and define the gRPC service named.
func CheckDescriptors(fds []byte, service string) error {
	if _, err := descset.Service(fds, service); err != nil {
		return rpcerr.New(codes.InvalidArgument, ReasonBadDescriptors, component, "file descriptor set: "+err.Error())
	}
	return nil
}

// Config builds the global configuration of s (unsigned, a deep copy that
// the caller may keep), issued at now and valid for ttl. trustBundle is the ecosystem's CA certificates (DER), tsaURLs
// and registryAddrs the addresses nodes use.
func (s *State) Config(now time.Time, ttl time.Duration, tsaURLs, registryAddrs []string) *registryv1.GlobalConfig {
	c := &registryv1.GlobalConfig{
		Instance:          s.Instance,
		TrustDomain:       s.TrustDomain,
		Version:           s.ConfigVersion,
		IssuedAt:          timestamppb.New(now),
		ExpiresAt:         timestamppb.New(now.Add(ttl)),
		Members:           sorted(s.Members),
		Subsystems:        sorted(s.Subsystems),
		Nodes:             sorted(s.Nodes),
		Groups:            sorted(s.Groups),
		Services:          sorted(s.Services),
		TsaUrls:           tsaURLs,
		RegistryAddresses: registryAddrs,
		Settings:          s.Settings,
		Federated:         s.Federated(),
	}
	c.TrustBundle = s.Roots()
	if s.TSA != nil {
		c.TsaCertificate = s.TSA.GetCertificate()
	}
	return proto.Clone(c).(*registryv1.GlobalConfig)
}
