package ledger

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkArchive measures archiving (write the file, prune the store) and
// verifying the archive, in records per second; each iteration archives
// 2000 records appended beforehand (every third with a full body).
func BenchmarkArchive(b *testing.B) {
	const n = 2000
	p := newTestPKI(b)
	var archived, verified time.Duration
	for it := 0; it < b.N; it++ {
		b.StopTimer()
		adir := b.TempDir()
		l := startLedger(b, testConfig(p, b.TempDir()))
		appendRange(b, l.Ledger, 0, n)
		b.StartTimer()
		start := time.Now()
		infos, err := l.Archive(context.Background(), at(n), adir)
		if err != nil || len(infos) != 1 || infos[0].End != n {
			b.Fatalf("archive: %v", err)
		}
		archived += time.Since(start)
		data, err := os.ReadFile(filepath.Join(adir, ArchiveFileName(0)))
		if err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		if _, err := VerifyArchive(data, nil, p.roots()); err != nil {
			b.Fatal(err)
		}
		verified += time.Since(start)
		b.StopTimer()
		b.ReportMetric(float64(len(data))/n, "file-bytes/record")
		l.stop(b)
	}
	b.ReportMetric(float64(n*b.N)/archived.Seconds(), "archived-records/s")
	b.ReportMetric(float64(n*b.N)/verified.Seconds(), "verified-records/s")
}
