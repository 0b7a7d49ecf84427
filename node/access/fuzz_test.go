package access

import (
	"testing"

	"google.golang.org/protobuf/proto"

	nodev1 "github.com/sildmesh/sild/gen/sild/node/v1"
)

// FuzzRightFromProto decodes admin API input: whatever RightFromProto
// accepts must be a valid right that survives a round trip through its wire
// form and has a store key of its own.
func FuzzRightFromProto(f *testing.F) {
	for _, r := range []*nodev1.AccessRight{
		{Client: subClient(licensing), Service: svcProto(registry), MethodName: "GetCompany"},
		{Client: groupClient("EE", "health-workers"), Service: svcProto(registry)},
		{Client: &nodev1.AccessClient{}, Service: svcProto(registry)},
	} {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p nodev1.AccessRight
		if proto.Unmarshal(b, &p) != nil {
			return
		}
		r, err := RightFromProto(&p, "right")
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted right does not validate: %v", err)
		}
		back, err := RightFromProto(r.Proto(), "right")
		if err != nil || back.String() != r.String() || string(key(back)) != string(key(r)) || !back.GrantedAt.Equal(r.GrantedAt) {
			t.Fatalf("round trip: %v %v", back, err)
		}
		c, err := ParseClient(r.Client.String())
		if err != nil || c != r.Client {
			t.Fatalf("client %q does not parse back: %v", r.Client, err)
		}
	})
}
