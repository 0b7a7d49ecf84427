package node

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sildmesh/sild/ledger"
	"github.com/sildmesh/sild/node/sign"
)

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
