package sign

import (
	"google.golang.org/grpc/metadata"
)

// SetMetadata puts the encoding of s into md under MetadataKey, replacing
// any value there (gRPC base64-encodes "-bin" entries on the wire).
func SetMetadata(md metadata.MD, s *Signature) error {
	b, err := s.Marshal()
	if err != nil {
		return err
	}
	md.Set(MetadataKey, string(b))
	return nil
}

// FromMetadata decodes the one signature in md (headers or trailers). It
// returns ErrMalformed if there is none or more than one.
func FromMetadata(md metadata.MD) (*Signature, error) {
	v := md.Get(MetadataKey)
	switch len(v) {
	case 0:
		return nil, malformed("no %s metadata", MetadataKey)
	case 1:
		return Unmarshal([]byte(v[0]))
	}
	return nil, malformed("%d %s metadata entries", len(v), MetadataKey)
}
