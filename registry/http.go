package registry

import (
	"bytes"
	"context"
	"net/http"

	"github.com/hashicorp/raft"

	"github.com/sildmesh/sild/gateway"
	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
	"github.com/sildmesh/sild/registry/fsm"
	"github.com/sildmesh/sild/tsa"
)

// httpHandler serves the registry's plain HTTP side: health checks, the
// time-stamping authority (mounted at /tsa) and the admin REST gateway with
// its OpenAPI document (every other path; see package gateway).
func (s *Server) httpHandler(ctx context.Context) http.Handler {
	mux := http.NewServeMux()
	// gateway: admin REST on the API's own gRPC server (same API-key checks).
	if gw, err := gateway.NewRegistryAdmin(ctx, s.grpc, s.log.With("component", "gateway")); err != nil {
		s.log.Error("admin REST gateway", "err", err)
	} else {
		mux.Handle("/", gw)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.Ready() {
			http.Error(w, "not ready: no leader, not initialized or no configuration published", http.StatusServiceUnavailable)
			return
		}
		state := s.Raft().State()
		if state != raft.Leader && state != raft.Follower {
			http.Error(w, "not ready: "+state.String(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("POST /tsa", func(w http.ResponseWriter, r *http.Request) {
		a := s.authority()
		if a == nil {
			http.Error(w, "time-stamping authority not ready", http.StatusServiceUnavailable)
			return
		}
		a.ServeHTTP(w, r)
	})
	return mux
}

// authority returns the time-stamping authority for the replicated TSA key,
// rebuilt when the key changes; nil before the ecosystem is initialized.
func (s *Server) authority() *tsa.Authority {
	var certDER, keyDER []byte
	s.fsm.Read(func(st *fsm.State, _ uint64) {
		certDER, keyDER = st.TSA.GetCertificate(), st.TSA.GetKey()
	})
	if len(certDER) == 0 {
		return nil
	}
	s.tsaMu.Lock()
	defer s.tsaMu.Unlock()
	if s.tsa != nil && bytes.Equal(s.tsaCert, certDER) {
		return s.tsa
	}
	cert, key, err := keyPair(&registryv1.KeyPair{Certificate: certDER, Key: keyDER})
	if err != nil {
		s.log.Error("time-stamping key", "err", err)
		return nil
	}
	cfg := tsa.DefaultConfig()
	cfg.Signer, cfg.Cert, cfg.Logger = key, cert, s.log.With("component", "tsa")
	a, err := tsa.New(cfg)
	if err != nil {
		s.log.Error("time-stamping authority", "err", err)
		return nil
	}
	s.tsa, s.tsaCert = a, certDER
	return a
}
