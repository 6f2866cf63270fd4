package cli_test

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/cli"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// execTable makes table t in db and a session that holds a lock on it,
// idle in its transaction (a SELECT: ACCESS SHARE, which any ALTER TABLE
// waits for).
func execTable(t *testing.T, db string) *pgtest.Victim {
	t.Helper()
	holder := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	holder.Exec("CREATE TABLE t (id int)")
	holder.Exec("INSERT INTO t SELECT pg_catalog.generate_series(1, 100)")
	holder.Exec("BEGIN")
	holder.Exec("SELECT count(*) FROM t")
	return holder
}

// clients keeps n sessions reading t, each timing its own statements,
// until stop: the longest any of them waited, and their errors.
type clients struct {
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	longest time.Duration
	runs    int
	errs    []error
}

func startClients(t *testing.T, db string, n int) *clients {
	t.Helper()
	c := &clients{stop: make(chan struct{})}
	for i := 0; i < n; i++ {
		cn := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser)+" application_name="+pgtest.Tag(t)+"-client")
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			for {
				select {
				case <-c.stop:
					return
				default:
				}
				start := time.Now()
				_, err := cn.Exec(context.Background(), "SELECT count(*) FROM t")
				d := time.Since(start)
				c.mu.Lock()
				c.runs++
				c.longest = max(c.longest, d)
				if err != nil {
					c.errs = append(c.errs, err)
				}
				c.mu.Unlock()
			}
		}()
	}
	t.Cleanup(c.end)
	return c
}

func (c *clients) end() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	c.wg.Wait()
}

func TestExecEndsTheBlockerAndCommits(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := execTable(t, db)
	// A session holding a lock on another table is no blocker.
	other := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	other.Exec("CREATE TABLE u (id int)")
	other.Exec("BEGIN")
	other.Exec("SELECT count(*) FROM u")
	cl := startClients(t, db, 3)

	const lockTimeout = time.Second
	r := run(t, false, "exec", "-d", "dbname="+db, "-c", "ALTER TABLE t ADD COLUMN note text",
		"--lock-timeout", lockTimeout.String(), "--between", "100ms", "--yes", "-o", "json")
	cl.end()
	r.wantCode(t, 0)
	rows := jsonRows(t, r.out)
	if len(rows) != 3 {
		t.Fatalf("%d rows:\n%s", len(rows), r.out)
	}
	first, ended, last := rows[0], rows[1], rows[2]
	if first["attempt"] != float64(1) || first["outcome"] != "lock timeout" || first["pid"] != nil ||
		!sameInts(first["blocked_by"], holder.PID) || !strings.Contains(first["detail"].(string), "AccessExclusiveLock on public.t") {
		t.Fatalf("first attempt %v", first)
	}
	if ended["pid"] != float64(holder.PID) || ended["action"] != "terminate" || ended["outcome"] != "terminated" || ended["attempt"] != nil {
		t.Fatalf("ended %v", ended)
	}
	if last["attempt"] != float64(2) || last["outcome"] != "committed" {
		t.Fatalf("last attempt %v", last)
	}
	if holder.Alive() || !other.Alive() {
		t.Fatal("the blocker is alive, or the session on another table was ended")
	}
	// Judged from the clients' side: none waited in a queue behind the
	// ALTER longer than its lock timeout (and some slack for a busy
	// machine); a plain ALTER would hold them until the holder ends.
	if len(cl.errs) > 0 || cl.runs == 0 {
		t.Fatalf("clients: %d statements, errors %v", cl.runs, cl.errs)
	}
	if slack := 2 * time.Second; cl.longest > lockTimeout+slack {
		t.Fatalf("a client waited %s, more than the lock timeout %s plus %s", cl.longest, lockTimeout, slack)
	}
}

func sameInts(v any, want ...int32) bool {
	got, ok := v.([]any)
	if !ok || len(got) != len(want) {
		return false
	}
	for i := range want {
		if got[i] != float64(want[i]) {
			return false
		}
	}
	return true
}

func TestExecClearNoneGivesUp(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := execTable(t, db)
	r := run(t, false, "exec", "-d", "dbname="+db, "-c", "ALTER TABLE t ADD COLUMN note text",
		"--lock-timeout", "200ms", "--attempts", "2", "--between", "0s", "--clear", "none")
	r.wantCode(t, 3)
	pid := strconv.Itoa(int(holder.PID))
	if strings.Count(r.out, ": lock timeout after ") != 2 || !strings.Contains(r.out, "attempt 2: lock timeout") ||
		!strings.Contains(r.out, "└ "+pid+"  "+db) || strings.Contains(r.out, "terminated") {
		t.Fatalf("stdout:\n%s", r.out)
	}
	if !regexp.MustCompile(`^pgreap: gave up after 2 attempts: the last timed out after 2\d\dms waiting for AccessExclusiveLock on public.t, blocked by ` + pid + ` \(idle in transaction\)`).MatchString(r.errOut) {
		t.Fatalf("stderr %q", r.errOut)
	}
	if !holder.Alive() {
		t.Fatal("--clear none ended the blocker")
	}

	// CSV: the attempt columns first, set on attempt rows.
	r = run(t, false, "exec", "-d", "dbname="+db, "-c", "ALTER TABLE t ADD COLUMN note text",
		"--lock-timeout", "200ms", "--attempts", "1", "--clear", "none", "-o", "csv")
	r.wantCode(t, 3)
	recs, err := csv.NewReader(strings.NewReader(r.out)).ReadAll()
	if err != nil || len(recs) != 2 || recs[0][0] != "attempt" || recs[0][1] != "waited_ms" || recs[1][0] != "1" || recs[1][2] != "" {
		t.Fatalf("csv %v %v:\n%s", recs, err, r.out)
	}
}

func TestExecSQLErrorIsNotRetried(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := execTable(t, db)
	r := run(t, false, "exec", "-d", "dbname="+db, "-c", "ALTER TABLE t ADD COLUMN note text; SELEC 1", "--yes")
	r.wantCode(t, 2)
	if r.errOut != "pgreap: the SQL failed: syntax error at or near \"SELEC\" (SQLSTATE 42601) at character 37\n" {
		t.Fatalf("stderr %q", r.errOut)
	}
	if !strings.HasPrefix(r.out, "attempt 1: error after ") || strings.Contains(r.out, "attempt 2") {
		t.Fatalf("stdout:\n%s", r.out)
	}
	if !holder.Alive() {
		t.Fatal("the holder was ended for an SQL error")
	}
}

// The SQL's own permission error is the server's, without pgreap's hint
// about pgreap's privileges.
func TestExecSQLPermissionError(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	execTable(t, db)
	role := pgtest.NewRole(t, "NOSUPERUSER")
	r := run(t, false, "-U", role, "exec", "-d", "dbname="+db, "-c", "ALTER TABLE t ADD COLUMN note text", "--clear", "none")
	r.wantCode(t, 2)
	if r.errOut != "pgreap: the SQL failed: must be owner of table t (SQLSTATE 42501)\n" {
		t.Fatalf("stderr %q", r.errOut)
	}
}

// A blocker whose state this role may not see is said to be hidden.
func TestExecBlockerStateHidden(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	role := pgtest.NewRole(t, "NOSUPERUSER")
	holder := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	holder.Exec("CREATE TABLE t (id int)")
	holder.Exec("ALTER TABLE t OWNER TO " + role)
	holder.Exec("BEGIN")
	holder.Exec("SELECT count(*) FROM t")
	r := run(t, false, "-U", role, "exec", "-d", "dbname="+db, "-c", "ALTER TABLE t ADD COLUMN note text", "--clear", "none",
		"--attempts", "1", "--lock-timeout", "300ms")
	r.wantCode(t, 3)
	if want := fmt.Sprintf("blocked by %d (state hidden: pg_read_all_stats)\n", holder.PID); !strings.HasSuffix(r.errOut, want) {
		t.Fatalf("stderr %q, want it to end %q", r.errOut, want)
	}
}

const twoPhase = "pgreap: the SQL has PREPARE TRANSACTION, COMMIT PREPARED or ROLLBACK PREPARED: exec refuses it (a prepared transaction " +
	"keeps the DDL's locks after exec ends, with no session to end, until someone commits or rolls it back; exec is no two-phase commit coordinator); run it with psql\n"

const callOrDo = "pgreap: the SQL has CALL or DO: exec refuses it (a procedure or DO block may COMMIT or ROLLBACK on its own, " +
	"and pgreap could not tell what committed); run it with psql, or give exec its statements\n"

const setsSettings = "pgreap: the SQL calls set_config or writes pg_settings: exec refuses it (either can set lock_timeout under a name no text check sees, " +
	"and a shorter one makes exec blame the wrong wait); use SET for other settings\n"

func TestExecBadInput(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := execTable(t, db)
	gid := pgtest.Tag(t)
	admin := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	t.Cleanup(func() { // a prepared transaction left would hold its locks, and db
		_, _ = admin.Exec(context.Background(), "ROLLBACK PREPARED '"+gid+"'")
	})
	// Run, it would commit a table of its own: the refusal of CALL is seen.
	if _, err := admin.Exec(pgtest.Context(t), "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN CREATE TABLE called (); COMMIT; END $$"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no SQL", []string{"--yes"}, "pgreap: exec needs the SQL: -c SQL or -f FILE\n"},
		{"both", []string{"-c", "SELECT 1", "-f", "x.sql", "--yes"}, "pgreap: -c and -f: give one of them\n"},
		{"empty", []string{"-c", " ", "--yes"}, "pgreap: the SQL is empty\n"},
		{"no file", []string{"-f", "/nonexistent/x.sql", "--yes"}, "pgreap: /nonexistent/x.sql: no such file or directory\n"},
		{"short lock timeout", []string{"-c", "SELECT 1", "--lock-timeout", "10ms", "--yes"},
			"pgreap: --lock-timeout 10ms: must be at least 100ms (shorter waits end before pgreap can see who holds them up)\n"},
		{"no attempts", []string{"-c", "SELECT 1", "--attempts", "0", "--yes"}, "pgreap: --attempts 0: must be 1 or more\n"},
		{"clear", []string{"-c", "SELECT 1", "--clear", "kill", "--yes"}, "pgreap: --clear \"kill\": must be none, cancel or terminate\n"},
		{"concurrently", []string{"-c", "create index concurrently on t (id)", "--yes"},
			"pgreap: the SQL has CONCURRENTLY: exec refuses it (a lock timeout leaves an invalid index that a retry skips or trips over, " +
				"and it waits for every older transaction, on any table, which exec would end); run it with psql\n"},
		{"lock timeout", []string{"-c", "SET Lock_Timeout = 0; ALTER TABLE t ADD COLUMN note text", "--yes"},
			"pgreap: the SQL sets lock_timeout, or names it: exec sets it before each attempt (--lock-timeout)\n"},
		{"lock timeout by set_config", []string{"-c", "SELECT pg_catalog.set_config('lock_timeout', '0', false)", "--yes"}, setsSettings},
		{"a computed setting", []string{"-c", "SELECT Set_Config('lock' || '_timeout', '50ms', true); ALTER TABLE t ADD COLUMN note text", "--yes"}, setsSettings},
		{"U& identifier", []string{"-c", `SET U&"lock\005ftimeout" = '50ms'; ALTER TABLE t ADD COLUMN note text`, "--yes"},
			"pgreap: the SQL has a U&\"...\" identifier: exec refuses it (it can name lock_timeout with escapes no text check reads); write the name plainly\n"},
		{"pg_settings", []string{"-c", "UPDATE pg_catalog.pg_settings SET setting = '50ms' WHERE name = 'lock' || '_timeout'; ALTER TABLE t ADD COLUMN note text", "--yes"}, setsSettings},
		{"DO", []string{"-c", "-- a block\n do $$ BEGIN CREATE TABLE ran (); COMMIT; END $$", "--yes"}, callOrDo},
		{"DO after another", []string{"-c", "SELECT 1;DO $$ BEGIN NULL; END $$", "--yes"}, callOrDo},
		{"CALL", []string{"-c", "/* p */ CALL p()", "--yes"}, callOrDo},
		// PostgreSQL 16+ takes a vertical tab for white space.
		{"CALL after a vertical tab", []string{"-c", "\vCALL p()", "--yes"}, callOrDo},
		{"PREPARE TRANSACTION", []string{"-c", "BEGIN; CREATE TABLE ran (); PREPARE TRANSACTION '" + gid + "'", "--yes"}, twoPhase},
		{"PREPARE TRANSACTION in comments", []string{"-c", "BEGIN; CREATE TABLE ran (); prepare/* a /* nested */ comment */--\n transaction '" + gid + "'", "--yes"}, twoPhase},
		{"PREPARE TRANSACTION with a vertical tab", []string{"-c", "BEGIN; CREATE TABLE ran (); PREPARE\vTRANSACTION '" + gid + "'", "--yes"}, twoPhase},
		{"COMMIT PREPARED", []string{"-c", "COMMIT PREPARED 'other'", "--yes"}, twoPhase},
		{"ROLLBACK PREPARED", []string{"-c", "ROLLBACK\n\tPREPARED 'other'", "--yes"}, twoPhase},
		{"no terminal", []string{"-c", "ALTER TABLE t ADD COLUMN note text"},
			"pgreap: refusing to terminate the sessions that block the SQL without a terminal to confirm on: add --yes, or --clear none\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, false, append([]string{"exec", "-d", "dbname=" + db}, tc.args...)...)
			r.wantCode(t, 2)
			if r.errOut != tc.want || r.out != "" {
				t.Fatalf("stdout %q, stderr %q", r.out, r.errOut)
			}
		})
	}
	if !holder.Alive() {
		t.Fatal("bad input ended a session")
	}
	var prepared bool
	if err := holder.Conn.QueryRow(pgtest.Context(t), "SELECT EXISTS (SELECT FROM pg_catalog.pg_prepared_xacts WHERE gid = $1)", gid).Scan(&prepared); err != nil || prepared {
		t.Fatalf("the refused PREPARE TRANSACTION ran (%v)", err)
	}
	var ran bool
	if err := holder.Conn.QueryRow(pgtest.Context(t), "SELECT pg_catalog.to_regclass('public.ran') IS NOT NULL OR pg_catalog.to_regclass('public.called') IS NOT NULL").Scan(&ran); err != nil || ran {
		t.Fatalf("the refused DO or CALL ran (%v)", err)
	}
}

func TestExecAsksOnATerminal(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := execTable(t, db)
	r := runAsk(t, "n\n", "exec", "-d", "dbname="+db, "-c", "ALTER TABLE t ADD COLUMN note text", "--lock-timeout", "200ms")
	r.wantCode(t, 2)
	if !strings.Contains(r.errOut, "terminate 1 session blocking attempt 1? [y/N]") || !strings.Contains(r.errOut, "planned") ||
		!strings.HasSuffix(r.errOut, "pgreap: not confirmed: nothing done\n") {
		t.Fatalf("stderr:\n%s", r.errOut)
	}
	if !holder.Alive() || !strings.HasPrefix(r.out, "attempt 1: lock timeout after ") {
		t.Fatalf("ended without a yes, or the attempt not shown:\n%s", r.out)
	}
	// On one terminal: the attempt and who blocked it come before the
	// question whether to end them.
	streams, both, _ := cli.Test()
	streams.ErrOut, streams.In, streams.InTTY = both, strings.NewReader("n\n"), true
	if code := cli.Run(pgtest.Context(t), []string{"exec", "-d", "dbname=" + db, "-c", "ALTER TABLE t ADD COLUMN note text", "--lock-timeout", "200ms"}, streams); code != 2 {
		t.Fatalf("exit %d", code)
	}
	if line, ask := strings.Index(both.String(), "attempt 1: lock timeout"), strings.Index(both.String(), "[y/N]"); line < 0 || ask < 0 || line > ask {
		t.Fatalf("the question before the attempt's line:\n%s", both)
	}

	// A cancel leaves a transaction idle: said, with what ends it.
	r = run(t, false, "exec", "-d", "dbname="+db, "-c", "ALTER TABLE t ADD COLUMN note text", "--lock-timeout", "200ms",
		"--attempts", "2", "--between", "0s", "--clear", "cancel", "--yes")
	r.wantCode(t, 3)
	if !strings.Contains(r.out, "no query running (idle in transaction): nothing to cancel") ||
		!strings.HasSuffix(r.errOut, "(idle in transaction) (a cancel does not end a transaction: --clear terminate)\n") || !holder.Alive() {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", r.out, r.errOut)
	}
}

// --clear cancel ends a running query that holds the lock, and keeps its
// connection.
func TestExecClearCancel(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	holder.Exec("CREATE TABLE t (id int)")
	holder.Exec("INSERT INTO t VALUES (1)")
	holder.Start("SELECT pg_catalog.pg_sleep(60) FROM t")
	holder.WaitState("active", "Timeout")
	r := run(t, false, "exec", "-d", "dbname="+db, "-c", "ALTER TABLE t ADD COLUMN note text",
		"--lock-timeout", "300ms", "--between", "0s", "--clear", "cancel", "--yes", "-o", "json")
	r.wantCode(t, 0)
	rows := jsonRows(t, r.out)
	if len(rows) != 3 || rows[1]["pid"] != float64(holder.PID) || rows[1]["outcome"] != "cancelled" || rows[2]["outcome"] != "committed" {
		t.Fatalf("rows:\n%s", r.out)
	}
	if err := holder.Wait(); pgtest.SQLState(err) != "57014" || !holder.Alive() {
		t.Fatalf("holder: %v, alive %v", err, holder.Alive())
	}
}

// A file runs as one query: its statements commit together, or not at all.
func TestExecFile(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	setup := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	if _, err := setup.Exec(pgtest.Context(t), "CREATE TABLE t (id int)"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, sql string) string {
		p := dir + "/" + name
		if err := os.WriteFile(p, []byte(sql), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	columns := func() int {
		var n int
		if err := setup.QueryRow(pgtest.Context(t), "SELECT count(*) FROM pg_catalog.pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	r := run(t, false, "exec", "-d", "dbname="+db, "--clear", "none", "-f",
		write("bad.sql", "ALTER TABLE t ADD COLUMN a int;\nALTER TABLE t ADD COLUMN a int;\n"))
	r.wantCode(t, 2)
	if !strings.Contains(r.errOut, `column "a" of relation "t" already exists (SQLSTATE 42701)`) || columns() != 1 {
		t.Fatalf("stderr %q, %d columns", r.errOut, columns())
	}
	r = run(t, false, "exec", "-d", "dbname="+db, "--clear", "none", "-f",
		write("good.sql", "ALTER TABLE t ADD COLUMN a int;\nALTER TABLE t ADD COLUMN b int;\n"))
	r.wantCode(t, 0)
	if columns() != 3 || r.errOut != "" {
		t.Fatalf("stderr %q, %d columns", r.errOut, columns())
	}
	r = run(t, false, "exec", "-d", "dbname="+db, "--clear", "none", "-f",
		write("own.sql", "BEGIN;\nALTER TABLE t ADD COLUMN c int;\nCOMMIT;\n"))
	r.wantCode(t, 0)
	if !strings.Contains(r.errOut, "pgreap: note: the SQL has its own transaction control") || columns() != 4 {
		t.Fatalf("stderr %q, %d columns", r.errOut, columns())
	}
	// A byte order mark is dropped, as psql drops it.
	r = run(t, false, "exec", "-d", "dbname="+db, "--clear", "none", "-f",
		write("bom.sql", "\uFEFFALTER TABLE t ADD COLUMN d int;\n"))
	r.wantCode(t, 0)
	if columns() != 5 {
		t.Fatalf("stderr %q, %d columns", r.errOut, columns())
	}
}

// -f reads a regular file of at most 16 MiB: a FIFO (which would block
// the read until a writer came), a directory or a device is refused at
// once, as is a larger file.
func TestExecFileNotRegular(t *testing.T) {
	t.Parallel()
	me := currentUser(t)
	dir := t.TempDir()
	fifo := dir + "/fifo.sql"
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := dir + "/big.sql"
	if err := os.WriteFile(big, []byte("SELECT 1;"+strings.Repeat(" ", 16<<20)), 0o600); err != nil {
		t.Fatal(err)
	}
	nul := dir + "/nul.sql"
	if err := os.WriteFile(nul, []byte("SELECT 1\x00"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := dir + "/link.sql"
	if err := os.WriteFile(dir+"/real.sql", []byte("SELECT 1"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir+"/real.sql", link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path, want string }{
		{"symlink", link, "pgreap: " + link + ": " + link + " is a symbolic link (user " + me + "'s): exec reads no file through a link; give the file's own path\n"},
		{"fifo", fifo, "pgreap: " + fifo + ": not a regular file\n"},
		{"directory", dir, "pgreap: " + dir + ": not a regular file\n"},
		{"device", "/dev/zero", "pgreap: /dev/zero: not a regular file\n"},
		{"too large", big, "pgreap: " + big + ": larger than 16 MiB: exec runs a migration, not a dump\n"},
		{"nul", nul, "pgreap: " + nul + ": a NUL byte at offset 8: not SQL text\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, false, "exec", "-f", tc.path, "--clear", "none")
			r.wantCode(t, 2)
			if r.errOut != tc.want || r.out != "" {
				t.Fatalf("stdout %q, stderr %q", r.out, r.errOut)
			}
		})
	}
}

// exec refuses, before any attempt, a session on which it cannot bound
// its queue: a statement_timeout no longer than --lock-timeout, or a
// pooler between it and the server.
func TestExecRefusesTheSession(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := execTable(t, db)
	r := run(t, false, "exec", "-d", "dbname="+db+" options=-cstatement_timeout=1s", "-c", "ALTER TABLE t ADD COLUMN a int",
		"--lock-timeout", "1s", "--yes")
	r.wantCode(t, 2)
	if r.out != "" || r.errOut != "pgreap: --lock-timeout 1s is not shorter than the session's statement_timeout 1s: an attempt would end by the latter, "+
		"queueing others all along; give a shorter --lock-timeout, or a longer statement_timeout (-d 'options=-cstatement_timeout=...')\n" {
		t.Fatalf("stdout %q, stderr %q", r.out, r.errOut)
	}
	// pgreap's settings travel in options, which PgBouncer refuses
	// unless told to ignore them.
	b := pgtest.OwnPgBouncer(t, pgtest.Shared(t), pgtest.PgBouncerOptions{PoolMode: "session",
		Settings: map[string]string{"ignore_startup_parameters": "options,extra_float_digits,search_path"}})
	r = run(t, false, "exec", "-d", b.DSN(db, pgtest.Superuser), "-c", "ALTER TABLE t ADD COLUMN a int", "--yes")
	r.wantCode(t, 2)
	if r.out != "" || !strings.HasPrefix(r.errOut, "pgreap: the connection does not reach the server directly (pg_backend_pid() is ") ||
		strings.Count(r.errOut, "\n") != 1 {
		t.Fatalf("stdout %q, stderr %q", r.out, r.errOut)
	}
	if !holder.Alive() {
		t.Fatal("a refused run ended a session")
	}
}

// A closed terminal (SIGHUP) or Ctrl-\ (SIGQUIT) stops exec as Ctrl-C
// does: the attempt under way is cancelled on the server and printed, exit
// 2; killed instead, pgreap would leave it running, to commit unseen.
func TestExecSignals(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		sig    syscall.Signal
		column string
	}{{syscall.SIGHUP, "h"}, {syscall.SIGQUIT, "q"}} {
		t.Run(tc.sig.String(), func(t *testing.T) {
			t.Parallel()
			db := pgtest.NewDB(t)
			setup := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
			if _, err := setup.Exec(pgtest.Context(t), "CREATE TABLE t (id int)"); err != nil {
				t.Fatal(err)
			}
			p := startPgreap(t, nil, "exec", "-d", pgtest.Shared(t).DSN(db, pgtest.Superuser), "--clear", "none",
				"-c", "ALTER TABLE t ADD COLUMN "+tc.column+" int; SELECT pg_catalog.pg_sleep(60)")
			pgtest.Eventually(t, "the attempt sleeping", func() (bool, error) {
				var n int
				err := setup.QueryRow(pgtest.Context(t), "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND wait_event = 'PgSleep'", db).Scan(&n)
				return n == 1, err
			})
			if err := p.cmd.Process.Signal(tc.sig); err != nil {
				t.Fatal(err)
			}
			p.wait(t)
			if p.code() != 2 || !strings.HasPrefix(p.out.String(), "attempt 1: error after ") || !strings.Contains(p.out.String(), "interrupted") ||
				strings.Contains(p.errOut.String(), "goroutine") {
				t.Fatalf("exit %d, stdout %q, stderr %q", p.code(), p.out.String(), p.errOut.String())
			}
			pgtest.Eventually(t, "the attempt gone from the server", func() (bool, error) {
				var n int
				err := setup.QueryRow(pgtest.Context(t), "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND query LIKE 'ALTER TABLE t%'", db).Scan(&n)
				return n == 0, err
			})
			var added bool
			if err := setup.QueryRow(pgtest.Context(t), "SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute WHERE attrelid = 'public.t'::pg_catalog.regclass AND attname = $1)",
				tc.column).Scan(&added); err != nil || added {
				t.Fatalf("the column was added (%v)", err)
			}
		})
	}
}

// Timed out after its own COMMIT, the SQL is not tried again: exit 3,
// saying that what ran before the COMMIT stays committed.
func TestExecTimedOutAfterItsCommit(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := execTable(t, db)
	r := run(t, false, "exec", "-d", "dbname="+db, "-c", "CREATE TABLE done (); COMMIT; ALTER TABLE t ADD COLUMN note text",
		"--lock-timeout", "200ms", "--attempts", "3", "--between", "0s", "--clear", "none")
	r.wantCode(t, 3)
	if strings.Count(r.out, ": lock timeout after ") != 1 ||
		!strings.Contains(r.errOut, "pgreap: attempt 1 timed out waiting for a lock after a COMMIT of the SQL had completed: the statements before the SQL's COMMIT committed, and stay; not tried again") {
		t.Fatalf("stdout %q, stderr %q", r.out, r.errOut)
	}
	if !holder.Alive() {
		t.Fatal("--clear none ended the blocker")
	}
}

// -f refuses a symbolic link anywhere in the path given, not only as its
// last component: another user's link to a directory only pgreap's user
// may read would have pgreap send a file from it (its text in the server
// log, in a syntax error).
func TestExecFileLinkInPath(t *testing.T) {
	t.Parallel()
	me := currentUser(t)
	db := pgtest.NewDB(t)
	dir := t.TempDir()
	if err := os.Mkdir(dir+"/private", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/private/m.sql", []byte("CREATE TABLE linked ()"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir+"/private", dir+"/x"); err != nil {
		t.Fatal(err)
	}
	r := run(t, false, "exec", "-d", "dbname="+db, "-f", dir+"/x/m.sql", "--clear", "none")
	r.wantCode(t, 2)
	// Where the link points is never said: another user's link would
	// steer the operator to the file it was made to reach.
	if want := "pgreap: " + dir + "/x/m.sql: " + dir + "/x is a symbolic link (user " + me + "'s): exec reads no file through a link; give the file's own path\n"; r.errOut != want || r.out != "" {
		t.Fatalf("stdout %q, stderr %q, want %q", r.out, r.errOut, want)
	}
	admin := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	var ran bool
	if err := admin.QueryRow(pgtest.Context(t), "SELECT pg_catalog.to_regclass('public.linked') IS NOT NULL").Scan(&ran); err != nil || ran {
		t.Fatalf("the file behind the link ran (%v)", err)
	}
	// The path without links is taken.
	r = run(t, false, "exec", "-d", "dbname="+db, "-f", dir+"/private/m.sql", "--clear", "none")
	r.wantCode(t, 0)
}

// Without openat2 (before Linux 5.6), -f opens the path one component
// after the other, each without following a link.
func TestOpenCheckLinks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.Mkdir(dir+"/d", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/d/f.sql", []byte("SELECT 1"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, l := range [][2]string{{dir + "/d", dir + "/dlink"}, {dir + "/d/f.sql", dir + "/d/flink"}} {
		if err := os.Symlink(l[0], l[1]); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, path string
		err        error
	}{
		{"plain", dir + "/d/f.sql", nil},
		{"dot dot", dir + "/d/../d//f.sql", nil},
		{"link in a directory", dir + "/dlink/f.sql", syscall.ELOOP},
		{"link at the end", dir + "/d/flink", syscall.ELOOP},
		{"missing", dir + "/d/none.sql", syscall.ENOENT},
		{"a file as a directory", dir + "/d/f.sql/x", syscall.ENOTDIR},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := cli.OpenCheckLinks(tc.path)
			if !errors.Is(err, tc.err) || (err == nil) != (tc.err == nil) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			defer f.Close()
			b, err := io.ReadAll(f)
			if err != nil || string(b) != "SELECT 1" {
				t.Fatalf("read %q, %v", b, err)
			}
		})
	}
}

// runIn is run with standard input in, a terminal or not.
func runIn(t *testing.T, in string, tty bool, args ...string) result {
	t.Helper()
	streams, out, errOut := cli.Test()
	streams.In, streams.InTTY = strings.NewReader(in), tty
	code := cli.Run(pgtest.Context(t), args, streams)
	return result{code, out.String(), errOut.String()}
}

// -f - reads the SQL from standard input, as psql -f - does: the same
// limit, the byte order mark dropped; standard input then holds the SQL,
// so ending sessions needs --yes.
func TestExecFromStdin(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := execTable(t, db)
	admin := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	columns := func() int {
		var n int
		if err := admin.QueryRow(pgtest.Context(t), "SELECT count(*) FROM pg_catalog.pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, tc := range []struct {
		name, in string
		tty      bool
		args     []string
		want     string
	}{
		{"needs --yes", "ALTER TABLE t ADD COLUMN a int", false, nil,
			"pgreap: refusing to terminate the sessions that block the SQL without a terminal to confirm on: add --yes, or --clear none\n"},
		{"a terminal", "ALTER TABLE t ADD COLUMN a int", true, []string{"--yes"},
			"pgreap: -f -: standard input is a terminal: pipe the SQL in (pgreap exec -f - --yes < migrate.sql), or give -c SQL or -f FILE\n"},
		{"too large", "SELECT 1;" + strings.Repeat(" ", 16<<20), false, []string{"--yes"},
			"pgreap: standard input: larger than 16 MiB: exec runs a migration, not a dump\n"},
		{"empty", "", false, []string{"--yes"}, "pgreap: the SQL is empty\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runIn(t, tc.in, tc.tty, append([]string{"exec", "-d", "dbname=" + db, "-f", "-"}, tc.args...)...)
			r.wantCode(t, 2)
			if r.errOut != tc.want || r.out != "" {
				t.Fatalf("stdout %q, stderr %q", r.out, r.errOut)
			}
		})
	}
	if !holder.Alive() || columns() != 1 {
		t.Fatalf("refused, yet something was done: holder alive %v, %d columns", holder.Alive(), columns())
	}
	// /dev/stdin is a link (to /proc/self/fd/0): -f - is the way.
	r := runIn(t, "SELECT 1", false, "exec", "-d", "dbname="+db, "-f", "/dev/stdin", "--clear", "none")
	r.wantCode(t, 2)
	if r.errOut != "pgreap: /dev/stdin: /dev/stdin is a symbolic link (user root's): -f - reads standard input\n" {
		t.Fatalf("stderr %q", r.errOut)
	}
	r = runIn(t, "\uFEFFALTER TABLE t ADD COLUMN a int;\nALTER TABLE t ADD COLUMN b int;\n", false,
		"exec", "-d", "dbname="+db, "-f", "-", "--yes", "--between", "10ms", "-o", "json")
	r.wantCode(t, 0)
	if holder.Alive() || columns() != 3 {
		t.Fatalf("holder alive %v, %d columns\n%s", holder.Alive(), columns(), r.out)
	}
}

// exec and clear work in one database: without one named, they refuse
// rather than run in postgres (pgreap's own sessions' default) or the
// user's name (psql's). Not parallel: it unsets PGDATABASE.
func TestExecAndClearNeedADatabase(t *testing.T) {
	t.Setenv("PGDATABASE", "")
	os.Unsetenv("PGDATABASE")
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"exec", []string{"exec", "-c", "CREATE TABLE guessed ()", "--clear", "none"}},
		{"clear", []string{"clear", "pg_class", "--dry-run"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, false, tc.args...)
			r.wantCode(t, 2)
			want := "pgreap: " + tc.name + " runs in one database: name it with -d 'dbname=NAME' (or PGDATABASE); pgreap does not guess it\n"
			if r.errOut != want || r.out != "" {
				t.Fatalf("stdout %q, stderr %q", r.out, r.errOut)
			}
		})
	}
	var guessed bool
	if err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT pg_catalog.to_regclass('public.guessed') IS NOT NULL").Scan(&guessed); err != nil || guessed {
		t.Fatalf("exec ran in a database it guessed (%v)", err)
	}
	// pgreap's own commands still take postgres; a URL's path names one.
	run(t, false, "ls", "--app", pgtest.Tag(t)).wantCode(t, 1)
	db := pgtest.NewDB(t)
	c := pgtest.Shared(t)
	url := fmt.Sprintf("postgresql://%s@127.0.0.1:%d/%s?sslmode=disable", pgtest.Superuser, c.Port, db)
	run(t, false, "exec", "-d", url, "-c", "SELECT 1", "--clear", "none").wantCode(t, 0)
}

// currentUser is the name of the user the test runs as, as an error names
// the owner of a link.
func currentUser(t *testing.T) string {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}
