package node

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"

	"github.com/sildmesh/sild/internal/rpcerr"
	"github.com/sildmesh/sild/ledger"
	"github.com/sildmesh/sild/node/exchange"
	"github.com/sildmesh/sild/node/sign"
)

// exchangeMetrics count the calls each side of the node handled, by
// outcome, and time them.
type exchangeMetrics struct {
	calls    *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newExchangeMetrics() *exchangeMetrics {
	return &exchangeMetrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sild_exchanges_total",
			Help: "Calls handled, by side (consumer: from member systems; provider: from other nodes), gRPC status code and sild reason of a refusal.",
		}, []string{"side", "code", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sild_exchange_duration_seconds",
			Help:    "Time from a call's arrival to its final status, by side; the consumer's includes the provider's.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"side"}),
	}
}

// observe is exchange.Config.Observe.
func (m *exchangeMetrics) observe(component string, err error, took time.Duration) {
	side := "provider"
	if component == exchange.ComponentConsumer {
		side = "consumer"
	}
	m.calls.WithLabelValues(side, status.Code(err).String(), rpcerr.Reason(err)).Inc()
	m.duration.WithLabelValues(side).Observe(took.Seconds())
}

// batchMetrics are the counters that show how well the ledger, the signer
// and the verifier share their fixed costs: records per synced commit,
// digests per root signature, root signatures checked per exchange.
func batchMetrics(led *ledger.Ledger, signer *sign.Signer, verifier *sign.Verifier) []prometheus.Collector {
	counter := func(name, help string, v func() uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v()) })
	}
	return []prometheus.Collector{
		counter("sild_ledger_commits_total", "Synced ledger transactions that appended records.", func() uint64 { return led.Stats().Commits }),
		counter("sild_ledger_records_total", "Records appended to the ledger (records/commits is the mean batch).", func() uint64 { return led.Stats().Records }),
		counter("sild_signer_signatures_total", "Root signatures made, each over a batch of digests.", func() uint64 { return signer.Stats().Batches }),
		counter("sild_signer_digests_total", "Digests signed (digests/signatures is the mean batch).", func() uint64 { return signer.Stats().Digests }),
		counter("sild_verifier_root_checks_total", "Root signatures of other nodes verified; signatures of one batch share one check.", verifier.RootChecks),
	}
}
