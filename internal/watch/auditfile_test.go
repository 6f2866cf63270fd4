package watch_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pgreap/pgreap/internal/ownfile"
	"github.com/pgreap/pgreap/internal/watch"
)

// nobody is the uid of "another user" on the host: tests run as root, which
// may give a file away.
const nobody = 65534

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("giving a file to another user needs root")
	}
}

func writeFile(t *testing.T, path, text string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// An audit log a shell user could have planted (a symbolic link to a file
// of root's, a file of theirs, one they may write, a hard link, a FIFO) is
// refused with one line, and nothing is written through it: a daemon
// running as root would otherwise append to any file of the attacker's
// choosing, or write lines the attacker can rewrite.
func TestAuditLogMustBeItsOwn(t *testing.T) {
	for _, tt := range []struct {
		name  string
		root  bool
		plant func(t *testing.T, path, victim string)
		why   string
	}{
		{"symbolic link", false, func(t *testing.T, path, victim string) {
			if err := os.Symlink(victim, path); err != nil {
				t.Fatal(err)
			}
		}, "is a symbolic link"},
		{"another user's", true, func(t *testing.T, path, victim string) {
			writeFile(t, path, "", 0o600)
			if err := os.Chown(path, nobody, nobody); err != nil {
				t.Fatal(err)
			}
		}, "is owned by uid 65534"},
		{"writable by others", false, func(t *testing.T, path, victim string) {
			writeFile(t, path, "", 0o666)
		}, "is writable by its group or others (mode 0666"},
		{"writable by its group", false, func(t *testing.T, path, victim string) {
			writeFile(t, path, "", 0o660)
		}, "is writable by its group or others (mode 0660"},
		{"hard link", false, func(t *testing.T, path, victim string) {
			if err := os.Link(victim, path); err != nil {
				t.Fatal(err)
			}
		}, "has 2 names (hard links)"},
		{"FIFO", false, func(t *testing.T, path, victim string) {
			if err := syscall.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "is not a regular file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root {
				needRoot(t)
			}
			dir := t.TempDir()
			victim := filepath.Join(dir, "victim")
			writeFile(t, victim, "precious\n", 0o600)
			path := filepath.Join(dir, "audit.jsonl")
			tt.plant(t, path, victim)
			a, err := watch.OpenAudit(path, nil)
			if err == nil {
				a.Write(watch.Entry{Rule: "planted"})
				a.Close()
				t.Fatalf("audit log accepted; victim now %q", readFile(t, victim))
			}
			if !errors.Is(err, ownfile.ErrNotOwn) || !strings.Contains(err.Error(), "audit_log: "+path+" "+tt.why) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q, want one line with %q", err, tt.why)
			}
			if got := readFile(t, victim); got != "precious\n" {
				t.Fatalf("victim changed: %q", got)
			}
		})
	}
}

// pgreap creates its audit log 0600; a log the operator made readable by
// a group (0640) is kept so; both rotations of logrotate keep working:
// copytruncate (the next line lands at the start of the emptied file) and
// create (SIGHUP reopens: a new file, 0600).
func TestAuditLogCreatedPrivateAndRotated(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	a, err := watch.OpenAudit(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	wantMode := func(m os.FileMode) {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != m {
			t.Fatalf("mode %v (%v), want %v", fi.Mode(), err, m)
		}
	}
	wantMode(0o600)
	if err := a.Write(watch.Entry{Rule: "one"}); err != nil {
		t.Fatal(err)
	}
	// copytruncate
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Write(watch.Entry{Rule: "two"}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, path); !strings.HasPrefix(got, `{"time"`) || !strings.Contains(got, `"rule":"two"`) || strings.Count(got, "\n") != 1 {
		t.Fatalf("after copytruncate: %q", got)
	}
	// The operator lets a group read it.
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := a.Reopen(); err != nil {
		t.Fatalf("a 0640 log refused: %v", err)
	}
	wantMode(0o640)
	// create: moved away, reopened on SIGHUP.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := a.Reopen(); err != nil {
		t.Fatal(err)
	}
	wantMode(0o600)
	if err := a.Write(watch.Entry{Rule: "three"}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, path); !strings.Contains(got, `"rule":"three"`) || strings.Count(got, "\n") != 1 {
		t.Fatalf("after create: %q", got)
	}
	// Replaced by a symbolic link before the next SIGHUP: refused, and the
	// file in use stays in use.
	if err := os.Rename(path, path+".2"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(path+".1", path); err != nil {
		t.Fatal(err)
	}
	if err := a.Reopen(); err == nil || !strings.Contains(err.Error(), "is a symbolic link") {
		t.Fatalf("reopen through a symbolic link: %v", err)
	}
	if err := a.Write(watch.Entry{Rule: "four"}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, path+".2"); !strings.Contains(got, `"rule":"four"`) {
		t.Fatalf("the file in use: %q", got)
	}
	if got := readFile(t, path+".1"); strings.Contains(got, `"rule":"four"`) {
		t.Fatalf("written through the link: %q", got)
	}
}
