package cli_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// nobody is "another user" of the host: tests run as root, which may give
// a file away.
const nobody = 65534

// plantRecord writes, at the path drain and undrain read for db, a record
// that says the database refused connections: drain would keep it, undrain
// would restore it.
func plantRecord(t *testing.T, dir, db string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(maintenance.Record{Host: cfg.Host, Port: cfg.Port, Database: db, RecordedAt: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	path := maintenance.RecordPath(dir, cfg.Host, cfg.Port, db)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func chown(t *testing.T, path string) {
	t.Helper()
	if err := os.Lchown(path, nobody, nobody); err != nil {
		t.Fatal(err)
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// A drain record another user could have planted or changed is refused,
// by drain (which would keep its settings as the ones to restore) and by
// undrain (which would restore them: ALLOW_CONNECTIONS false, a database
// shut to everyone): one line, exit 2, the database untouched. So is a
// record or a directory of records that is a symbolic link, and a
// directory of records inside a directory others may write.
func TestDrainTrustsOnlyItsOwnRecords(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("giving a file to another user needs root")
	}
	t.Parallel()
	db := pgtest.NewDB(t)
	reopen(t, db)
	for _, tt := range []struct {
		name string
		// plant prepares the state directory given to pgreap, and says
		// what the refusal names.
		plant func(t *testing.T, state string) string
	}{
		{"record of another user", func(t *testing.T, state string) string {
			chown(t, plantRecord(t, state, db))
			return "is owned by uid 65534, not by uid 0 that runs pgreap"
		}},
		{"record writable by others", func(t *testing.T, state string) string {
			chmod(t, plantRecord(t, state, db), 0o666)
			return "is writable by its group or others (mode 0666; chmod go-w it)"
		}},
		{"record a symbolic link", func(t *testing.T, state string) string {
			path := plantRecord(t, state, db)
			elsewhere := filepath.Join(t.TempDir(), "record.json")
			if err := os.Rename(path, elsewhere); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(elsewhere, path); err != nil {
				t.Fatal(err)
			}
			return "is a symbolic link"
		}},
		{"directory of another user", func(t *testing.T, state string) string {
			plantRecord(t, state, db)
			chown(t, state)
			return "is owned by uid 65534, not by uid 0 that runs pgreap"
		}},
		{"directory writable by others", func(t *testing.T, state string) string {
			plantRecord(t, state, db)
			chmod(t, state, 0o777)
			return "is writable by its group or others (mode 0777; chmod go-w it)"
		}},
		{"directory a symbolic link", func(t *testing.T, state string) string {
			real := filepath.Join(t.TempDir(), "real")
			plantRecord(t, real, db)
			if err := os.Symlink(real, state); err != nil {
				t.Fatal(err)
			}
			return "is a symbolic link"
		}},
		{"directory inside one writable by others", func(t *testing.T, state string) string {
			plantRecord(t, state, db)
			chmod(t, filepath.Dir(state), 0o777)
			return "is in " + filepath.Dir(state) + ", writable by its group or others and not sticky (mode 0777)"
		}},
		{"directory inside one of another user", func(t *testing.T, state string) string {
			plantRecord(t, state, db)
			chown(t, filepath.Dir(state))
			return "is in " + filepath.Dir(state) + ", owned by uid 65534 (neither root nor uid 0 that runs pgreap)"
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			state := filepath.Join(t.TempDir(), "state")
			why := tt.plant(t, state)
			env := []string{"PGREAP_STATE_DIR=" + state}
			for _, cmd := range []string{"drain", "undrain"} {
				p := startPgreap(t, env, cmd, db, "--timeout", "5s")
				if cmd == "undrain" {
					p = startPgreap(t, env, cmd, db)
				}
				p.wait(t)
				errOut := p.errOut.String()
				if p.code() != 2 || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, why) ||
					!strings.Contains(errOut, "pgreap trusts only files of its own user that no one else can write; nothing done") {
					t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", cmd, p.code(), p.out.String(), errOut, why)
				}
				if allow, limit := dbSettings(t, db); !allow || limit != -1 {
					t.Fatalf("%s changed the database: ALLOW_CONNECTIONS %t, CONNECTION LIMIT %d", cmd, allow, limit)
				}
			}
		})
	}
}

// drain creates the directory of records 0700 and the record 0600, and
// undrain reads it back: the checks refuse no file pgreap made itself,
// under the sticky /tmp too.
func TestDrainRecordIsPrivate(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	reopen(t, db)
	state := filepath.Join(t.TempDir(), "a", "state")
	env := []string{"PGREAP_STATE_DIR=" + state}
	p := startPgreap(t, env, "drain", db)
	p.wait(t)
	if p.code() != 0 {
		t.Fatalf("drain: exit %d, stderr %q", p.code(), p.errOut.String())
	}
	// The record, and the lock that keeps a second drain or undrain of
	// the database out while one runs.
	files, err := filepath.Glob(filepath.Join(state, "*"))
	if err != nil || len(files) != 2 || !strings.HasSuffix(files[0], ".json") || !strings.HasSuffix(files[1], ".lock") {
		t.Fatalf("records %v (%v)", files, err)
	}
	for path, want := range map[string]os.FileMode{state: 0o700 | os.ModeDir, files[0]: 0o600, files[1]: 0o600} {
		if fi, err := os.Lstat(path); err != nil || fi.Mode() != want {
			t.Errorf("%s: mode %v (%v), want %v", path, fi.Mode(), err, want)
		}
	}
	u := startPgreap(t, env, "undrain", db)
	u.wait(t)
	if u.code() != 0 {
		t.Fatalf("undrain: exit %d, stderr %q", u.code(), u.errOut.String())
	}
	if allow, limit := dbSettings(t, db); !allow || limit != -1 {
		t.Fatalf("after undrain ALLOW_CONNECTIONS %t, CONNECTION LIMIT %d", allow, limit)
	}
}

// One server under two host names (its socket, 127.0.0.1) has a record
// per name: a drain under the other name while the first holds would
// record the blocked database as its settings, and its undrain keep it
// blocked. It is refused, and so is an undrain under the other name, each
// naming the host the drain was recorded for.
func TestDrainUnderAnotherHostName(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	reopen(t, db)
	run(t, false, "drain", db).wantCode(t, 0)
	for _, args := range [][]string{{"-h", "127.0.0.1", "drain", db}, {"-h", "127.0.0.1", "undrain", db}} {
		r := run(t, false, args...)
		r.wantCode(t, 2)
		if strings.Count(strings.TrimSpace(r.errOut), "\n") > 0 || !strings.Contains(r.errOut, "-h "+pgtest.Shared(t).SocketDir()) {
			t.Fatalf("%v: %q", args, r.errOut)
		}
	}
	run(t, false, "undrain", db).wantCode(t, 0)
	if allow, _ := dbSettings(t, db); !allow {
		t.Fatal("still blocked after undrain")
	}
}
