package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"testing"
)

// syncBuffer is a bytes.Buffer safe for a command writing while the test
// reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runCmd runs sild with args in-process and returns its stdout and stderr.
func runCmd(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	var out, errb syncBuffer
	err = execute(ctx, &out, &errb, args...)
	return out.String(), errb.String(), err
}

func execute(ctx context.Context, out, errOut *syncBuffer, args ...string) error {
	cmd := newRootCmd()
	cmd.SetOut(out)
	cmd.SetErr(errOut)
	cmd.SetArgs(args)
	return cmd.ExecuteContext(ctx)
}

// clearSildEnv hides SILD_* variables of the environment from the test.
func clearSildEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "SILD_") {
			t.Setenv(k, "")
		}
	}
}
