package registry

import (
	"net/http"

	"github.com/hashicorp/raft"
)

// httpHandler serves the registry's plain HTTP side: health checks (and the
// time-stamping authority, mounted at /tsa).
func (s *Server) httpHandler() http.Handler {
	mux := http.NewServeMux()
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
	return mux
}
