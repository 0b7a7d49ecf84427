package node

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sildmesh/sild/ledger"
	"github.com/sildmesh/sild/node/sign"
)

// batchMetrics are the counters that show how well the ledger and the
// signer share their fixed costs: records per synced commit, digests per
// root signature.
func batchMetrics(led *ledger.Ledger, signer *sign.Signer) []prometheus.Collector {
	counter := func(name, help string, v func() uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v()) })
	}
	return []prometheus.Collector{
		counter("sild_ledger_commits_total", "Synced ledger transactions that appended records.", func() uint64 { return led.Stats().Commits }),
		counter("sild_ledger_records_total", "Records appended to the ledger (records/commits is the mean batch).", func() uint64 { return led.Stats().Records }),
		counter("sild_signer_signatures_total", "Root signatures made, each over a batch of digests.", func() uint64 { return signer.Stats().Batches }),
		counter("sild_signer_digests_total", "Digests signed (digests/signatures is the mean batch).", func() uint64 { return signer.Stats().Digests }),
	}
}
