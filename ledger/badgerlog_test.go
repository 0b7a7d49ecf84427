package ledger

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

type countingStringer struct{ n *int }

func (c countingStringer) String() string { *c.n++; return "x" }

// Badger logs at debug level on every write: a message below the logger's
// level must not even be formatted; others reach the log with their level.
func TestBadgerLoggerFormatsOnlyEnabledLevels(t *testing.T) {
	var buf bytes.Buffer
	l := badgerLogger{slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	n := 0
	l.Debugf("debug %v\n", countingStringer{&n})
	l.Infof("info %v\n", countingStringer{&n})
	if n != 0 || buf.Len() != 0 {
		t.Fatalf("disabled levels formatted %d times, wrote %q", n, buf.String())
	}
	l.Warningf("compaction %v\n", countingStringer{&n})
	l.Errorf("broken %d\n", 7)
	out := buf.String()
	if n != 1 || !strings.Contains(out, "level=WARN msg=\"compaction x\" component=badger") || !strings.Contains(out, "level=ERROR msg=\"broken 7\"") {
		t.Fatalf("log: %q (formatted %d times)", out, n)
	}
}
