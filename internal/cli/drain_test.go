package cli_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/cli"
	"github.com/pgreap/pgreap/internal/pgtest"
)

func dbSettings(t *testing.T, db string) (allow bool, limit int32) {
	t.Helper()
	err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT datallowconn, datconnlimit FROM pg_catalog.pg_database WHERE datname = $1", db).Scan(&allow, &limit)
	if err != nil {
		t.Fatal(err)
	}
	return allow, limit
}

func connectTo(t *testing.T, db, user string) error {
	t.Helper()
	cn, err := pgx.Connect(pgtest.Context(t), pgtest.Shared(t).DSN(db, user))
	if err == nil {
		cn.Close(context.Background())
	}
	return err
}

// The drained database must be reopened before the test's cleanup drops it.
func reopen(t *testing.T, db string) {
	t.Cleanup(func() {
		_, _ = pgtest.Admin(t).Exec(context.Background(), "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" WITH ALLOW_CONNECTIONS true")
	})
}

// ownedBy gives the database to a new role that is not a superuser, with
// pg_signal_backend and pg_read_all_stats, and returns the role.
func ownedBy(t *testing.T, db string) string {
	t.Helper()
	owner := pgtest.NewRole(t, "NOSUPERUSER", "pg_signal_backend", "pg_read_all_stats")
	pgtest.Exec(t, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" OWNER TO "+pgx.Identifier{owner}.Sanitize())
	t.Cleanup(func() { // before the role is dropped: it cannot be while it owns the database
		_, _ = pgtest.Admin(t).Exec(context.Background(), "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" OWNER TO "+pgtest.Superuser)
	})
	return owner
}

func TestDrainEmptiesAndHoldsUndrainRestores(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	reopen(t, db)
	pgtest.Exec(t, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" CONNECTION LIMIT 7")
	a := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	b := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	b.Exec("BEGIN")
	other := pgtest.NewVictim(t, pgtest.VictimOptions{})

	r := run(t, false, "drain", db, "-o", "json")
	r.wantCode(t, 0)
	if len(jsonRows(t, r.out)) != 2 || !strings.Contains(r.errOut, "is drained (2 sessions ended) and held") {
		t.Fatalf("stdout %s\nstderr %s", r.out, r.errOut)
	}
	if a.Alive() || b.Alive() || !other.Alive() {
		t.Fatal("drain ended the wrong sessions")
	}
	if allow, _ := dbSettings(t, db); allow {
		t.Fatal("still allows connections")
	}
	if err := connectTo(t, db, pgtest.Superuser); err == nil || !strings.Contains(err.Error(), "not currently accepting connections") {
		t.Fatalf("a new connection (even a superuser's): %v", err)
	}

	// Draining again keeps the first record: undrain restores what was
	// there before the first drain, not the blocked state.
	r = run(t, false, "drain", db)
	r.wantCode(t, 0)
	if !strings.Contains(r.errOut, "already drained; keeping the settings recorded") {
		t.Fatalf("stderr %s", r.errOut)
	}

	r = run(t, false, "undrain", db)
	r.wantCode(t, 0)
	if !strings.Contains(r.out, "restored ALLOW_CONNECTIONS true, CONNECTION LIMIT 7") {
		t.Fatalf("stdout %q", r.out)
	}
	if allow, limit := dbSettings(t, db); !allow || limit != 7 {
		t.Fatalf("after undrain: %t %d", allow, limit)
	}
	if err := connectTo(t, db, pgtest.Superuser); err != nil {
		t.Fatal(err)
	}
	// Idempotent.
	r = run(t, false, "undrain", db)
	r.wantCode(t, 0)
	if !strings.Contains(r.out, "already restored") {
		t.Fatalf("stdout %q", r.out)
	}
}

func TestDrainAsOwnerCannotEndASuperusersSession(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	reopen(t, db)
	owner := ownedBy(t, db)
	super := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	mine := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, User: owner})

	// The timeout is the room the owner's session has to end (a
	// superuser's never does).
	r := run(t, false, "-U", owner, "drain", db, "--timeout", "5s", "-o", "csv")
	r.wantCode(t, 3)
	if !strings.Contains(r.out, ",terminate,denied,role postgres is a superuser") ||
		!strings.Contains(r.errOut, "1 session still connected after 5s; "+db+" stays blocked: 'pgreap undrain "+db+"' reopens it") {
		t.Fatalf("stdout %s\nstderr %s", r.out, r.errOut)
	}
	if mine.Alive() || !super.Alive() {
		t.Fatal("wrong sessions ended")
	}
	if allow, _ := dbSettings(t, db); allow {
		t.Fatal("not blocked after the timeout")
	}
	r = run(t, false, "-U", owner, "undrain", db)
	r.wantCode(t, 0)
	if allow, _ := dbSettings(t, db); !allow {
		t.Fatal("not reopened")
	}
}

func TestDrainBadInput(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	stranger := pgtest.NewRole(t, "NOSUPERUSER")
	tests := []struct {
		args []string
		err  string
	}{
		{[]string{"drain"}, "drain takes one database name"},
		{[]string{"drain", "nosuchdb_" + db}, `database "nosuchdb_` + db + `": no such database`},
		{[]string{"drain", "shop*"}, "not a glob"},
		{[]string{"drain", db, "--timeout", "0s"}, "--timeout must be more than zero"},
		{[]string{"-d", "dbname=" + db, "drain", db}, "pgreap would connect to"},
		{[]string{"-U", stranger, "drain", db}, "needs its owner or a superuser"},
		{[]string{"drain", "nosuchdb_" + db, "--dry-run"}, `database "nosuchdb_` + db + `": no such database`},
		{[]string{"-U", stranger, "drain", db, "--dry-run"}, "needs its owner or a superuser"},
		{[]string{"undrain", db}, "no drain record for " + db},
		{[]string{"undrain", db, "--connection-limit", "3"}, "give both --allow-connections and --connection-limit"},
	}
	for _, tt := range tests {
		r := run(t, false, tt.args...)
		if r.code != 2 || !strings.Contains(r.errOut, tt.err) || strings.Count(r.errOut, "\n") != 1 || r.out != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", tt.args, r.code, r.out, r.errOut, tt.err)
		}
	}
	if allow, limit := dbSettings(t, db); !allow || limit != -1 {
		t.Fatalf("bad input changed the database: %t %d", allow, limit)
	}
	// Told the values, undrain sets them.
	r := run(t, false, "undrain", db, "--allow-connections=true", "--connection-limit=5")
	r.wantCode(t, 0)
	if allow, limit := dbSettings(t, db); !allow || limit != 5 {
		t.Fatalf("explicit undrain: %t %d", allow, limit)
	}
}

// --escalate cancels the running queries first; what still runs the same
// query after --grace is terminated, as are the sessions left idle.
func TestDrainEscalateCancelsFirst(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	reopen(t, db)
	sleeper := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	sleeper.Start("SELECT pg_catalog.pg_sleep(60)")
	sleeper.WaitState("active", "")
	// Swallows every cancel: only a terminate ends it.
	stubborn := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	stubborn.Start(`DO $$ BEGIN LOOP BEGIN PERFORM pg_catalog.pg_sleep(60); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$`)
	stubborn.WaitState("active", "")
	idle := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})

	// The grace is the room the cancelled query has to end.
	r := run(t, false, "drain", db, "--escalate", "--grace", "5s", "-o", "json")
	r.wantCode(t, 0)
	if len(jsonRows(t, r.out)) != 3 {
		t.Fatalf("stdout %s\nstderr %s", r.out, r.errOut)
	}
	if code := pgtest.SQLState(sleeper.Wait()); code != "57014" {
		t.Errorf("the running query ended with SQLSTATE %q, want 57014 (cancelled first)", code)
	}
	if code := pgtest.SQLState(stubborn.Wait()); code != "57P01" {
		t.Errorf("the query that ignores cancels ended with SQLSTATE %q, want 57P01 (terminated after the grace)", code)
	}
	if sleeper.Alive() || stubborn.Alive() || idle.Alive() {
		t.Fatal("a session is left")
	}
}

// drainStreams runs pgreap on in-memory streams with standard output and
// standard error each a terminal or not.
func drainStreams(t *testing.T, outTTY, errTTY bool, args ...string) result {
	t.Helper()
	streams, out, errOut := cli.Test()
	streams.OutTTY, streams.ErrTTY = outTTY, errTTY
	code := cli.Run(pgtest.Context(t), args, streams)
	return result{code, out.String(), errOut.String()}
}

// Drain shows how many sessions are left as it works, redrawn with \r on
// standard error: only when standard error is a terminal, whatever
// standard output is, so a redirected log gets no \r lines.
func TestDrainProgressOnlyWhenStderrIsATerminal(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	reopen(t, db)
	pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	r := drainStreams(t, false, true, "drain", db)
	r.wantCode(t, 0)
	if !strings.Contains(r.errOut, "\r"+db+": 1 session left, ") || !strings.Contains(r.errOut, "\r"+db+": 0 sessions left, ") {
		t.Fatalf("stderr a terminal, stdout not: stderr %q", r.errOut)
	}
	run(t, false, "undrain", db).wantCode(t, 0)

	pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	r = drainStreams(t, true, false, "drain", db)
	r.wantCode(t, 0)
	if strings.Contains(r.errOut, "\r") || !strings.Contains(r.errOut, "is drained (1 session ended)") {
		t.Fatalf("stdout a terminal, stderr not: stderr %q", r.errOut)
	}
	run(t, false, "undrain", db).wantCode(t, 0)
}

// recordsOf is the drain records of a database in the tests' state dir.
func recordsOf(t *testing.T, db string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(os.Getenv("PGREAP_STATE_DIR"), "*_"+db+".json"))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// A dry run says what drain would record and block, lists the sessions it
// would end as planned, and changes nothing: no record, the settings as
// they were, every session still there, new connections still let in.
func TestDrainDryRunChangesNothing(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	reopen(t, db)
	pgtest.Exec(t, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" CONNECTION LIMIT 7")
	idle := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	inTx := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	inTx.Exec("BEGIN")
	sleeper := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	sleeper.Start("SELECT pg_catalog.pg_sleep(60)")
	sleeper.WaitState("active", "")
	other := pgtest.NewVictim(t, pgtest.VictimOptions{})

	// No terminal and no --yes: a dry run asks nothing.
	r := run(t, false, "drain", db, "--dry-run", "--escalate", "--grace", "30s", "-o", "json")
	r.wantCode(t, 0)
	var rows []map[string]any
	for _, row := range jsonRows(t, r.out) {
		// Autovacuum visits every database now and then: not a client.
		if row["backend_type"] != "autovacuum worker" {
			rows = append(rows, row)
		}
	}
	planned := map[int32]string{}
	for _, row := range rows {
		if row["outcome"] != "planned" || row["action"] != "terminate" || row["datname"] != db {
			t.Errorf("row %v", row)
		}
		if _, ok := row["guard"]; ok {
			t.Errorf("a drain's dry run is no plan for apply: %v", row)
		}
		planned[int32(row["pid"].(float64))], _ = row["detail"].(string)
	}
	if len(rows) != 3 || len(planned) != 3 {
		t.Fatalf("%d rows, want the 3 sessions of %s:\n%s", len(rows), db, r.out)
	}
	if d, ok := planned[sleeper.PID]; !ok || !strings.Contains(d, "cancelled first, terminated if it still runs it after --grace 30s") {
		t.Errorf("the running query: %q", d)
	}
	if d, ok := planned[idle.PID]; !ok || d != "" {
		t.Errorf("the idle session: %q, %t", d, ok)
	}
	if _, ok := planned[inTx.PID]; !ok {
		t.Errorf("the session in a transaction is not planned")
	}
	for _, want := range []string{
		"pgreap: dry run: drain would first record " + db + "'s settings in ",
		"_" + db + ".json: datallowconn true, datconnlimit 7\n",
		"pgreap: dry run: drain would then set ALLOW_CONNECTIONS false on " + db + ": new connections refused, superusers' too\n",
		"pgreap: dry run: drain would end 3 sessions (planned), cancelling the running queries and terminating the others, then terminating what still runs the same query after --grace 30s, and look again until none is left",
		"pgreap: dry run: nothing was changed\n",
	} {
		if !strings.Contains(r.errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.errOut)
		}
	}

	// Nothing changed.
	if !idle.Alive() || !inTx.Alive() || !sleeper.Alive() || !other.Alive() {
		t.Fatal("a dry run ended a session")
	}
	inTx.Exec("SELECT 1") // its transaction goes on
	if allow, limit := dbSettings(t, db); !allow || limit != 7 {
		t.Fatalf("after the dry run: ALLOW_CONNECTIONS %t, CONNECTION LIMIT %d", allow, limit)
	}
	if files := recordsOf(t, db); len(files) != 0 {
		t.Fatalf("a dry run wrote %v", files)
	}
	if err := connectTo(t, db, pgtest.Superuser); err != nil {
		t.Fatalf("new connections after the dry run: %v", err)
	}

	// Applied, it would end the sessions and block nothing: apply refuses it.
	plan := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(plan, []byte(r.out), 0o600); err != nil {
		t.Fatal(err)
	}
	if a := run(t, false, "apply", plan); a.code != 2 || !idle.Alive() {
		t.Fatalf("apply of a drain's dry run: exit %d, stderr %s", a.code, a.errOut)
	}

	// Table and CSV list the same sessions, planned.
	for _, format := range []string{"table", "csv"} {
		r := run(t, false, "drain", db, "--dry-run", "-o", format)
		r.wantCode(t, 0)
		if n := strings.Count(r.out, "planned"); n != 3 {
			t.Errorf("-o %s: %d planned, want 3:\n%s", format, n, r.out)
		}
	}
	if len(recordsOf(t, db)) != 0 || !sleeper.Alive() {
		t.Fatal("a dry run changed something")
	}
}

// On a database drained already, the dry run names the record a drain
// would keep, and leaves it as it is.
func TestDrainDryRunOfADrainedDatabase(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	reopen(t, db)
	pgtest.Exec(t, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" CONNECTION LIMIT 4")
	run(t, false, "drain", db).wantCode(t, 0)
	files := recordsOf(t, db)
	if len(files) != 1 {
		t.Fatalf("records %v", files)
	}
	before, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}

	r := run(t, false, "drain", db, "--dry-run", "-o", "json")
	r.wantCode(t, 0)
	clients := 0
	for _, row := range jsonRows(t, r.out) {
		if row["backend_type"] != "autovacuum worker" { // it visits every database now and then
			clients++
		}
	}
	if clients != 0 ||
		!strings.Contains(r.errOut, "pgreap: dry run: "+db+" is drained already: drain would keep the settings recorded at ") ||
		!strings.Contains(r.errOut, files[0]+" (datallowconn true, datconnlimit 4), the ones undrain restores\n") ||
		!strings.Contains(r.errOut, "ALLOW_CONNECTIONS false on "+db+" (it is false now)") ||
		!strings.Contains(r.errOut, "drain would terminate 0 sessions (planned) and look again") {
		t.Fatalf("stdout %s\nstderr %s", r.out, r.errOut)
	}
	after, err := os.ReadFile(files[0])
	if err != nil || string(after) != string(before) {
		t.Fatalf("the record changed (%v):\n%s\nwas\n%s", err, after, before)
	}
	run(t, false, "undrain", db).wantCode(t, 0)
	if allow, limit := dbSettings(t, db); !allow || limit != 4 {
		t.Fatalf("after undrain: %t %d", allow, limit)
	}
}

// A dry run judges each session as the drain's signal would: one the role
// may not end is denied, and the dry run says a drain would not empty the
// database (exit 3), still changing nothing.
func TestDrainDryRunSaysWhatDrainCouldNotEnd(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	reopen(t, db)
	owner := ownedBy(t, db)
	super := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	mine := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, User: owner})

	r := run(t, false, "-U", owner, "drain", db, "--dry-run", "--timeout", "2m", "-o", "csv")
	r.wantCode(t, 3)
	if !strings.Contains(r.out, ",terminate,denied,role postgres is a superuser") || !strings.Contains(r.out, ",terminate,planned,") ||
		!strings.Contains(r.errOut, "pgreap: dry run: "+db+": 1 session drain could not end (see detail): a drain would not empty it, and would exit 3 at --timeout 2m0s, leaving "+db+" blocked; nothing was changed\n") {
		t.Fatalf("stdout %s\nstderr %s", r.out, r.errOut)
	}
	if !super.Alive() || !mine.Alive() || len(recordsOf(t, db)) != 0 {
		t.Fatal("a dry run changed something")
	}
	if allow, _ := dbSettings(t, db); !allow {
		t.Fatal("a dry run blocked the database")
	}
}

// Interrupted (Ctrl-C), drain says the database stays blocked and how to
// reopen it; the record lets undrain restore it.
func TestDrainInterrupted(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	reopen(t, db)
	owner := ownedBy(t, db)
	pgtest.Exec(t, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" CONNECTION LIMIT 9")
	// A superuser's session the owner cannot end: drain keeps trying.
	super := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})

	ctx, cancel := context.WithCancel(pgtest.Context(t))
	defer cancel()
	streams, _, errOut := cli.Test()
	done := make(chan int, 1)
	go func() { done <- cli.Run(ctx, []string{"-U", owner, "drain", db, "--timeout", "5m"}, streams) }()
	pgtest.Eventually(t, "the database blocked", func() (bool, error) {
		allow, _ := dbSettings(t, db)
		return !allow, nil
	})
	cancel()
	var code int
	select {
	case code = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("drain did not stop within 5s of the interrupt")
	}
	if code != 3 || !strings.Contains(errOut.String(), "pgreap: "+db+": interrupted; "+db+" stays blocked: 'pgreap undrain "+db+"' reopens it") {
		t.Fatalf("exit %d, stderr %q", code, errOut.String())
	}
	if !super.Alive() {
		t.Fatal("the superuser's session was ended")
	}
	r := run(t, false, "-U", owner, "undrain", db)
	r.wantCode(t, 0)
	if allow, limit := dbSettings(t, db); !allow || limit != 9 {
		t.Fatalf("after undrain: %t %d", allow, limit)
	}
}

// ALLOW_CONNECTIONS false keeps every client out, not autovacuum: drain
// says so, leaves a worker it finds alone (it is not a client), and ends
// it with --include-autovacuum.
func TestDrainSaysAutovacuumStillWorks(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t)
	c, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{"autovacuum_naptime": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	admin, err := pgx.Connect(ctx, c.DSN("postgres", pgtest.Superuser))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, "CREATE DATABASE shop"); err != nil {
		t.Fatal(err)
	}
	worker := pgtest.AutovacuumWorker(t, c, "shop")
	alive := func(pid int32) bool {
		var n int
		if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1", pid).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	dsn := c.DSN("postgres", pgtest.Superuser)

	r := run(t, false, "drain", "shop", "--timeout", "10s", "-d", dsn)
	r.wantCode(t, 0)
	want := "pgreap: shop is drained (0 sessions ended) and held: 'pgreap undrain shop' reopens it; autovacuum is working in it (pid " +
		strconv.Itoa(int(worker)) + ") and can start more workers (ALLOW_CONNECTIONS does not keep them out): --include-autovacuum ends them\n"
	if !strings.HasSuffix(r.errOut, want) || !alive(worker) {
		t.Fatalf("stderr:\n%s\nwant it to end with:\n%s", r.errOut, want)
	}
	run(t, false, "undrain", "shop", "-d", dsn).wantCode(t, 0)

	r = run(t, false, "drain", "shop", "--timeout", "10s", "--include-autovacuum", "-d", dsn, "-o", "json")
	r.wantCode(t, 0)
	if !strings.Contains(r.errOut, "--include-autovacuum ended those it found") || !strings.Contains(r.out, `"backend_type":"autovacuum worker"`) {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", r.out, r.errOut)
	}
	pgtest.Eventually(t, "the worker gone", func() (bool, error) { return !alive(worker), nil })
	run(t, false, "undrain", "shop", "-d", dsn).wantCode(t, 0)

	// The database's owner, not a superuser, without pg_read_all_stats,
	// sees a process with no role and no type: not a client either.
	if _, err := admin.Exec(ctx, "CREATE ROLE shop_owner LOGIN; ALTER DATABASE shop OWNER TO shop_owner"); err != nil {
		t.Fatal(err)
	}
	var next int32
	pgtest.Eventually(t, "autovacuum back in shop", func() (bool, error) {
		err := admin.QueryRow(ctx, "SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = 'shop' AND backend_type = 'autovacuum worker'").Scan(&next)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, nil
		}
		return err == nil, err
	})
	owner := c.DSN("postgres", "shop_owner")
	r = run(t, false, "drain", "shop", "--timeout", "10s", "-d", owner)
	r.wantCode(t, 0)
	if !strings.Contains(r.errOut, "is drained (0 sessions ended)") || !alive(next) {
		t.Fatalf("stderr:\n%s", r.errOut)
	}
	run(t, false, "undrain", "shop", "-d", owner).wantCode(t, 0)
}

// A prepared transaction has no session: drain neither counts nor ends it,
// and says it is there, holding its locks.
func TestDrainNamesThePreparedTransactionsLeft(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	gid := pgtest.PrepareTransaction(t, db, "", "", "CREATE TABLE t (id int)", "LOCK TABLE t")
	reopen(t, db) // its cleanup runs first: the rollback needs a connection
	pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})

	want := fmt.Sprintf("1 prepared transaction in it ('%s' of %s, prepared ", gid, pgtest.Superuser)
	r := run(t, false, "drain", db, "--dry-run")
	r.wantCode(t, 0)
	if !strings.Contains(r.errOut, want) {
		t.Fatalf("dry run: stderr %s", r.errOut)
	}
	r = run(t, false, "drain", db)
	r.wantCode(t, 0)
	if !strings.Contains(r.errOut, "is drained (1 session ended) and held") || !strings.Contains(r.errOut, want) ||
		!strings.Contains(r.errOut, "holds its locks with no session: ROLLBACK PREPARED or COMMIT PREPARED ends them, connected to "+db+", so before a drain or after 'pgreap undrain "+db+"'") {
		t.Fatalf("stderr %q", r.errOut)
	}
	run(t, false, "undrain", db).wantCode(t, 0)
}
