package ledger

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/sildmesh/sild/gen/sild/ledger/v1"
	"github.com/sildmesh/sild/ledger/merkle"
)

// appendRange appends records lo..hi-1 concurrently (every third with a
// full body) and waits for a time-stamped checkpoint covering them.
func appendRange(t testing.TB, l *Ledger, lo, hi int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, hi-lo)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := lo; i < hi; i++ {
		client, body := "EE/GOV/1/meta", (*ledgerv1.Body)(nil)
		if i%3 == 0 {
			client, body = "EE/GOV/1/full", testBody(i)
		}
		f := l.Append(ctx, testRecord(i, client, "EE38001010000"), body)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := f.Wait(ctx); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitStamped(t, l)
}

func mustCheck(t testing.TB, l *Ledger, p *testPKI) *CheckReport {
	t.Helper()
	rep, err := l.Check(context.Background(), p.roots())
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	return rep
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// at is the age limit that archives records whose index is below i (record
// i ends at baseTime + i s + 1 ms).
func at(i int) time.Time { return baseTime.Add(time.Duration(i) * time.Second) }

func TestArchivePruneVerify(t *testing.T) {
	p := newTestPKI(t)
	dir, adir := t.TempDir(), t.TempDir()
	l := startLedger(t, testConfig(p, dir))
	ctx := context.Background()
	appendRange(t, l.Ledger, 0, 60)
	oldSize, oldRoot := l.Root()
	sizes, _, err := l.Checkpoints()
	if err != nil {
		t.Fatal(err)
	}

	if infos, err := l.Archive(ctx, at(0), adir); err != nil || len(infos) != 0 {
		t.Fatalf("nothing due: %v %v", infos, err)
	}
	infos, err := l.Archive(ctx, at(25), adir)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 1 || infos[0].First != 0 || infos[0].End != 25 || infos[0].File != filepath.Join(adir, ArchiveFileName(0)) {
		t.Fatalf("archives: %+v", infos)
	}
	a1 := readFile(t, infos[0].File)
	if sum := sha256.Sum256(a1); !bytes.Equal(sum[:], infos[0].SHA256) {
		t.Fatal("reported hash is not the file's")
	}
	if end, sha, err := l.ArchiveHead(); err != nil || end != 25 || !bytes.Equal(sha, infos[0].SHA256) {
		t.Fatalf("head %d %x %v", end, sha, err)
	}

	// The tree and every proof are unaffected.
	if s, r := l.Root(); s != oldSize || r != oldRoot {
		t.Fatal("archiving changed the tree")
	}
	rep := mustCheck(t, l.Ledger, p)
	if rep.Archived != 25 || rep.Entries != 60 || rep.TokensVerified == 0 || !bytes.Equal(rep.ArchiveSHA256, infos[0].SHA256) {
		t.Fatalf("check report: %s", rep)
	}
	if len(sizes) > 1 {
		proof, err := l.ConsistencyProof(sizes[0], oldSize)
		if err != nil {
			t.Fatal(err)
		}
		r1, _ := l.RootAt(sizes[0])
		if err := merkle.VerifyConsistency(sizes[0], oldSize, r1, oldRoot, toHashesT(t, proof)); err != nil {
			t.Fatal(err)
		}
	}
	path, err := l.InclusionProof(3, oldSize) // an archived leaf: its hash is kept
	if err != nil || len(path) == 0 {
		t.Fatalf("inclusion proof of an archived leaf: %v", err)
	}

	// Archived records are refused with the archive's name; kept ones export.
	_, err = l.Export("msg-000003")
	if !errors.Is(err, ErrArchived) || !strings.Contains(err.Error(), ArchiveFileName(0)) {
		t.Fatalf("export of an archived record: %v", err)
	}
	if _, err := l.Get(24); !errors.Is(err, ErrArchived) {
		t.Fatalf("get 24: %v", err)
	}
	if _, err := l.Get(60); errors.Is(err, ErrArchived) || !errors.Is(err, ErrNotFound) {
		t.Fatalf("get 60: %v", err)
	}
	b, err := l.Export("msg-000030")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := proto.Marshal(b)
	if _, err := VerifyBundle(data, p.roots()); err != nil {
		t.Fatal(err)
	}
	recs, err := l.ByUser("EE38001010000", time.Time{}, time.Time{}, 0)
	if err != nil || len(recs) != 35 || recs[0].Index != 25 {
		t.Fatalf("by user after archiving: %d records, %v", len(recs), err)
	}
	if _, err := l.Body(3); !errors.Is(err, ErrArchived) {
		t.Fatal("an archived body is still readable")
	}

	// The archive verifies on its own.
	v, err := VerifyArchive(a1, make([]byte, 32), p.roots())
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Records) != 25 || v.Records[3].Record.GetMessageId() != "msg-000003" || v.SealedBodies != 9 || v.TreeSize < 25 {
		t.Fatalf("verified: %d records, %d bodies, size %d", len(v.Records), v.SealedBodies, v.TreeSize)
	}

	// An archived record's evidence bundle comes from the archive.
	ab, err := ExportArchived(a1, "msg-000003", testBodyKey)
	if err != nil {
		t.Fatal(err)
	}
	data, _ = proto.Marshal(ab)
	if bv, err := VerifyBundle(data, p.roots()); err != nil || bv.Bodies != 1 || bv.Records[0].Index != 3 {
		t.Fatalf("bundle from the archive: %v", err)
	}
	if _, err := ExportArchived(a1, "msg-000003", bytes.Repeat([]byte{1}, 32)); err == nil {
		t.Fatal("a body decrypted under the wrong key")
	}
	if ab, err := ExportArchived(a1, "msg-000004", nil); err != nil || len(ab.Items) != 1 || ab.Items[0].Body != nil {
		t.Fatalf("without the key: %v", err)
	}
	if _, err := ExportArchived(a1, "msg-000030", nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a kept record from the archive: %v", err)
	}

	// A second archive links to the first; appends continue meanwhile.
	appendRange(t, l.Ledger, 60, 90)
	infos2, err := l.Archive(ctx, at(70), adir)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos2) != 1 || infos2[0].First != 25 || infos2[0].End != 70 || !bytes.Equal(infos2[0].PrevSHA256, infos[0].SHA256) {
		t.Fatalf("second archive: %+v", infos2)
	}
	a2 := readFile(t, infos2[0].File)
	vs, err := VerifyArchiveChain([][]byte{a1, a2}, p.roots())
	if err != nil || len(vs) != 2 {
		t.Fatal(err)
	}
	mustCheck(t, l.Ledger, p)

	// After a restart: the same tree, the same checks, new appends.
	l.stop(t)
	l = startLedger(t, testConfig(p, dir))
	if s := l.Size(); s != 90 {
		t.Fatalf("size after restart %d", s)
	}
	appendRange(t, l.Ledger, 90, 95)
	if rep := mustCheck(t, l.Ledger, p); rep.Archived != 70 || rep.Entries != 95 {
		t.Fatalf("after restart: %s", rep)
	}
	refs, err := l.Archives()
	if err != nil || len(refs) != 2 || refs[1].GetFile() != ArchiveFileName(25) {
		t.Fatalf("refs %v %v", refs, err)
	}
}

func toHashesT(t testing.TB, raw [][]byte) []merkle.Hash {
	t.Helper()
	h, err := toHashes(raw)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// archivedPair returns two linked archive files of a stopped ledger, of
// the records [0, cut1) and [cut1, cut2); n records are appended.
func archivedPair(t testing.TB, p *testPKI, n, cut1, cut2 int) (a1, a2 []byte) {
	t.Helper()
	adir := t.TempDir()
	l := startLedger(t, testConfig(p, t.TempDir()))
	appendRange(t, l.Ledger, 0, n*2/3)
	if _, err := l.Archive(context.Background(), at(cut1), adir); err != nil {
		t.Fatal(err)
	}
	appendRange(t, l.Ledger, n*2/3, n)
	if _, err := l.Archive(context.Background(), at(cut2), adir); err != nil {
		t.Fatal(err)
	}
	l.stop(t)
	return readFile(t, filepath.Join(adir, ArchiveFileName(0))), readFile(t, filepath.Join(adir, ArchiveFileName(uint64(cut1))))
}

func TestArchiveTamper(t *testing.T) {
	p := newTestPKI(t)
	a1, a2 := archivedPair(t, p, 30, 8, 16)
	roots := p.roots()
	if _, err := VerifyArchiveChain([][]byte{a1, a2}, roots); err != nil {
		t.Fatal(err)
	}
	edit := func(data []byte, f func(a *ledgerv1.Archive)) []byte {
		a := &ledgerv1.Archive{}
		if err := proto.Unmarshal(data, a); err != nil {
			t.Fatal(err)
		}
		f(a)
		b, err := proto.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		name  string
		files [][]byte
		want  Reason
		item  string
	}{
		{"entry byte", [][]byte{edit(a2, func(a *ledgerv1.Archive) { a.Entries[2].Entry = flip(a.Entries[2].Entry, 40) })}, ReasonInclusionProof, "item 2"},
		{"proof byte", [][]byte{edit(a2, func(a *ledgerv1.Archive) { a.Entries[1].InclusionPath[0] = flip(a.Entries[1].InclusionPath[0], 3) })}, ReasonInclusionProof, "item 1"},
		{"entries swapped", [][]byte{edit(a2, func(a *ledgerv1.Archive) { a.Entries[0], a.Entries[1] = a.Entries[1], a.Entries[0] })}, ReasonIndexMismatch, "item 0"},
		{"entry dropped", [][]byte{edit(a2, func(a *ledgerv1.Archive) { a.Entries = a.Entries[1:] })}, ReasonArchiveMalformed, "holds 7"},
		{"range shifted", [][]byte{edit(a2, func(a *ledgerv1.Archive) { a.Header.FirstIndex++; a.Header.EndIndex++ })}, ReasonIndexMismatch, "want 9"},
		{"checkpoint signature", [][]byte{edit(a2, func(a *ledgerv1.Archive) { a.Checkpoint.Signature = flip(a.Checkpoint.Signature, 10) })}, ReasonCheckpointSignature, ""},
		{"token", [][]byte{edit(a2, func(a *ledgerv1.Archive) { a.Checkpoint.TimestampToken = nil })}, ReasonTimestampMissing, ""},
		{"body removed", [][]byte{edit(a2, func(a *ledgerv1.Archive) {
			for _, e := range a.Entries {
				e.SealedBody = nil
			}
		})}, ReasonBodyMismatch, ""},
		{"first links back", [][]byte{edit(a1, func(a *ledgerv1.Archive) { a.Header.PrevArchiveSha256[0] = 1 })}, ReasonArchiveLink, "first archive"},
		{"changed byte in the previous file", [][]byte{flip(a1, len(a1)/2), a2}, "", ""}, // any reason
		{"header byte of the previous file", [][]byte{edit(a1, func(a *ledgerv1.Archive) { a.Header.Created.Seconds++ }), a2}, ReasonArchiveLink, "archive 1"},
		{"wrong order", [][]byte{a2, a1}, ReasonArchiveLink, "archive 1"},
		{"same file twice", [][]byte{a1, a1}, ReasonArchiveLink, "archive 1"},
		{"garbage", [][]byte{[]byte("not an archive")}, ReasonArchiveMalformed, ""},
		{"age limit moved", [][]byte{edit(a2, func(a *ledgerv1.Archive) { a.Header.Before.Seconds -= 5 })}, ReasonArchiveMalformed, "not before the archive's limit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := VerifyArchiveChain(c.files, roots)
			if err == nil {
				t.Fatal("verified")
			}
			if c.want != "" && ReasonOf(err) != c.want {
				t.Fatalf("reason %q, want %q: %v", ReasonOf(err), c.want, err)
			}
			if !strings.Contains(err.Error(), c.item) {
				t.Fatalf("error %q does not say %q", err, c.item)
			}
		})
	}
	// A missing middle file breaks the link too.
	if _, err := VerifyArchive(a2, make([]byte, 32), roots); ReasonOf(err) != ReasonArchiveLink {
		t.Fatalf("a2 after nothing: %v", err)
	}
	// Any changed byte of a linked file is detected.
	for i := 0; i < len(a1); i += 7 {
		if _, err := VerifyArchiveChain([][]byte{flip(a1, i), a2}, roots); err == nil {
			t.Fatalf("byte %d of the first archive changed undetected", i)
		}
	}
}

// TestArchiveCrashBetweenPhases runs the two phases of Archive separately,
// as a crash between them would leave them.
func TestArchiveCrashBetweenPhases(t *testing.T) {
	p := newTestPKI(t)
	dir, adir := t.TempDir(), t.TempDir()
	l := startLedger(t, testConfig(p, dir))
	ctx := context.Background()
	appendRange(t, l.Ledger, 0, 30)

	// Crash after writing the file: nothing pruned, the rerun rewrites it.
	a, err := l.writeArchive(ctx, at(10), adir, MaxArchiveEntries)
	if err != nil || a == nil || a.End != 10 {
		t.Fatalf("phase 1: %+v %v", a, err)
	}
	if rep := mustCheck(t, l.Ledger, p); rep.Archived != 0 {
		t.Fatalf("phase 1 pruned: %s", rep)
	}
	if _, err := l.Export("msg-000004"); err != nil {
		t.Fatal(err)
	}
	l.stop(t)
	l = startLedger(t, testConfig(p, dir))
	infos, err := l.Archive(ctx, at(12), adir)
	if err != nil || len(infos) != 1 || infos[0].First != 0 || infos[0].End != 12 {
		t.Fatalf("rerun: %+v %v", infos, err)
	}
	if ents, _ := os.ReadDir(adir); len(ents) != 1 {
		t.Fatalf("archive dir holds %d files, want 1", len(ents))
	}

	// Crash after recording the head but before pruning its leaves: Check
	// names the leftover, a restart finishes the prune.
	b, err := l.writeArchive(ctx, at(20), adir, MaxArchiveEntries)
	if err != nil || b == nil || b.First != 12 || b.End != 20 {
		t.Fatalf("phase 1 again: %+v %v", b, err)
	}
	ref, _ := marshal(&ledgerv1.ArchiveRef{FirstIndex: b.First, EndIndex: b.End, File: filepath.Base(b.File), Sha256: b.SHA256})
	if err := l.prune(b.First, b.First+3, archiveKey(b.End), ref); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Check(ctx, nil); ReasonOf(err) != ReasonStoreCorrupt || !strings.Contains(err.Error(), "15 was archived but is still stored") {
		t.Fatalf("check with an interrupted prune: %v", err)
	}
	l.stop(t)
	l = startLedger(t, testConfig(p, dir))
	if rep := mustCheck(t, l.Ledger, p); rep.Archived != 20 {
		t.Fatalf("after restart: %s", rep)
	}
	vs, err := VerifyArchiveChain([][]byte{readFile(t, filepath.Join(adir, ArchiveFileName(0))), readFile(t, filepath.Join(adir, ArchiveFileName(12)))}, p.roots())
	if err != nil || len(vs) != 2 || vs[1].Header.GetEndIndex() != 20 {
		t.Fatal(err)
	}
	// Every record is in exactly one place.
	for i := uint64(0); i < 30; i++ {
		_, err := l.Get(i)
		if archived := errors.Is(err, ErrArchived); archived != (i < 20) || (!archived && err != nil) {
			t.Fatalf("record %d: %v", i, err)
		}
	}
}

// TestArchiveReader archives with the node stopped, as the CLI does, in
// files of a few leaves.
func TestArchiveReader(t *testing.T) {
	p := newTestPKI(t)
	dir, adir := t.TempDir(), t.TempDir()
	l := startLedger(t, testConfig(p, dir))
	appendRange(t, l.Ledger, 0, 12)
	l.stop(t)
	r, err := OpenReader(dir, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var infos []*ArchiveInfo
	for {
		a, err := r.writeArchive(context.Background(), at(11), adir, 4)
		if err != nil {
			t.Fatal(err)
		}
		if a == nil {
			break
		}
		if err := r.commitArchive(a); err != nil {
			t.Fatal(err)
		}
		infos = append(infos, a)
	}
	if len(infos) != 3 || infos[2].End != 11 {
		t.Fatalf("archives %+v", infos)
	}
	var files [][]byte
	for _, a := range infos {
		files = append(files, readFile(t, a.File))
	}
	if _, err := VerifyArchiveChain(files, p.roots()); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyArchiveChain([][]byte{files[0], files[2]}, p.roots()); ReasonOf(err) != ReasonArchiveLink {
		t.Fatalf("gap: %v", err)
	}
	if rep := mustCheck(t, r, p); rep.Archived != 11 {
		t.Fatalf("check: %s", rep)
	}
}

func FuzzVerifyArchive(f *testing.F) {
	p := newTestPKI(f)
	// Small files: the fuzzer minimizes whole inputs, at the cost of a
	// signature and token check per run.
	a1, a2 := archivedPair(f, p, 3, 1, 2)
	f.Add(a1)
	f.Add(a2)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x02, 0x08, 0x01})
	roots := p.roots()
	var g1 ledgerv1.Archive
	if err := proto.Unmarshal(a1, &g1); err != nil {
		f.Fatal(err)
	}
	good := map[string]bool{}
	for _, e := range g1.Entries {
		good[string(e.Entry)] = true
	}
	var g2 ledgerv1.Archive
	_ = proto.Unmarshal(a2, &g2)
	for _, e := range g2.Entries {
		good[string(e.Entry)] = true
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := VerifyArchive(b, nil, roots)
		if err != nil {
			if ReasonOf(err) == "" {
				t.Fatalf("error without reason: %v", err)
			}
			return
		}
		for _, r := range v.Records {
			if !good[string(r.Raw)] {
				t.Fatalf("a forged entry verified: %x", r.Raw)
			}
		}
	})
}

// TestRetentionInRun: Run archives what is older than Config.Retention
// while records are appended.
func TestRetentionInRun(t *testing.T) {
	p := newTestPKI(t)
	dir, adir := t.TempDir(), t.TempDir()
	cfg := testConfig(p, dir)
	cfg.Now = func() time.Time { return at(100) }
	cfg.Retention, cfg.ArchiveDir, cfg.ArchiveInterval = 60*time.Second, adir, 20*time.Millisecond
	l := startLedger(t, cfg)
	appendRange(t, l.Ledger, 0, 30)
	appendRange(t, l.Ledger, 30, 60)
	waitFor(t, "the retention archive", func() bool {
		end, _, err := l.ArchiveHead()
		return err == nil && end == 40
	})
	l.stop(t)
	r, err := OpenReader(dir, testBodyKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if rep := mustCheck(t, r, p); rep.Archived != 40 || rep.Entries != 60 {
		t.Fatalf("check: %s", rep)
	}
	refs, err := r.Archives()
	if err != nil {
		t.Fatal(err)
	}
	var files [][]byte
	for _, ref := range refs {
		files = append(files, readFile(t, filepath.Join(adir, ref.GetFile())))
	}
	if vs, err := VerifyArchiveChain(files, p.roots()); err != nil || vs[len(vs)-1].Header.GetEndIndex() != 40 {
		t.Fatalf("chain of %d files: %v", len(files), err)
	}

	bad := testConfig(p, dir)
	bad.Retention = time.Hour
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "ArchiveDir") {
		t.Fatalf("validate: %v", err)
	}
}

func FuzzExportArchived(f *testing.F) {
	p := newTestPKI(f)
	a1, _ := archivedPair(f, p, 3, 1, 2)
	f.Add(a1, "msg-000000")
	f.Add([]byte{}, "")
	roots := p.roots()
	f.Fuzz(func(t *testing.T, b []byte, id string) {
		bundle, err := ExportArchived(b, id, testBodyKey)
		if err != nil {
			return
		}
		data, err := proto.Marshal(bundle)
		if err != nil {
			t.Fatal(err)
		}
		// Whatever was exported either verifies or fails with a reason.
		if _, err := VerifyBundle(data, roots); err != nil && ReasonOf(err) == "" {
			t.Fatalf("error without reason: %v", err)
		}
	})
}
