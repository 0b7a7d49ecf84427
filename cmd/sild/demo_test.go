package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

func TestDemoOnce(t *testing.T) {
	clearSildEnv(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, _, err := runCmd(ctx, "demo", "--once", "--dir", dir)
	if err != nil {
		t.Fatalf("demo --once: %v\n%s", err, out)
	}
	for _, want := range []string{
		"r1  api 127.0.0.1:", "r2  api 127.0.0.1:", "r3  api 127.0.0.1:",
		"admin API key  sild_", "trust bundle   ", "export SILD_REGISTRY=127.0.0.1:",
		"5. ok   licensing authority (EE) -> population register (FI)",
		"all 6 scenario steps succeeded",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if left, err := os.ReadDir(dir); err != nil || len(left) != 0 {
		t.Fatalf("demo data not removed: %v %v", left, err)
	}
}

func TestDemoStopsOnInterrupt(t *testing.T) {
	clearSildEnv(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan error, 1)
	go func() { done <- execute(ctx, &out, &errOut, "demo", "--dir", dir, "--keep") }()
	deadline := time.After(60 * time.Second)
	for !strings.Contains(out.String(), "Press Ctrl-C") {
		select {
		case err := <-done:
			t.Fatalf("demo returned early: %v\n%s", err, out.String())
		case <-deadline:
			t.Fatalf("demo not up:\n%s", out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("demo did not stop")
	}
	if left, err := os.ReadDir(dir); err != nil || len(left) != 1 || !strings.Contains(out.String(), "data kept in") {
		t.Fatalf("--keep: %v %v\n%s", left, err, out.String())
	}
}
