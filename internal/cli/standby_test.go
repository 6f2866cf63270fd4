package cli_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// onStandby runs pgreap in-process against the package's standby.
func onStandby(t *testing.T, args ...string) result {
	t.Helper()
	return run(t, false, append(args, "-d", pgtest.Standby(t).DSN("postgres", pgtest.Superuser))...)
}

// standbyDB is a new database of the test, replayed on the standby.
func standbyDB(t *testing.T) string {
	t.Helper()
	db := pgtest.NewDB(t)
	pgtest.WaitReplay(t, pgtest.Standby(t), pgtest.Shared(t))
	return db
}

func standbyVictim(t *testing.T, db string) *pgtest.Victim {
	t.Helper()
	return pgtest.NewVictim(t, pgtest.VictimOptions{Cluster: pgtest.Standby(t), DB: db})
}

func connectToStandby(t *testing.T, db string) error {
	t.Helper()
	cn, err := pgx.Connect(pgtest.Context(t), pgtest.Standby(t).DSN(db, pgtest.Superuser))
	if err == nil {
		cn.Close(context.Background())
	}
	return err
}

// drain and undrain on a standby refuse at once, dry run included: one
// line, exit 2, no record and no lock file written, nothing ended,
// nothing changed on the server.
func TestDrainOnStandbyRefuses(t *testing.T) {
	t.Parallel()
	db := standbyDB(t)
	reopen(t, db)
	v := standbyVictim(t, db)
	for _, tc := range []struct {
		name string
		args []string
		line string
	}{
		{"drain", []string{"drain", db}, "pgreap: standby: drain on the primary; the block reaches every standby by replication\n"},
		{"dry run", []string{"drain", db, "--dry-run"}, "pgreap: standby: drain on the primary; the block reaches every standby by replication\n"},
		{"undrain", []string{"undrain", db}, "pgreap: standby: undrain on the primary; the restored settings reach every standby by replication\n"},
		{"undrain with values", []string{"undrain", db, "--allow-connections=false", "--connection-limit=0"},
			"pgreap: standby: undrain on the primary; the restored settings reach every standby by replication\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := onStandby(t, tc.args...)
			r.wantCode(t, 2)
			if r.errOut != tc.line || r.out != "" {
				t.Fatalf("stdout %q\nstderr %q\nwant stderr %q", r.out, r.errOut, tc.line)
			}
		})
	}
	if files := recordsOf(t, db); len(files) > 0 {
		t.Errorf("records written: %v", files)
	}
	locks, _ := filepath.Glob(filepath.Join(os.Getenv("PGREAP_STATE_DIR"), "*_"+db+".lock"))
	if len(locks) > 0 {
		t.Errorf("lock files made: %v", locks)
	}
	if allow, limit := dbSettings(t, db); !allow || limit != -1 {
		t.Errorf("on the primary: datallowconn %v, datconnlimit %d; want true, -1", allow, limit)
	}
	if !v.Alive() {
		t.Error("the standby's session was ended")
	}
	if err := connectToStandby(t, db); err != nil {
		t.Errorf("a new connection on the standby: %v", err)
	}
}

// cancel, terminate and kick act on a standby's sessions as on a
// primary's, each checked from the client or the server.
func TestActOnStandby(t *testing.T) {
	t.Parallel()
	t.Run("cancel", func(t *testing.T) {
		t.Parallel()
		v := standbyVictim(t, "postgres")
		v.Start("SELECT pg_catalog.pg_sleep(600)")
		v.WaitState("active", "")
		r := onStandby(t, "cancel", "--app", pgtest.Tag(t), "--yes", "-o", "json")
		r.wantCode(t, 0)
		if rows := jsonRows(t, r.out); len(rows) != 1 || rows[0]["pid"] != float64(v.PID) || rows[0]["outcome"] != "cancelled" {
			t.Fatalf("rows %s", r.out)
		}
		if err := v.Wait(); pgtest.SQLState(err) != "57014" {
			t.Fatalf("the client got %v, want query_canceled (57014)", err)
		}
		if !v.Alive() {
			t.Fatal("cancel ended the connection")
		}
	})
	t.Run("terminate", func(t *testing.T) {
		t.Parallel()
		v := standbyVictim(t, "postgres")
		other := pgtest.NewVictim(t, pgtest.VictimOptions{App: pgtest.Tag(t)}) // on the primary: another server
		r := onStandby(t, "terminate", "--app", pgtest.Tag(t), "--yes", "-o", "json")
		r.wantCode(t, 0)
		if rows := jsonRows(t, r.out); len(rows) != 1 || rows[0]["pid"] != float64(v.PID) || rows[0]["outcome"] != "terminated" {
			t.Fatalf("rows %s", r.out)
		}
		if v.Alive() || !other.Alive() {
			t.Fatalf("standby's session alive %v, primary's %v; want false, true", v.Alive(), other.Alive())
		}
	})
	t.Run("kick", func(t *testing.T) {
		t.Parallel()
		db := standbyDB(t)
		a, b := standbyVictim(t, db), standbyVictim(t, db)
		b.Start("SELECT pg_catalog.pg_sleep(600)")
		r := onStandby(t, "kick", "--db", db, "--yes", "-o", "json")
		r.wantCode(t, 0)
		if rows := jsonRows(t, r.out); len(rows) != 2 {
			t.Fatalf("rows %s", r.out)
		}
		if a.Alive() || b.Alive() {
			t.Fatal("a session of the standby's database is left")
		}
	})
}

// The maintenance window over a primary and its standby: drain on the
// primary, kick on the standby once replay brought the block, undrain on
// the primary; the standby refuses new connections in between, and lets
// them in once replay brought the undrain.
func TestDrainPrimaryKickStandby(t *testing.T) {
	t.Parallel()
	s, primary := pgtest.Standby(t), pgtest.Shared(t)
	db := standbyDB(t)
	reopen(t, db)
	onPrimary := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	a, b := standbyVictim(t, db), standbyVictim(t, db)
	b.Start("SELECT pg_catalog.pg_sleep(600)")

	run(t, false, "drain", db).wantCode(t, 0)
	if onPrimary.Alive() || !a.Alive() || !b.Alive() {
		t.Fatal("drain on the primary must end the primary's sessions only")
	}
	pgtest.WaitReplay(t, s, primary)
	r := onStandby(t, "kick", "--db", db, "--yes", "-o", "json")
	r.wantCode(t, 0)
	if rows := jsonRows(t, r.out); len(rows) != 2 || a.Alive() || b.Alive() {
		t.Fatalf("kick on the standby: %s", r.out)
	}
	if err := connectToStandby(t, db); err == nil || !strings.Contains(err.Error(), "not currently accepting connections") {
		t.Fatalf("a new connection on the standby while drained: %v", err)
	}

	run(t, false, "undrain", db).wantCode(t, 0)
	pgtest.WaitReplay(t, s, primary)
	if err := connectToStandby(t, db); err != nil {
		t.Fatalf("a new connection on the standby after undrain: %v", err)
	}
}

// A standby has its primary's system_identifier and a postmaster of its
// own: a plan made on the primary is refused whole on the standby (and
// the other way round), one line, exit 2, nothing signalled; a plan made
// on the standby applies there.
func TestApplyOnStandby(t *testing.T) {
	t.Parallel()
	onPrimary := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v := standbyVictim(t, "postgres")
	r := run(t, false, "terminate", "--app", pgtest.Tag(t), "--dry-run", "-o", "json")
	r.wantCode(t, 0)
	fromPrimary := writePlan(t, "primary.json", r.out)
	// The same plan edited to name the standby's session.
	edited := writePlan(t, "edited.json", retarget(r.out, v))
	r = onStandby(t, "terminate", "--app", pgtest.Tag(t), "--dry-run", "-o", "json")
	r.wantCode(t, 0)
	fromStandby := writePlan(t, "standby.json", r.out)

	refused := regexp.MustCompile(`^pgreap: the plan was made on another server of this cluster \(a primary or standby of it\) or before a restart \(postmaster started [^ ]+, this server's [^ ]+\): nothing done\n$`)
	for _, tc := range []struct {
		name string
		r    func() result
	}{
		{"primary's plan on the standby", func() result { return onStandby(t, "apply", fromPrimary) }},
		{"primary's plan naming the standby's session", func() result { return onStandby(t, "apply", edited) }},
		{"standby's plan on the primary", func() result { return run(t, false, "apply", fromStandby) }},
	} {
		r := tc.r()
		if r.code != 2 || r.out != "" || !refused.MatchString(r.errOut) {
			t.Fatalf("%s: exit %d, stdout %q, stderr %q", tc.name, r.code, r.out, r.errOut)
		}
	}
	if !onPrimary.Alive() || !v.Alive() {
		t.Fatal("a refused plan ended a session")
	}
	r = onStandby(t, "apply", fromStandby, "-o", "json")
	r.wantCode(t, 0)
	if rows := jsonRows(t, r.out); len(rows) != 1 || rows[0]["pid"] != float64(v.PID) || rows[0]["outcome"] != "terminated" {
		t.Fatalf("rows %s", r.out)
	}
	if v.Alive() || !onPrimary.Alive() {
		t.Fatal("the standby's plan must end the standby's session only")
	}
}
