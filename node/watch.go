package node

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/internal/atomicfile"
	"github.com/sildmesh/sild/node/topology"
	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/registry/gconf"
)

type signedConfig = registryv1.SignedConfig

// errStale refuses a configuration older than the one in use.
var errStale = errors.New("older than the configuration in use")

// roots returns the roots the node trusts now: those it joined or last
// renewed with, and those of the verified configuration in use (which is
// how a new root of a CA rotation reaches it before anything is signed
// under it).
func (n *Node) roots() []*x509.Certificate {
	n.idMu.Lock()
	var out []*x509.Certificate
	if n.id != nil {
		out = append(out, n.id.roots...)
	}
	n.idMu.Unlock()
	if top := n.Topology(); top != nil {
		for _, r := range top.Roots {
			if !slices.ContainsFunc(out, r.Equal) {
				out = append(out, r)
			}
		}
	}
	return out
}

// acceptConfig verifies sc and, if it is newer than the one in use, makes
// it current and caches it on disk.
func (n *Node) acceptConfig(sc *signedConfig) error {
	roots := n.roots()
	if len(roots) == 0 {
		return errors.New("no trust bundle")
	}
	cfg, err := gconf.Verify(sc, roots, time.Now())
	if err != nil {
		return err
	}
	if cur := n.Topology(); cur != nil {
		if cfg.GetVersion() < cur.Version ||
			(cfg.GetVersion() == cur.Version && !cfg.GetIssuedAt().AsTime().After(cur.Config.GetIssuedAt().AsTime())) {
			return errStale
		}
	}
	top, err := topology.New(cfg)
	if err != nil {
		return err
	}
	if top.Instance != n.self.Member.Instance {
		return fmt.Errorf("configuration of instance %q, this node belongs to %q", top.Instance, n.self.Member.Instance)
	}
	data, err := proto.Marshal(sc)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(n.cfg.DataDir, fileConfig, data); err != nil {
		n.log.Warn("cache configuration", "err", err)
	}
	n.setTopology(top)
	return nil
}

func (n *Node) setTopology(top *topology.Topology) {
	// New handshakes trust this ecosystem's roots and those of every
	// active federated one; a removed federation is distrusted at once.
	if len(top.Roots) > 0 {
		n.bundles.Set(top.Bundles()...)
	}
	n.topMu.Lock()
	n.top.Store(top)
	close(n.topCh)
	n.topCh = make(chan struct{})
	n.topMu.Unlock()
	n.configVersion.Set(float64(top.Version))
	n.log.Debug("configuration in use", "version", top.Version, "expires", top.Expires)
}

// TopologyChanged returns a channel closed when the configuration changes.
func (n *Node) TopologyChanged() <-chan struct{} {
	n.topMu.Lock()
	defer n.topMu.Unlock()
	return n.topCh
}

// loadCachedConfig installs the configuration cached on disk, even if it has
// expired (exchanges then refuse with CONFIG_EXPIRED until a new one comes).
func (n *Node) loadCachedConfig() error {
	data, err := os.ReadFile(filepath.Join(n.cfg.DataDir, fileConfig))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var sc signedConfig
	if err := proto.Unmarshal(data, &sc); err != nil {
		return fmt.Errorf("cached configuration: %w", err)
	}
	cfg, err := gconf.Verify(&sc, n.roots(), time.Now())
	if errors.Is(err, gconf.ErrExpired) {
		// Verified but expired: keep it so that the node can tell why it
		// refuses; check the signature with a time inside its validity.
		var raw registryv1.GlobalConfig
		if proto.Unmarshal(sc.GetConfig(), &raw) == nil {
			cfg, err = gconf.Verify(&sc, n.roots(), raw.GetIssuedAt().AsTime())
		}
	}
	if err != nil {
		return fmt.Errorf("cached configuration: %w", err)
	}
	top, err := topology.New(cfg)
	if err != nil {
		return err
	}
	if cur := n.Topology(); cur == nil || top.Version > cur.Version {
		n.setTopology(top)
	}
	return nil
}

// registryAddrs lists the registry servers to try: the configured one and
// those the configuration names.
func (n *Node) registryAddrs() []string {
	addrs := []string{n.cfg.Registry}
	if top := n.Topology(); top != nil {
		for _, a := range top.Config.GetRegistryAddresses() {
			if !slices.Contains(addrs, a) {
				addrs = append(addrs, a)
			}
		}
	}
	return addrs
}

// registryConn returns the mTLS connection to the current registry server.
func (n *Node) registryConn() (*grpc.ClientConn, error) {
	n.regMu.Lock()
	defer n.regMu.Unlock()
	if n.regConn != nil {
		return n.regConn, nil
	}
	if n.regAddr == "" {
		n.regAddr = n.cfg.Registry
	}
	td, err := pki.TrustDomainOf(n.roots())
	if err != nil {
		return nil, err
	}
	tc := tlsconfig.MTLSClientConfig(n.svids, n.bundles, pki.AuthorizeRegistry(td))
	c, err := grpc.NewClient(n.regAddr, grpc.WithTransportCredentials(credentials.NewTLS(tc)), gconf.DialOption)
	if err != nil {
		return nil, err
	}
	n.regConn = c
	return c, nil
}

// currentRegistry is the address of the registry server in use.
func (n *Node) currentRegistry() string {
	n.regMu.Lock()
	defer n.regMu.Unlock()
	return n.regAddr
}

// nextRegistry drops the current registry connection and moves to the next
// known server.
func (n *Node) nextRegistry() {
	addrs := n.registryAddrs()
	n.regMu.Lock()
	defer n.regMu.Unlock()
	if n.regConn != nil {
		n.regConn.Close()
		n.regConn = nil
	}
	i := slices.Index(addrs, n.regAddr)
	n.regAddr = addrs[(i+1)%len(addrs)]
}

// watchLoop keeps a WatchConfig stream open, moving to another registry
// server when one fails.
func (n *Node) watchLoop(ctx context.Context) error {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := n.watchOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		n.log.Warn("configuration watch interrupted", "registry", n.currentRegistry(), "err", err)
		n.nextRegistry()
		if time.Since(start) > 10*time.Second {
			backoff = 200 * time.Millisecond
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	return nil
}

func (n *Node) watchOnce(ctx context.Context) error {
	conn, err := n.registryConn()
	if err != nil {
		return err
	}
	var known uint64
	if top := n.Topology(); top != nil {
		known = top.Version
	}
	stream, err := registryv1.NewNodeServiceClient(conn).WatchConfig(ctx, &registryv1.WatchConfigRequest{KnownVersion: known})
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		if err := n.acceptConfig(resp.GetConfig()); err != nil && !errors.Is(err, errStale) {
			n.log.Error("configuration refused", "err", err)
		}
	}
}

// renewLoop renews the identity when due (identity.renewAt), then moves the
// exchange signer to the new signing key (switchSigningKey); the next
// renewal, which drops the previous key from the configuration, comes no
// sooner than a switchGrace after that. A failed renewal is retried after
// identity.retryIn (30 s with the default settings), with another registry
// server, until it works or the identity expires.
func (n *Node) renewLoop(ctx context.Context) error {
	var notBefore time.Time // the previous signing key's last use, plus a grace
	warned := false
	for {
		n.idMu.Lock()
		id := n.id
		n.idMu.Unlock()
		at, fellBack := id.renewAt(n.cfg.RenewBefore)
		if fellBack && !warned {
			warned = true
			n.log.Warn("renew_before is not shorter than the lifetime of the certificates the registry issues: renewing at half-life instead",
				"renew_before", n.cfg.RenewBefore, "lifetime", id.lifetime().Round(time.Second))
		}
		if at.Before(notBefore) {
			at = notBefore
		}
		if !sleepUntil(ctx, at) {
			return nil
		}
		var next *identity
		for failures := 1; ; failures++ {
			var err error
			if next, err = n.renew(ctx); err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			wait := id.retryIn(n.cfg.RenewBefore, failures, time.Now())
			n.log.Error("renew identity", "err", err, "retry_in", wait)
			n.nextRegistry()
			if !sleepUntil(ctx, time.Now().Add(wait)) {
				return nil
			}
		}
		switched, ok := n.switchSigningKey(ctx, id, next)
		if !ok {
			return nil
		}
		notBefore = switched.Add(next.switchGrace(n.cfg.RenewBefore))
	}
}

// sleepUntil waits until t; false if ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}
