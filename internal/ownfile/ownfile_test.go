package ownfile_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pgreap/pgreap/internal/ownfile"
)

// A FIFO planted where a record is read would hold pgreap at open(2),
// waiting for a writer: it is refused at once.
func TestReadFileRefusesAFIFOWithoutWaiting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "record.json")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ownfile.ReadFile(path)
	if !errors.Is(err, ownfile.ErrNotOwn) || !strings.Contains(err.Error(), path+" is not a regular file") {
		t.Fatalf("error %v", err)
	}
}

// A directory above the records may be writable by others only when it is
// sticky, as /tmp is: there, no one may rename or remove what is not
// theirs.
func TestDirAboveWritableByOthersOnlyWhenSticky(t *testing.T) {
	above := t.TempDir()
	dir := filepath.Join(above, "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		mode os.FileMode
		ok   bool
	}{{0o755, true}, {0o777 | os.ModeSticky, true}, {0o777, false}, {0o775, false}} {
		if err := os.Chmod(above, tt.mode); err != nil {
			t.Fatal(err)
		}
		err := ownfile.Dir(dir)
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ownfile.ErrNotOwn)) {
			t.Errorf("above %v: %v", tt.mode, err)
		}
	}
}
