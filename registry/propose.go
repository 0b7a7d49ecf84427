package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry/fsm"
)

// applyTimeout bounds one raft.Apply on the leader.
const applyTimeout = 10 * time.Second

func unavailable(msg string) error {
	return rpcerr.New(codes.Unavailable, rpcerr.ReasonUnavailable, "registry", msg)
}

// propose commits cmd through the leader (here, or forwarded) and returns
// the FSM's result value. It retries while there is no leader, until ctx
// ends.
func (s *Server) propose(ctx context.Context, cmd *registryv1.Command) (proto.Message, error) {
	if cmd.Time == nil {
		cmd.Time = timestamppb.Now()
	}
	if cmd.RequestId == "" {
		// The same bytes are proposed on every retry below: a retry of a
		// write the leader applied, whose answer was lost, answers as the
		// write did instead of ALREADY_EXISTS or NOT_FOUND.
		var id [16]byte
		_, _ = rand.Read(id[:])
		cmd.RequestId = hex.EncodeToString(id[:])
	}
	data, err := fsm.Encode(cmd)
	if err != nil {
		return nil, err
	}
	giveUp, cancel := giveUpBefore(ctx)
	defer cancel()
	for {
		// The attempt itself has all of ctx: a write under way may commit,
		// and its caller must not hear that there was no leader.
		v, err := s.proposeOnce(ctx, data)
		if !retryable(err) {
			return v, err
		}
		select {
		case <-giveUp.Done():
			return nil, noLeader(ctx)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ReasonNoLeader: a write or linearizable read found no leader before the
// caller's deadline (this server cannot reach a majority, or an election
// did not end in time).
const ReasonNoLeader = "NO_LEADER"

// giveUpBefore returns a context that ends a little before ctx's deadline,
// so that the caller hears why it waited instead of its own deadline.
func giveUpBefore(ctx context.Context) (context.Context, context.CancelFunc) {
	d, ok := ctx.Deadline()
	if !ok {
		return context.WithCancel(ctx)
	}
	margin := min(time.Until(d)/10, 500*time.Millisecond)
	return context.WithDeadline(ctx, d.Add(-margin))
}

// noLeader is the answer when giveUpBefore's context ended first.
func noLeader(ctx context.Context) error {
	if ctx.Err() == context.Canceled {
		return ctx.Err()
	}
	return rpcerr.New(codes.Unavailable, ReasonNoLeader, "registry",
		"no leader: this registry server cannot reach a majority of the cluster, or an election is under way; writes and current reads wait for a leader (stale reads answer from this server)")
}

// errNoLeader is retried by propose and the read barrier.
var errNoLeader = errors.New("no leader")

func retryable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, errNoLeader) || errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) ||
		errors.Is(err, raft.ErrLeadershipTransferInProgress) {
		return true
	}
	return status.Code(err) == codes.Unavailable && rpcerr.Reason(err) == rpcerr.ReasonNotLeader
}

func (s *Server) proposeOnce(ctx context.Context, data []byte) (proto.Message, error) {
	if s.raft.State() == raft.Leader {
		return s.applyLocal(data)
	}
	conn, err := s.leaderConn()
	if err != nil {
		return nil, err
	}
	_, err = registryv1.NewClusterServiceClient(conn).Propose(ctx, &registryv1.ProposeRequest{Command: data})
	if err != nil {
		if status.Code(err) == codes.Unavailable && rpcerr.Reason(err) == "" {
			return nil, errNoLeader // the leader went away mid-call
		}
		return nil, err
	}
	// The result value (only register_subsystem has one) is read back by
	// callers from the state; the error is what matters.
	return nil, nil
}

// applyLocal applies data on this server, which must be the leader.
func (s *Server) applyLocal(data []byte) (proto.Message, error) {
	f := s.raft.Apply(data, applyTimeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return nil, errNoLeader
		}
		// Raft's own words stay in the log: the caller may be another
		// organisation's node.
		s.log.Warn("commit", "err", err)
		return nil, unavailable("the change was not committed (the cluster is busy or changing leader); retry")
	}
	res, _ := f.Response().(*fsm.Result)
	if res == nil {
		return nil, nil
	}
	return res.Value, res.Err
}

// leaderConn returns an mTLS connection to the leader's API.
func (s *Server) leaderConn() (*grpc.ClientConn, error) {
	_, id := s.raft.LeaderWithID()
	if id == "" {
		return nil, errNoLeader
	}
	if string(id) == s.cfg.ServerID {
		return nil, errNoLeader // we were leader a moment ago; retry locally
	}
	var addr string
	s.fsm.Read(func(st *fsm.State, _ uint64) {
		if info := st.Servers[string(id)]; info != nil {
			addr = info.GetApiAddress()
		}
	})
	if addr == "" {
		return nil, errNoLeader
	}
	return s.peerConn(addr)
}

func (s *Server) peerConn(addr string) (*grpc.ClientConn, error) {
	s.peersMu.Lock()
	defer s.peersMu.Unlock()
	if c := s.peers[addr]; c != nil {
		return c, nil
	}
	td, err := spiffeid.TrustDomainFromString(s.trustDomain())
	if err != nil {
		return nil, err
	}
	tc := tlsconfig.MTLSClientConfig(s.svids, s.bundle, pki.AuthorizeRegistry(td))
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		return nil, err
	}
	s.peers[addr] = c
	return c, nil
}

// readIndex returns an index such that a state applied up to it reflects
// every write acknowledged before the call (ReadIndex, Raft §6.4). On the
// leader it confirms leadership with a quorum first.
func (s *Server) readIndex(ctx context.Context) (uint64, error) {
	if s.raft.State() == raft.Leader {
		idx := s.lastFSMIndex(s.raft.LastIndex())
		if err := s.raft.VerifyLeader().Error(); err != nil {
			return 0, errNoLeader
		}
		return idx, nil
	}
	conn, err := s.leaderConn()
	if err != nil {
		return 0, err
	}
	resp, err := registryv1.NewClusterServiceClient(conn).ReadIndex(ctx, &registryv1.ReadIndexRequest{})
	if err != nil {
		if status.Code(err) == codes.Unavailable {
			return 0, errNoLeader
		}
		return 0, err
	}
	return resp.GetIndex(), nil
}

// lastFSMIndex returns the last index at or below idx whose entry reaches
// the FSM: raft keeps no-op and barrier entries to itself (a new leader
// starts its term with a no-op), so waiting for those would never end. A
// compacted index is covered by the snapshot the FSM was restored from.
func (s *Server) lastFSMIndex(idx uint64) uint64 {
	var l raft.Log
	for ; idx > 0; idx-- {
		if err := s.store.GetLog(idx, &l); err != nil {
			return idx
		}
		if l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			return idx
		}
	}
	return 0
}

// barrier makes the local state current for a linearizable read, unless
// stale reads were asked for.
func (s *Server) barrier(ctx context.Context, stale bool) error {
	if stale {
		return nil
	}
	giveUp, cancel := giveUpBefore(ctx)
	defer cancel()
	for {
		idx, err := s.readIndex(ctx)
		if err == nil {
			return s.waitApplied(ctx, idx)
		}
		if !retryable(err) {
			return err
		}
		select {
		case <-giveUp.Done():
			return noLeader(ctx)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitApplied blocks until the FSM has applied index idx.
func (s *Server) waitApplied(ctx context.Context, idx uint64) error {
	for {
		ch := s.fsm.Changed()
		if s.fsm.Index() >= idx {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return unavailable("waiting for the log to apply: " + ctx.Err().Error())
		}
	}
}

// maintainLoop finishes the bootstrap (proposes Init once leader), keeps this
// server's addresses announced in the state, and renews its own SVID.
func (s *Server) maintainLoop(ctx context.Context, boot *registryv1.Init) error {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		s.maintain(ctx, boot)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (s *Server) maintain(ctx context.Context, boot *registryv1.Init) {
	var initialized bool
	var mine *registryv1.ServerInfo
	s.fsm.Read(func(st *fsm.State, _ uint64) {
		initialized = st.Initialized()
		mine = st.Servers[s.cfg.ServerID]
	})
	if !initialized {
		if boot == nil || s.raft.State() != raft.Leader {
			return
		}
		cctx, cancel := context.WithTimeout(ctx, applyTimeout)
		_, err := s.propose(cctx, &registryv1.Command{Op: &registryv1.Command_Init{Init: boot}})
		cancel()
		if err != nil {
			s.log.Warn("initialize ecosystem", "err", err)
			return
		}
		initialized = true
	}
	if boot != nil {
		_ = os.Remove(filepath.Join(s.cfg.DataDir, fileInit))
	}
	want := &registryv1.ServerInfo{Id: s.cfg.ServerID, RaftAddress: s.cfg.AdvertiseRaft, ApiAddress: s.cfg.AdvertiseAPI, HttpAddress: s.cfg.AdvertiseHTTP}
	if !proto.Equal(mine, want) {
		if s.raft.Leader() == "" {
			return
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := s.propose(cctx, &registryv1.Command{Op: &registryv1.Command_AnnounceServer{AnnounceServer: want}})
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				s.log.Debug("announce server", "err", err)
			}
			return
		}
	}
	if s.ready.CompareAndSwap(false, true) {
		s.log.Info("registry server ready")
	}
	s.renewSelf(time.Now())
}
