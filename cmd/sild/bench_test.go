package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestBenchJSON(t *testing.T) {
	clearSildEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, errOut, err := runCmd(ctx, "bench", "--json", "--duration", "200ms", "--concurrency", "1", "--case", "unary-1KiB", "--dir", t.TempDir())
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, errOut)
	}
	var rep struct {
		Results []struct {
			Path          string  `json:"path"`
			Calls         int64   `json:"calls"`
			RatioToDirect float64 `json:"ratio_to_direct"`
		} `json:"results"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if len(rep.Results) != 3 || rep.Results[1].Path != "relay" || rep.Results[2].Path != "mesh" || rep.Results[2].Calls == 0 || rep.Results[2].RatioToDirect <= 0 {
		t.Fatalf("report: %s", out)
	}
	if !strings.Contains(errOut, "unary-1KiB mesh concurrency 1") {
		t.Fatalf("no progress on stderr: %q", errOut)
	}
}

func TestBenchFlagErrors(t *testing.T) {
	clearSildEnv(t)
	for _, args := range [][]string{
		{"bench", "--concurrency", "1,x"},
		{"bench", "--concurrency", "0"},
		{"bench", "--case", "bidi"},
		{"bench", "--duration", "0s"},
		{"bench", "--repeat", "21"},
		{"bench", "--repeat", "-1"},
		{"bench", "--backend-work", "-1ms"},
		{"bench", "--backend-work", "2s"},
		{"bench", "--backend-wait", "11s"},
	} {
		_, _, err := runCmd(context.Background(), args...)
		if err == nil {
			t.Errorf("%v: no error", args)
		}
	}
	prof := filepath.Join(t.TempDir(), "cpu.prof")
	if _, _, err := runCmd(context.Background(), "bench", "--by-part", "--cpuprofile", prof); err == nil || !strings.Contains(err.Error(), "choose one") {
		t.Errorf("--by-part with --cpuprofile: %v", err)
	}
}
