package registry

import (
	"context"
	"sort"
	"time"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/registry/fsm"
	"github.com/sildmesh/sild/registry/gconf"
)

// published is the current signed global configuration of this server.
type published struct {
	config *registryv1.GlobalConfig
	signed *registryv1.SignedConfig
}

// current returns the published configuration and a channel closed when it
// is replaced; nil before the first one.
func (s *Server) current() (*published, <-chan struct{}) {
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	return s.published.Load(), s.pubCh
}

// publishInterval is the least time between two publications: a burst of
// commits is published as one configuration (building and signing one costs
// time linear in the size of the ecosystem).
const publishInterval = 50 * time.Millisecond

// publishLoop signs a new configuration whenever the state's configuration
// version changes (at most every publishInterval), and re-signs it every
// ConfigRefresh so that it does not expire while nothing changes.
func (s *Server) publishLoop(ctx context.Context) error {
	var lastVersion uint64
	var lastSigned time.Time
	refresh := time.NewTicker(s.cfg.ConfigRefresh)
	defer refresh.Stop()
	for {
		changed := s.fsm.Changed()
		var version uint64
		var initialized bool
		s.fsm.Read(func(st *fsm.State, _ uint64) { version, initialized = st.ConfigVersion, st.Initialized() })
		now := time.Now()
		if wait := publishInterval - now.Sub(lastSigned); initialized && version != lastVersion && wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
			continue
		}
		if initialized && (version != lastVersion || now.Sub(lastSigned) >= s.cfg.ConfigRefresh) {
			if err := s.publish(now); err != nil {
				s.log.Error("publish configuration", "err", err)
			} else {
				lastVersion, lastSigned = version, now
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-refresh.C:
		}
	}
}

func (s *Server) publish(now time.Time) error {
	var cfg *registryv1.GlobalConfig
	var signer *registryv1.KeyPair
	s.fsm.Read(func(st *fsm.State, _ uint64) {
		var tsaURLs, regAddrs []string
		for _, sv := range st.Servers {
			regAddrs = append(regAddrs, sv.GetApiAddress())
			if sv.GetHttpAddress() != "" {
				tsaURLs = append(tsaURLs, "http://"+sv.GetHttpAddress()+"/tsa")
			}
		}
		sort.Strings(tsaURLs)
		sort.Strings(regAddrs)
		cfg = st.Config(now, s.cfg.ConfigTTL, tsaURLs, regAddrs)
		signer = st.ConfigSigner
	})
	cert, key, err := keyPair(signer)
	if err != nil {
		return err
	}
	signed, err := gconf.Sign(cfg, key, cert)
	if err != nil {
		return err
	}
	s.pubMu.Lock()
	s.published.Store(&published{config: cfg, signed: signed})
	close(s.pubCh)
	s.pubCh = make(chan struct{})
	s.pubMu.Unlock()
	s.log.Debug("published configuration", "version", cfg.GetVersion())
	return nil
}
