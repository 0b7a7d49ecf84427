package cpustat

import (
	"crypto/sha256"
	"runtime"
	"testing"
)

type metrics map[string]float64

func (m metrics) ReportMetric(n float64, unit string) { m[unit] = n }

func TestPerOpCountsWork(t *testing.T) {
	if _, ok := Process(); !ok {
		if runtime.GOOS == "linux" {
			t.Fatal("cannot read the process's CPU time on linux")
		}
		t.Skip("no CPU time on " + runtime.GOOS)
	}
	m := metrics{}
	n := 100
	done := PerOp(m, &n)
	var sum [32]byte
	for range 200000 { // about 50 ms of hashing
		sum = sha256.Sum256(sum[:])
	}
	done()
	if got := m["cpu-µs/op"]; got <= 0 {
		t.Fatalf("cpu-µs/op = %v after busy work", got)
	}
	m = metrics{}
	n = 0
	PerOp(m, &n)()
	if _, ok := m["cpu-µs/op"]; ok {
		t.Fatal("reported a per-op value for zero operations")
	}
}
