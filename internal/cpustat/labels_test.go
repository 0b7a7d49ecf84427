package cpustat

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"runtime/pprof"
	"sync"
	"testing"
)

func burn(n int) {
	var sum [32]byte
	for range n {
		sum = sha256.Sum256(sum[:])
	}
}

func TestByLabelAttributesLabeledWork(t *testing.T) {
	var buf bytes.Buffer
	if err := pprof.StartCPUProfile(&buf); err != nil {
		t.Skipf("a CPU profile is already running: %v", err)
	}
	Do("role", "a", func() { burn(1_200_000) })
	var wg sync.WaitGroup
	Do("role", "b", func() {
		wg.Add(1)
		go func() { // inherits the label
			defer wg.Done()
			burn(300_000)
		}()
	})
	wg.Wait()
	pprof.StopCPUProfile()

	got, err := ByLabel(buf.Bytes(), "role")
	if err != nil {
		t.Fatal(err)
	}
	a, b := got["a"], got["b"]
	if b <= 0 || a <= b {
		t.Fatalf("cpu by role = %v; want a (4x the work) above b, and b above zero", got)
	}
	if other, err := ByLabel(buf.Bytes(), "no-such-key"); err != nil || other["a"] != 0 || other[""] < a+b {
		t.Fatalf("by an absent key = %v, %v; want everything under \"\"", other, err)
	}
}

func TestByLabelRefusesMalformed(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte{0x12, 0x05, 0x01}) // a sample field longer than the data
	zw.Close()
	for name, in := range map[string][]byte{"not gzip": []byte("profile"), "truncated field": gz.Bytes()} {
		if _, err := ByLabel(in, "role"); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	var empty bytes.Buffer
	zw = gzip.NewWriter(&empty)
	zw.Close()
	if _, err := ByLabel(empty.Bytes(), "role"); err == nil {
		t.Error("empty profile (no cpu sample type): no error")
	}
}

func FuzzByLabel(f *testing.F) {
	var buf bytes.Buffer
	if err := pprof.StartCPUProfile(&buf); err == nil {
		burn(10_000)
		pprof.StopCPUProfile()
		f.Add(buf.Bytes())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(b)
		zw.Close()
		_, _ = ByLabel(gz.Bytes(), "role") // must not panic
		_, _ = ByLabel(b, "role")
	})
}
