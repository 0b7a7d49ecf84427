package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	registryv1 "github.com/sildmesh/sild/gen/sild/registry/v1"
)

// A backup file restores only as written: a changed, cut or foreign file is
// refused with what is wrong, never restored in part.
func TestBackupFile(t *testing.T) {
	state, err := proto.Marshal(&registryv1.State{Instance: "EE", Ca: &registryv1.KeyPair{Key: []byte("k"), Certificate: []byte("c")}})
	if err != nil {
		t.Fatal(err)
	}
	file := encodeBackup(state)
	st, err := decodeBackup(file)
	if err != nil || st.GetInstance() != "EE" || string(st.GetCa().GetKey()) != "k" {
		t.Fatalf("round trip: %v, %v", st, err)
	}
	flipped := append([]byte(nil), file...)
	flipped[len(flipped)-1] ^= 1
	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"cut short":        {file[:len(file)-3], "checksum"},
		"cut in the sum":   {file[:len(backupMagic)+5], "cut short"},
		"a byte changed":   {flipped, "checksum"},
		"bare state":       {state, "not a registry backup"},
		"empty":            {nil, "not a registry backup"},
		"checksummed junk": {encodeBackup([]byte("junk")), "no registry state"},
	} {
		if _, err := decodeBackup(tc.data); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}

	// sild registry --restore refuses a damaged file before starting.
	clearSildEnv(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "ee.backup")
	if err := os.WriteFile(bad, flipped, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = runCmd(t.Context(), "registry", "--bootstrap", "--restore", bad, "--id", "r9", "--data", filepath.Join(dir, "r9"))
	if err == nil || !strings.Contains(err.Error(), "--restore") || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("restore from a damaged backup: %v", err)
	}
}
