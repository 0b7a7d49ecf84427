package registry_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	identv1 "github.com/sildmesh/sild/gen/sild/ident/v1"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/registry/fsm"
	"github.com/sildmesh/sild/registry/registrytest"
)

// TestConcurrentRegistrationsAnswerTheirOwnRequest: each RegisterSubsystem
// call answers with the request it created, not another pair's created at
// the same time.
func TestConcurrentRegistrationsAnswerTheirOwnRequest(t *testing.T) {
	c := registrytest.Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	admin := c.AdminClient(c.Leader())
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := admin.AddMember(c.Ctx(ctx), &registryv1.AddMemberRequest{Id: memberID("70000310")})
	must(err)
	_, err = admin.AddNode(c.Ctx(ctx), &registryv1.AddNodeRequest{Id: nodeID})
	must(err)
	_, err = admin.SetAutoApprove(c.Ctx(ctx), &registryv1.SetAutoApproveRequest{Kind: fsm.KindRegisterSubsystem, AutoApprove: false})
	must(err)
	const n = 24
	for i := range n {
		_, err := admin.AddSubsystem(c.Ctx(ctx), &registryv1.AddSubsystemRequest{Id: &identv1.SubsystemId{Member: memberID("70000310"), SubsystemCode: fmt.Sprintf("s%d", i)}})
		must(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := c.AdminClient(c.Servers[i%len(c.Servers)])
			code := fmt.Sprintf("s%d", i)
			resp, err := cl.RegisterSubsystem(c.Ctx(ctx), &registryv1.RegisterSubsystemRequest{
				Subsystem: &identv1.SubsystemId{Member: memberID("70000310"), SubsystemCode: code}, Node: nodeID,
			})
			if err != nil {
				errs <- err
				return
			}
			if s := resp.GetRequest().GetSummary(); !strings.HasSuffix(s, "/"+code) {
				errs <- fmt.Errorf("registering %s answered request %d: %q", code, resp.GetRequest().GetId(), s)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
