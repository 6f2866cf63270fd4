package cli_test

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pgreap/pgreap/internal/cli"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// clearDB is a database with tables t and other (one row each), and a
// way to open a session of the test in it, named tag-name.
func clearDB(t *testing.T) (dsn string, in func(name string) *pgtest.Victim) {
	t.Helper()
	db := pgtest.NewDB(t)
	in = func(name string) *pgtest.Victim {
		return pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, App: pgtest.Tag(t) + "-" + name})
	}
	in("setup").Exec("CREATE TABLE t (id int); INSERT INTO t VALUES (1); CREATE TABLE other (id int); INSERT INTO other VALUES (1)")
	return "dbname=" + db, in
}

// outcomes are the acted rows as "pid action outcome", sorted.
func outcomes(t *testing.T, out string) []string {
	t.Helper()
	var got []string
	for _, r := range jsonRows(t, out) {
		if r["outcome"] != nil {
			got = append(got, fmt.Sprintf("%v %v %v", r["pid"], r["action"], r["outcome"]))
		}
	}
	slices.Sort(got)
	return got
}

func row(pid int32, action, outcome string) string {
	return fmt.Sprintf("%v %s %s", float64(pid), action, outcome)
}

func wantRows(t *testing.T, got []string, want ...string) {
	t.Helper()
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("rows %q, want %q", got, want)
	}
}

// TestClear: a SELECT running on t is cancelled (its client gets 57014
// and keeps its connection), a transaction idle after reading t is
// terminated (its connection is gone), a session on another table is
// untouched (its own query ends without an error), and the DDL then gets
// its lock at once.
func TestClear(t *testing.T) {
	t.Parallel()
	dsn, in := clearDB(t)
	tag := pgtest.Tag(t)
	reader := in("reader")
	reader.Start("SELECT count(*) FROM t WHERE pg_catalog.pg_sleep(60) IS NOT NULL")
	reader.WaitState("active", "")
	idle := in("idle")
	idle.Exec("BEGIN")
	idle.Exec("SELECT * FROM t")
	bystander := in("bystander")
	bystander.Exec("BEGIN")
	bystander.Exec("SELECT * FROM other")
	busy := in("busy")
	busy.Start("SELECT count(*) FROM other WHERE pg_catalog.pg_sleep(1) IS NOT NULL")
	busy.WaitState("active", "")

	r := run(t, false, "clear", "t", "--app", tag+"-*", "--yes", "-o", "json", "-d", dsn)
	r.wantCode(t, 0)
	wantRows(t, outcomes(t, r.out), row(reader.PID, "cancel", "cancelled"), row(idle.PID, "terminate", "terminated"))

	if err := reader.Wait(); pgtest.SQLState(err) != "57014" {
		t.Errorf("the reader's client got %v, want a cancel (57014)", err)
	}
	reader.Exec("SELECT 1") // a cancel keeps the connection
	if _, err := idle.Conn.Exec(pgtest.Context(t), "SELECT 1"); err == nil {
		t.Error("the idle holder's connection still works")
	}
	if err := busy.Wait(); err != nil {
		t.Errorf("a query on another table got %v", err)
	}
	bystander.Exec("SELECT * FROM other")
	bystander.Exec("COMMIT")
	ddl := in("ddl")
	ddl.Exec("SET lock_timeout = '5s'")
	ddl.Exec("ALTER TABLE t ADD COLUMN x int")
}

// TestClearTerminatesWhatACancelLeftHolding: a statement cancelled inside
// a subtransaction (after a SAVEPOINT, as drivers and ORMs set them) leaves
// the transaction idle in it (aborted), still holding the locks taken
// before the savepoint: clear terminates it; with --cancel it says so,
// exit 3, and leaves it. Without a savepoint the abort releases every lock
// of the transaction: the cancel is enough.
func TestClearTerminatesWhatACancelLeftHolding(t *testing.T) {
	t.Parallel()
	dsn, in := clearDB(t)
	tag := pgtest.Tag(t)
	start := func(name string, savepoint bool) *pgtest.Victim {
		v := in(name)
		v.Exec("BEGIN")
		v.Exec("SELECT * FROM t")
		if savepoint {
			v.Exec("SAVEPOINT a")
		}
		v.Start("SELECT count(*) FROM t WHERE pg_catalog.pg_sleep(60) IS NOT NULL")
		v.WaitState("active", "")
		return v
	}
	v := start("no-savepoint", false)
	r := run(t, false, "clear", "t", "--app", tag+"-*", "--yes", "-o", "json", "-d", dsn)
	r.wantCode(t, 0)
	wantRows(t, outcomes(t, r.out), row(v.PID, "cancel", "cancelled"))
	if err := v.Wait(); pgtest.SQLState(err) != "57014" {
		t.Fatalf("client got %v", err)
	}
	v.Exec("ROLLBACK")

	v = start("only-cancel", true)
	idle := in("idle") // with --cancel: shown, left, exit 3
	idle.Exec("BEGIN")
	idle.Exec("SELECT * FROM t")
	r = run(t, false, "clear", "t", "--app", tag+"-*", "--cancel", "--yes", "-o", "json", "-d", dsn)
	r.wantCode(t, 3)
	wantRows(t, outcomes(t, r.out), row(v.PID, "cancel", "cancelled"), row(idle.PID, "cancel", "changed"))
	if !strings.Contains(r.errOut, "still holding a lock on public.t that conflicts with ACCESS EXCLUSIVE") || !strings.Contains(r.errOut, "--terminate") {
		t.Fatalf("stderr %q", r.errOut)
	}
	if err := v.Wait(); pgtest.SQLState(err) != "57014" {
		t.Fatalf("client got %v", err)
	}
	if !v.Alive() {
		t.Fatal("--cancel terminated")
	}
	v.Exec("ROLLBACK")

	if !idle.Alive() {
		t.Fatal("--cancel terminated a session idle in its transaction")
	}
	v = start("default", true)
	r = run(t, false, "clear", "t", "--app", tag+"-*", "--yes", "-o", "json", "-d", dsn)
	r.wantCode(t, 0)
	wantRows(t, outcomes(t, r.out), row(v.PID, "cancel", "cancelled"), row(v.PID, "terminate", "terminated"), row(idle.PID, "terminate", "terminated"))
	if v.Alive() {
		t.Fatal("the cancelled transaction still holds its locks")
	}
}

// TestClearMode: --mode SHARE (CREATE INDEX) ends the writers of t and
// leaves its readers; ACCESS EXCLUSIVE ends both.
func TestClearMode(t *testing.T) {
	t.Parallel()
	dsn, in := clearDB(t)
	tag := pgtest.Tag(t)
	reader, writer := in("reader"), in("writer")
	reader.Exec("BEGIN")
	reader.Exec("SELECT * FROM t")
	writer.Exec("BEGIN")
	writer.Exec("INSERT INTO t VALUES (2)")
	r := run(t, false, "clear", "t", "--mode", "share", "--app", tag+"-*", "--yes", "-o", "json", "-d", dsn)
	r.wantCode(t, 0)
	wantRows(t, outcomes(t, r.out), row(writer.PID, "terminate", "terminated"))
	if !reader.Alive() {
		t.Fatal("--mode SHARE ended an ACCESS SHARE holder")
	}
	r = run(t, false, "clear", "public.t", "--app", tag+"-*", "--yes", "-o", "json", "-d", dsn)
	r.wantCode(t, 0)
	wantRows(t, outcomes(t, r.out), row(reader.PID, "terminate", "terminated"))
}

// TestClearPreparedTransaction: a prepared transaction holding a lock on
// t is shown, protected, never touched: exit 3.
func TestClearPreparedTransaction(t *testing.T) {
	t.Parallel()
	dsn, _ := clearDB(t)
	db := strings.TrimPrefix(dsn, "dbname=")
	gid := pgtest.PrepareTransaction(t, db, "", "", "LOCK TABLE t IN ACCESS SHARE MODE")
	r := run(t, false, "clear", "t", "--yes", "-o", "json", "-d", dsn)
	r.wantCode(t, 3)
	rows := jsonRows(t, r.out)
	if len(rows) != 1 || rows[0]["gid"] != gid || rows[0]["outcome"] != "protected" ||
		!strings.Contains(rows[0]["detail"].(string), "ROLLBACK PREPARED '"+gid+"'") {
		t.Fatalf("rows %v", rows)
	}
	// The tree names it as the table does, though nothing waits on it.
	r = run(t, true, "clear", "t", "--yes", "-d", dsn)
	r.wantCode(t, 3)
	if lines := strings.Split(r.out, "\n"); len(lines) < 2 || !strings.HasPrefix(lines[1], "prepared:"+gid+"  "+db+"  ") {
		t.Fatalf("the tree does not name the prepared transaction:\n%s", r.out)
	}
	if !pgtest.IsPrepared(t, gid) {
		t.Fatal("the prepared transaction was ended")
	}
}

// TestClearDryRunAndApply: --dry-run ends nothing and shows the tree (the
// holder, the DDL queued behind it); its plan records the lock, which
// apply checks again: a holder that released it since is changed.
func TestClearDryRunAndApply(t *testing.T) {
	t.Parallel()
	dsn, in := clearDB(t)
	tag := pgtest.Tag(t)
	holder := in("holder")
	holder.Exec("BEGIN")
	holder.Exec("SELECT * FROM t")
	ddl := in("ddl")
	ddl.Start("ALTER TABLE t ADD COLUMN x int")
	ddl.WaitState("active", "Lock")

	r := run(t, true, "clear", "t", "--app", tag+"-holder", "--dry-run", "-d", dsn)
	r.wantCode(t, 0)
	if !strings.Contains(r.out, fmt.Sprintf("%d  ", holder.PID)) || !strings.Contains(r.out, "└ waits") || !strings.Contains(r.out, "planned") {
		t.Fatalf("stdout:\n%s", r.out)
	}
	r = run(t, false, "clear", "t", "--app", tag+"-holder", "--dry-run", "-o", "json", "-d", dsn)
	r.wantCode(t, 0)
	if !strings.Contains(r.out, `"lock_conflict":{"objects":[`) || !strings.Contains(r.out, `"mode":"AccessExclusiveLock"`) {
		t.Fatalf("the plan does not record the lock:\n%s", r.out)
	}
	rows := jsonRows(t, r.out)
	if len(rows) != 2 || rows[0]["pid"] != float64(holder.PID) || rows[0]["outcome"] != "planned" || rows[1]["pid"] != float64(ddl.PID) || rows[1]["outcome"] != nil {
		t.Fatalf("rows %v", rows)
	}
	if !holder.Alive() || !ddl.Alive() {
		t.Fatal("a dry run ended a session")
	}
	plan := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(plan, []byte(r.out), 0o600); err != nil {
		t.Fatal(err)
	}
	ddl.Conn.PgConn().CancelRequest(pgtest.Context(t))
	_ = ddl.Wait()
	holder.Exec("SELECT 1") // moved on, same transaction: still holds the lock
	holder.Exec("COMMIT")   // released
	r = run(t, false, "apply", plan, "-o", "json")
	r.wantCode(t, 3)
	wantRows(t, outcomes(t, r.out), row(holder.PID, "terminate", "changed"))
	if !holder.Alive() {
		t.Fatal("apply ended a session that released its lock")
	}
}

// TestClearBadInput: one line, exit 2, nothing done.
func TestClearBadInput(t *testing.T) {
	t.Parallel()
	dsn, in := clearDB(t)
	tag := pgtest.Tag(t)
	holder := in("holder")
	holder.Exec("BEGIN")
	holder.Exec("SELECT * FROM t")
	for _, tt := range []struct {
		name string
		args []string
		msg  string
	}{
		{"unknown table among known", []string{"t", "nosuch"}, `table "nosuch": no such relation in database`},
		{"unknown OID", []string{"4000000000"}, `table "4000000000": no relation has this OID`},
		{"not a name", []string{"a.b.c.d"}, `table "a.b.c.d": `},
		{"another database's", []string{"otherdb.public.t"}, `table "otherdb.public.t": `},
		{"bad mode", []string{"t", "--mode", "ROW"}, `--mode "ROW": not a lock mode`},
		{"cancel and terminate", []string{"t", "--cancel", "--terminate"}, "--cancel and --terminate"},
		{"no table", nil, "requires at least 1 arg"},
		{"no terminal, no --yes", []string{"t"}, "refusing to terminate 1 session"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, false, append(append([]string{"clear"}, tt.args...), "--app", tag+"-*", "-d", dsn)...)
			r.wantCode(t, 2)
			if !strings.Contains(r.errOut, tt.msg) || strings.Count(strings.TrimSpace(r.errOut), "\n") > 0 {
				t.Fatalf("stderr %q, want one line with %q", r.errOut, tt.msg)
			}
			if !holder.Alive() {
				t.Fatal("bad input ended a session")
			}
		})
	}
	r := run(t, false, "clear", "other", "--app", tag+"-*", "--yes", "-d", dsn)
	r.wantCode(t, 1)
}

// TestClearAsks: on a terminal clear lists what it will do and asks; no is
// nothing done, yes ends them. --limit refuses more sessions than N,
// nothing done.
func TestClearAsks(t *testing.T) {
	t.Parallel()
	dsn, in := clearDB(t)
	tag := pgtest.Tag(t)
	a, b := in("a"), in("b")
	for _, v := range []*pgtest.Victim{a, b} {
		v.Exec("BEGIN")
		v.Exec("SELECT * FROM t")
	}
	r := run(t, false, "clear", "t", "--app", tag+"-*", "--limit", "1", "--yes", "-d", dsn)
	r.wantCode(t, 2)
	if !strings.Contains(r.errOut, "more than --limit 1") || !a.Alive() || !b.Alive() {
		t.Fatalf("stderr %q", r.errOut)
	}
	r = runAsk(t, "n\n", "clear", "t", "--app", tag+"-*", "-d", dsn)
	r.wantCode(t, 2)
	if !strings.Contains(r.errOut, "terminate 2 sessions? [y/N]") || !strings.Contains(r.errOut, "not confirmed: nothing done") || !a.Alive() || !b.Alive() {
		t.Fatalf("stderr %q", r.errOut)
	}
	r = runAsk(t, "y\n", "clear", "t", "--app", tag+"-*", "-d", dsn)
	r.wantCode(t, 0)
	if a.Alive() || b.Alive() {
		t.Fatal("confirmed, and a holder is still there")
	}
}

// TestClearSearchPath: a table named without its schema is the one the
// user's own session would find, with the search_path the connection's
// options set (psql with the same string finds evil.t, not public.t), and
// the output names it schema-qualified.
func TestClearSearchPath(t *testing.T) {
	t.Parallel()
	dsn, in := clearDB(t)
	tag := pgtest.Tag(t)
	in("setup").Exec("CREATE SCHEMA evil; CREATE TABLE evil.t (id int)")
	public, evil := in("public"), in("evil")
	public.Exec("BEGIN")
	public.Exec("SELECT * FROM public.t")
	evil.Exec("BEGIN")
	evil.Exec("SELECT * FROM evil.t")
	withPath := dsn + " options=-csearch_path=evil"

	r := run(t, false, "clear", "t", "--app", tag+"-*", "--dry-run", "-o", "json", "-d", withPath)
	r.wantCode(t, 0)
	wantRows(t, outcomes(t, r.out), row(evil.PID, "terminate", "planned"))
	r = run(t, true, "clear", "t", "--app", tag+"-*", "--dry-run", "-d", withPath)
	r.wantCode(t, 0)
	if first, _, _ := strings.Cut(r.out, "\n"); !strings.Contains(first, "lock on evil.t that conflicts with ACCESS EXCLUSIVE") {
		t.Fatalf("the first line does not name the table as resolved:\n%s", r.out)
	}
	r = run(t, false, "clear", "t", "--app", tag+"-*", "--dry-run", "-o", "json", "-d", dsn)
	r.wantCode(t, 0)
	wantRows(t, outcomes(t, r.out), row(public.PID, "terminate", "planned"))
	if !public.Alive() || !evil.Alive() {
		t.Fatal("a dry run ended a session")
	}
}

// TestClearServerSearchPath: a name without its schema is the table psql
// with the same connection string finds, whatever sets the search_path:
// the database's settings, the server's postgresql.conf (the attack:
// pgreap read the built-in default and ended the public.t holder), a
// schema named "evil, public" that does not exist (psql finds no t:
// nothing done). Judged from the clients' side: the evil.t holder's
// connection is gone, the public.t holder's still answers.
func TestClearServerSearchPath(t *testing.T) {
	t.Parallel()
	own := pgtest.Own(t, pgtest.Options{BinDir: pgtest.Shared(t).BinDir, Settings: map[string]string{"search_path": "'evil, public'"}})
	for _, tt := range []struct {
		name, setting string
		cluster       *pgtest.Cluster
		want          string // the holder ended; "" none (no such t)
	}{
		{"database", "evil, public", nil, "evil"},
		{"database quoted", `"evil, public"`, nil, ""},
		{"postgresql.conf", "", own, "evil"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := tt.cluster
			if c == nil {
				c = pgtest.Shared(t)
			}
			tag := pgtest.Tag(t)
			setup := pgtest.Connect(t, c.DSN("postgres", pgtest.Superuser))
			ctx := pgtest.Context(t)
			db := "clear_path"
			if c == own {
				if _, err := setup.Exec(ctx, "CREATE DATABASE "+db); err != nil {
					t.Fatal(err)
				}
			} else {
				db = pgtest.NewDB(t)
			}
			if tt.setting != "" {
				if _, err := setup.Exec(ctx, "ALTER DATABASE "+db+" SET search_path = "+tt.setting); err != nil {
					t.Fatal(err)
				}
			}
			in := func(name string) *pgtest.Victim {
				return pgtest.NewVictim(t, pgtest.VictimOptions{Cluster: c, DB: db, App: tag + "-" + name})
			}
			in("setup").Exec("CREATE SCHEMA evil; CREATE TABLE evil.t (id int); CREATE TABLE public.t (id int)")
			holders := map[string]*pgtest.Victim{"public": in("public"), "evil": in("evil")}
			for schema, v := range holders {
				v.Exec("BEGIN")
				v.Exec("SELECT * FROM " + schema + ".t")
			}
			dsn := c.DSN(db, pgtest.Superuser)
			// What psql would find: a plain client with the same string.
			var found *string
			if err := pgtest.Connect(t, dsn).QueryRow(ctx, `SELECT (SELECT n.nspname FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
				 WHERE c.oid = pg_catalog.to_regclass('t'))`).Scan(&found); err != nil {
				t.Fatal(err)
			}
			r := run(t, false, "clear", "t", "--app", tag+"-*", "--yes", "-o", "json", "-d", dsn)
			if tt.want == "" {
				if found != nil {
					t.Fatalf("a client finds %s.t", *found)
				}
				r.wantCode(t, 2)
				if !strings.Contains(r.errOut, `table "t": no such relation`) {
					t.Fatalf("stderr %q", r.errOut)
				}
			} else {
				if found == nil || *found != tt.want {
					t.Fatalf("a client finds t in %v, want %s", found, tt.want)
				}
				r.wantCode(t, 0)
				wantRows(t, outcomes(t, r.out), row(holders[tt.want].PID, "terminate", "terminated"))
			}
			for schema, v := range holders {
				_, err := v.Conn.Exec(ctx, "SELECT 1")
				if ended := err != nil; ended != (schema == tt.want) {
					t.Errorf("the %s.t holder's client: %v", schema, err)
				}
			}
		})
	}
}

// TestClearPartitions: clearing a partitioned table (or an inheritance
// parent) clears the way on every partition and child under it, however
// deep, since ALTER TABLE without ONLY takes their locks too; after it,
// the DDL gets its locks at once.
func TestClearPartitions(t *testing.T) {
	t.Parallel()
	dsn, in := clearDB(t)
	tag := pgtest.Tag(t)
	in("setup").Exec(`CREATE TABLE parted (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
		CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);
		CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (10) TO (20) PARTITION BY RANGE (id);
		CREATE TABLE parted_2a PARTITION OF parted_2 FOR VALUES FROM (10) TO (15);
		CREATE TABLE inh (id int); CREATE TABLE inh_child () INHERITS (inh)`)
	holders := map[string]*pgtest.Victim{}
	for _, table := range []string{"parted_1", "parted_2a", "inh_child", "other"} {
		v := in(table)
		v.Exec("BEGIN")
		v.Exec("SELECT * FROM " + table)
		holders[table] = v
	}
	r := run(t, false, "clear", "parted", "inh", "--app", tag+"-*", "--yes", "-o", "json", "-d", dsn)
	r.wantCode(t, 0)
	wantRows(t, outcomes(t, r.out), row(holders["parted_1"].PID, "terminate", "terminated"),
		row(holders["parted_2a"].PID, "terminate", "terminated"), row(holders["inh_child"].PID, "terminate", "terminated"))
	if !holders["other"].Alive() {
		t.Fatal("a session on another table was ended")
	}
	ddl := in("ddl")
	ddl.Exec("SET lock_timeout = '5s'")
	ddl.Exec("ALTER TABLE parted ADD COLUMN x int")
	ddl.Exec("ALTER TABLE inh ADD COLUMN x int")
}

// TestClearRefusesWhatIsNotATable: an index, a view, a sequence, a TOAST
// table, a composite type and the system catalogs (by name or OID) are
// refused, one line saying why, exit 2, nothing done; a materialized view
// is a table.
func TestClearRefusesWhatIsNotATable(t *testing.T) {
	t.Parallel()
	dsn, in := clearDB(t)
	tag := pgtest.Tag(t)
	setup := in("setup")
	setup.Exec(`CREATE INDEX t_id ON t (id); CREATE VIEW v AS SELECT * FROM t; CREATE SEQUENCE s;
		CREATE TABLE big (v text); CREATE TYPE ct AS (a int); CREATE MATERIALIZED VIEW mv AS SELECT * FROM t`)
	var toast string
	if err := setup.Conn.QueryRow(pgtest.Context(t), "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'big'::regclass").Scan(&toast); err != nil {
		t.Fatal(err)
	}
	holder := in("holder")
	holder.Exec("BEGIN")
	holder.Exec("SELECT * FROM t")
	for _, tt := range []struct{ table, msg string }{
		{"t_id", `table "t_id": public.t_id is an index of public.t: clear public.t`},
		{"v", `table "v": public.v is a view, not a table: a query on it locks the tables it reads`},
		{"s", `table "s": public.s is a sequence, not a table`},
		{toast, "is the TOAST table of public.big: clear public.big"},
		{"ct", `table "ct": public.ct is a composite type, not a table`},
		{"pg_catalog.pg_class", "pg_catalog.pg_class is a system catalog: every session reads the catalogs"},
		{"pg_class", "pg_catalog.pg_class is a system catalog"},
		{"1259", `table "1259": pg_catalog.pg_class is a system catalog`},
		{"pg_class_oid_index", "pg_catalog.pg_class_oid_index is a system catalog"},
		{"information_schema.tables", "information_schema.tables is a system catalog"},
	} {
		t.Run(tt.table, func(t *testing.T) {
			r := run(t, false, "clear", "t", tt.table, "--app", tag+"-*", "--yes", "-d", dsn)
			r.wantCode(t, 2)
			if !strings.Contains(r.errOut, tt.msg) || strings.Count(strings.TrimSpace(r.errOut), "\n") > 0 {
				t.Fatalf("stderr %q, want one line with %q", r.errOut, tt.msg)
			}
			if !holder.Alive() {
				t.Fatal("a refused table ended a session")
			}
		})
	}
	r := run(t, false, "clear", "mv", "--app", tag+"-*", "--yes", "-d", dsn)
	r.wantCode(t, 1)
}

// TestClearHiddenState: a session this role cannot see the state of (no
// pg_read_all_stats) and cannot end is named as such, not "()".
func TestClearHiddenState(t *testing.T) {
	t.Parallel()
	dsn, in := clearDB(t)
	role := pgtest.NewRole(t, "NOSUPERUSER")
	holder := in("holder")
	holder.Exec("BEGIN")
	holder.Exec("SELECT * FROM t")
	r := run(t, false, "-U", role, "clear", "t", "--terminate", "--yes", "--timeout", "0", "-d", dsn)
	r.wantCode(t, 3)
	if !strings.Contains(r.errOut, fmt.Sprintf("%d (state hidden: pg_read_all_stats)", holder.PID)) {
		t.Fatalf("stderr %q", r.errOut)
	}
	if !holder.Alive() {
		t.Fatal("the holder was ended")
	}
}

// onFirstWrite calls f before the first write goes through to w.
type onFirstWrite struct {
	w    io.Writer
	f    func()
	done bool
}

func (o *onFirstWrite) Write(p []byte) (int, error) {
	if !o.done {
		o.done = true
		o.f()
	}
	return o.w.Write(p)
}

// TestClearDryRunMovedOn: a dry run judges each session at its end; a
// running query planned to be cancelled that ended after the tree was
// shown is changed, and the summary says it did not reach cancelled (the
// action planned), not terminated.
func TestClearDryRunMovedOn(t *testing.T) {
	t.Parallel()
	dsn, in := clearDB(t)
	tag := pgtest.Tag(t)
	reader := in("reader")
	reader.Start("SELECT pg_catalog.pg_sleep(600) FROM t")
	reader.WaitState("active", "Timeout")
	streams, out, errOut := cli.Test()
	streams.OutTTY, streams.Width = true, 200
	// The tree is written after the sessions are chosen and before the
	// dry run judges them: the reader's query ends in between.
	streams.Out = &onFirstWrite{w: out, f: func() {
		if err := reader.Conn.PgConn().CancelRequest(pgtest.Context(t)); err != nil {
			t.Error(err)
		}
		if err := reader.Wait(); pgtest.SQLState(err) != "57014" {
			t.Errorf("reader: %v, want a cancel", err)
		}
	}}
	code := cli.Run(pgtest.Context(t), []string{"clear", "t", "--app", tag + "-*", "--dry-run", "-d", dsn}, streams)
	r := result{code, out.String(), errOut.String()}
	r.wantCode(t, 3)
	if !strings.Contains(r.errOut, "1 of 1 sessions did not reach cancelled: 1 changed") {
		t.Fatalf("stderr %q", r.errOut)
	}
	if !reader.Alive() {
		t.Fatal("a dry run ended a session")
	}
}
