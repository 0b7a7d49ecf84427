package ledger

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sildmesh/sild/pki"
	"github.com/sildmesh/sild/tsa"
)

// The crash test re-runs this test binary as a child that appends under
// concurrent load and prints "ack <message id> <index>" once each append is
// durable; the parent kills it with SIGKILL at a random moment, reopens the
// ledger, runs Check and looks every acknowledged record up.
const (
	crashDirEnv     = "SILD_LEDGER_CRASH_DIR"
	crashRoundEnv   = "SILD_LEDGER_CRASH_ROUND"
	crashArchiveEnv = "SILD_LEDGER_CRASH_ARCHIVE" // set: the child also archives
	crashSignedEnv  = "SILD_LEDGER_CRASH_SIGNED"  // set: records carry certificate chains
)

func writePEMs(t testing.TB, dir string, p *testPKI) {
	t.Helper()
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	k, err := pki.EncodeKey(p.key)
	if err != nil {
		t.Fatal(err)
	}
	write("ca.pem", pki.EncodeCerts(p.ca.Cert))
	write("signer.pem", pki.EncodeCerts(p.chain...))
	write("signer.key", k)
	tk, err := pki.EncodeKey(p.ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	write("ca.key", tk)
}

// childPKI rebuilds the parent's PKI from dir; the TSA certificate is
// minted afresh by the same CA.
func childPKI(t testing.TB, dir string) *testPKI {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	caCerts, err := pki.DecodeCerts(read("ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := pki.DecodeKey(read("ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := pki.DecodeCerts(read("signer.pem"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.DecodeKey(read("signer.key"))
	if err != nil {
		t.Fatal(err)
	}
	td, err := spiffeid.TrustDomainFromURI(caCerts[0].URIs[0])
	if err != nil {
		t.Fatal(err)
	}
	ca := &pki.CA{Cert: caCerts[0], Key: caKey, TrustDomain: td}
	tkey, _ := pki.NewKey()
	tcert, err := ca.Issue(pki.KindTSA, tkey.Public(), spiffeid.RequireFromPath(td, "/registry/tsa"), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tcfg := tsa.DefaultConfig()
	tcfg.Signer, tcfg.Cert = tkey, tcert
	auth, err := tsa.New(tcfg)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{ca: ca, auth: auth, key: key, chain: chain}
}

func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("helper process of the crash test")
	}
	round := os.Getenv(crashRoundEnv)
	p := childPKI(t, dir)
	cfg := testConfig(p, filepath.Join(dir, "ledger"))
	cfg.MaxBatch = 64
	cfg.CheckpointInterval = 5 * time.Millisecond
	if os.Getenv(crashArchiveEnv) != "" {
		// Archive everything stamped, often, in small prune transactions.
		cfg.Retention, cfg.ArchiveDir, cfg.ArchiveInterval = time.Nanosecond, filepath.Join(dir, "archive"), 3*time.Millisecond
		pruneBatch = 7
	}
	l, err := New(cfg)
	if err != nil {
		fmt.Printf("err open %v\n", err)
		os.Exit(2)
	}
	ctx := context.Background()
	go func() { _ = l.Run(ctx) }()
	var mu sync.Mutex
	for w := 0; w < 8; w++ {
		go func() {
			for n := 0; ; n++ {
				i := n*8 + w
				rec := testRecord(i, "EE/GOV/1/full", "EE38001010000")
				rec.MessageId = fmt.Sprintf("r%s-w%d-%d", round, w, n)
				if os.Getenv(crashSignedEnv) != "" {
					s := signedRecord(i, p)
					s.ProviderSignature.SignerChain = [][]byte{p.ca.Cert.Raw}
					rec.ConsumerSignature, rec.ProviderSignature = s.ConsumerSignature, s.ProviderSignature
				}
				idx, err := l.Append(ctx, rec, testBody(i)).Wait(ctx)
				line := fmt.Sprintf("ack %s %d\n", rec.MessageId, idx)
				if err != nil {
					line = fmt.Sprintf("err %s %v\n", rec.MessageId, err)
				}
				mu.Lock()
				_, _ = os.Stdout.WriteString(line)
				mu.Unlock()
			}
		}()
	}
	select {} // until killed
}

func crashRounds(t *testing.T, rounds int) { crashRoundsMode(t, rounds, false) }

func crashRoundsMode(t *testing.T, rounds int, archive bool, env ...string) {
	if testing.Short() {
		t.Skip("crash test in -short mode")
	}
	dir := t.TempDir()
	p := newTestPKI(t)
	writePEMs(t, dir, p)
	acked := map[string]uint64{}
	total, interrupted := 0, 0
	for r := 0; r < rounds; r++ {
		ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashChild$", "-test.timeout=150s")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashRoundEnv+"="+strconv.Itoa(r))
		if archive {
			cmd.Env = append(cmd.Env, crashArchiveEnv+"=1")
		}
		cmd.Env = append(cmd.Env, env...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		// Kill after a random number of acknowledged appends (the child
		// keeps appending while we read, so the kill lands mid-batch).
		killAfter := 1 + rand.IntN(600)
		n := 0
		handle := func(line string) {
			f := strings.Fields(line)
			switch {
			case len(f) == 3 && f[0] == "ack":
				i, err := strconv.ParseUint(f[2], 10, 64)
				if err != nil {
					t.Fatalf("bad line %q", line)
				}
				acked[f[1]] = i
				n++
			case len(f) > 0 && f[0] == "err":
				t.Fatalf("child: %s", line)
			}
		}
		for n < killAfter {
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatalf("round %d: child exited after %d acks", r, n)
				}
				handle(line)
			case <-time.After(30 * time.Second):
				// Stuck: make the child dump its goroutines to stderr.
				_ = cmd.Process.Signal(syscall.SIGQUIT)
				for range lines {
				}
				_ = cmd.Wait()
				t.Fatalf("round %d: no acknowledgement for 30 s after %d acks", r, n)
			}
		}
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		for line := range lines {
			handle(line)
		}
		_ = cmd.Wait()
		cancel()
		total += n

		if archive {
			interrupted += finishArchive(t, dir, p)
		}
		l, err := OpenReader(filepath.Join(dir, "ledger"), testBodyKey, nil)
		if err != nil {
			t.Fatalf("round %d: reopen: %v", r, err)
		}
		rep, err := l.Check(context.Background(), []*x509.Certificate{p.ca.Cert})
		if err != nil {
			t.Fatalf("round %d: check: %v", r, err)
		}
		for id, idx := range acked {
			got, err := l.ByMessageID(id)
			var ae *ArchivedError
			if archive && errors.As(err, &ae) && ae.Index == idx {
				continue
			}
			if err != nil || len(got) != 1 || got[0].Index != idx {
				t.Fatalf("round %d: acknowledged %s at %d lost: %v %d", r, id, idx, err, len(got))
			}
		}
		if archive {
			checkArchiveFiles(t, l, dir, p, rep)
		}
		if rep.Entries < uint64(len(acked)) {
			t.Fatalf("round %d: %d entries < %d acknowledged", r, rep.Entries, len(acked))
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: killed after %d acks; %s", r, n, rep)
	}
	t.Logf("%d rounds, %d acknowledged records, all present", rounds, total)
	if archive {
		t.Logf("%d kills interrupted a prune", interrupted)
	}
}

// TestCrashRecoveryShort is the crash test's short version for the normal
// suite; TestCrashRecovery (build tag slow) runs many more rounds.
func TestCrashRecoveryShort(t *testing.T) { crashRounds(t, 5) }

// finishArchive opens the ledger as a restarting node does (New finishes
// an interrupted prune), and returns 1 if Check found one before, else 0.
func finishArchive(t *testing.T, dir string, p *testPKI) int {
	t.Helper()
	r, err := OpenReader(filepath.Join(dir, "ledger"), testBodyKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Check(context.Background(), nil)
	_ = r.Close()
	n := 0
	if err != nil {
		if !strings.Contains(err.Error(), "archived but is still stored") {
			t.Fatalf("check before restart: %v", err)
		}
		n = 1
	}
	l, err := New(testConfig(p, filepath.Join(dir, "ledger")))
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return n
}

// checkArchiveFiles verifies the chain of the archives the ledger records
// and that it ends at the ledger's archive head.
func checkArchiveFiles(t *testing.T, l *Ledger, dir string, p *testPKI, rep *CheckReport) {
	t.Helper()
	refs, err := l.Archives()
	if err != nil {
		t.Fatal(err)
	}
	var files [][]byte
	for _, ref := range refs {
		b, err := os.ReadFile(filepath.Join(dir, "archive", ref.GetFile()))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, b)
	}
	vs, err := VerifyArchiveChain(files, []*x509.Certificate{p.ca.Cert})
	if err != nil {
		t.Fatalf("archive chain: %v", err)
	}
	if len(vs) > 0 && (!bytes.Equal(vs[len(vs)-1].SHA256, rep.ArchiveSHA256) || vs[len(vs)-1].Header.GetEndIndex() != rep.Archived) {
		t.Fatalf("archive chain ends at %d, ledger head %d", vs[len(vs)-1].Header.GetEndIndex(), rep.Archived)
	}
}

// TestCrashRecoveryArchiving kills a child that appends and archives.
func TestCrashRecoveryArchiving(t *testing.T) { crashRoundsMode(t, 5, true) }

// TestCrashRecoverySigned kills a child that appends records whose
// signatures carry certificate chains (stored once, apart from the
// entries; the signatures are not real, so nothing is archived).
func TestCrashRecoverySigned(t *testing.T) { crashRoundsMode(t, 5, false, crashSignedEnv+"=1") }
