package access

import (
	"slices"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/ident"
)

// MemberGroups maps each subsystem named in a group of cfg to the groups it
// belongs to, as the INSTANCE:CODE strings Store.Allowed takes. Members that
// do not parse are skipped (the configuration is verified before use). Build
// it once per configuration version.
func MemberGroups(cfg *registryv1.GlobalConfig) map[ident.Subsystem][]string {
	out := map[ident.Subsystem][]string{}
	for _, g := range cfg.GetGroups() {
		grp := Group{Instance: cfg.GetInstance(), Code: g.GetCode()}
		if grp.Validate() != nil {
			continue
		}
		name := grp.String()
		for _, m := range g.GetMembers() {
			s, err := ident.SubsystemFromProto(m)
			if err != nil || slices.Contains(out[s], name) {
				continue
			}
			out[s] = append(out[s], name)
		}
	}
	return out
}
