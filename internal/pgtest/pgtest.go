package pgtest

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgreap/pgreap/internal/conn"
)

var (
	shared    *Cluster
	adminPool *pgxpool.Pool
	adminOnce sync.Once
	adminErr  error
	counter   atomic.Int64
)

// Main is TestMain for a package whose tests need a server: it starts the
// package's cluster, points the libpq environment (PGHOST, PGPORT, PGUSER,
// PGDATABASE) at it, runs the tests, removes the cluster and exits.
func Main(m *testing.M, opt Options) {
	os.Exit(Run(m, opt))
}

// Run is Main without the exit, for a TestMain that wraps m (testscript).
func Run(m interface{ Run() int }, opt Options) int {
	if opt.MaxConnections == 0 {
		// The package's PgBouncers (PgBouncer) open up to default_pool_size
		// (20) server connections per database and user, on top of the
		// tests' own sessions.
		opt.MaxConnections = 300
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	c, err := Start(ctx, opt)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: cannot start a PostgreSQL cluster: %v\n", err)
		return 1
	}
	shared = c
	for _, kv := range c.Env() {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	os.Unsetenv("PGSERVICE")
	os.Unsetenv("PGAPPNAME")
	os.Unsetenv("PGOPTIONS")
	code := m.Run()
	stopPgBouncers(code != 0)
	stopStandby(code != 0)
	if adminPool != nil {
		adminPool.Close()
	}
	if code != 0 {
		printTail(fmt.Sprintf("server log tail (PostgreSQL %d)", c.Major), c.LogFile())
	}
	if err := c.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: stop: %v\n", err)
	}
	return code
}

func printTail(what, file string) {
	if tail, err := os.ReadFile(file); err == nil && len(tail) > 0 {
		if len(tail) > 8000 {
			tail = tail[len(tail)-8000:]
		}
		fmt.Fprintf(os.Stderr, "pgtest: %s:\n%s\n", what, tail)
	}
}

// Shared is the cluster that Main started for this test package.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	// TestMain chose the server from these before go test began to watch
	// what the tests read: read them again so that a cached test result
	// never stands for another server version.
	for _, k := range []string{"PGREAP_TEST_PG", "PGREAP_TEST_PGBIN", "PGREAP_PG_CACHE"} {
		_ = os.Getenv(k)
	}
	if shared == nil {
		t.Fatal("pgtest: no cluster: call pgtest.Main from TestMain")
	}
	return shared
}

// Admin is a superuser pool on the shared cluster's postgres database.
func Admin(t testing.TB) *pgxpool.Pool {
	t.Helper()
	c := Shared(t)
	adminOnce.Do(func() {
		adminPool, adminErr = pgxpool.New(context.Background(), c.DSN("postgres", Superuser)+" application_name=pgtest pool_max_conns=8")
	})
	if adminErr != nil {
		t.Fatalf("pgtest: admin pool: %v", adminErr)
	}
	return adminPool
}

// Context is a context bounded by the test's deadline (or 2 minutes).
func Context(t testing.TB) context.Context {
	t.Helper()
	d := 2 * time.Minute
	if tt, ok := t.(*testing.T); ok {
		if dl, ok := tt.Deadline(); ok && time.Until(dl) < d {
			d = time.Until(dl) - time.Second
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

var nonWord = regexp.MustCompile(`[^a-z0-9]+`)

// Tag is the test's tag: its name, cut to fit application_name (63 bytes)
// with a hash that keeps it unique. Sessions a test opens carry it, so the
// test can scope selectors to its own sessions.
func Tag(t testing.TB) string {
	return fit(t.Name(), 63)
}

func fit(s string, n int) string {
	if len(s) <= n {
		return s
	}
	sum := sha1.Sum([]byte(s))
	h := hex.EncodeToString(sum[:4])
	return s[:n-len(h)-1] + "-" + h
}

// Name is a fresh SQL identifier (lower case, [a-z0-9_]) for the test, with
// a prefix, unique in the run.
func Name(t testing.TB, prefix string) string {
	base := strings.Trim(nonWord.ReplaceAllString(strings.ToLower(t.Name()), "_"), "_")
	n := fmt.Sprintf("_%d", counter.Add(1))
	return prefix + fit(base, 63-len(prefix)-len(n)) + n
}

// NewDB creates a database for the test, dropped (with its sessions) when
// the test ends. It returns the database's name.
func NewDB(t testing.TB) string {
	t.Helper()
	ctx := Context(t)
	name := Name(t, "t_")
	if _, err := Admin(t).Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() { dropDB(t, name) })
	return name
}

func dropDB(t testing.TB, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := Admin(t)
	// Sessions the test left open are the test's own: end them so the
	// database can go (DROP DATABASE ... WITH (FORCE) is 13+).
	_, _ = pool.Exec(ctx, `SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE datname = $1`, name)
	for i := 0; i < 100; i++ {
		_, err := pool.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize())
		if err == nil {
			return
		}
		if !strings.Contains(err.Error(), "being accessed by other users") {
			t.Logf("pgtest: drop database %s: %v", name, err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// NewRole creates a login role for the test with the given attributes
// (e.g. "NOSUPERUSER", "PASSWORD 'x'") and grants, dropped when the test ends.
func NewRole(t testing.TB, attrs string, grants ...string) string {
	t.Helper()
	ctx := Context(t)
	name := Name(t, "r_")
	id := pgx.Identifier{name}.Sanitize()
	if _, err := Admin(t).Exec(ctx, "CREATE ROLE "+id+" LOGIN "+attrs); err != nil {
		t.Fatalf("pgtest: create role: %v", err)
	}
	for _, g := range grants {
		if _, err := Admin(t).Exec(ctx, "GRANT "+g+" TO "+id); err != nil {
			t.Fatalf("pgtest: grant %s: %v", g, err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = Admin(t).Exec(ctx, `SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = $1`, name)
		for i := 0; i < 100; i++ {
			if _, err := Admin(t).Exec(ctx, "DROP ROLE IF EXISTS "+id); err == nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	return name
}

// Connect opens a connection with the given DSN, closed when the test ends.
func Connect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(Context(t), dsn)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn.Close(ctx)
	})
	return conn
}

// Eventually polls cond until it returns true or the test's context ends.
func Eventually(t testing.TB, what string, cond func() (bool, error)) {
	t.Helper()
	ctx := Context(t)
	delay := 5 * time.Millisecond
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(delay):
		}
		if delay < 100*time.Millisecond {
			delay *= 2
		}
	}
}

// Exec runs a statement as the superuser on the postgres database.
func Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if _, err := Admin(t).Exec(Context(t), sql, args...); err != nil {
		t.Fatalf("pgtest: %s: %v", sql, err)
	}
}

// Pgreap opens a connection to the shared cluster as the pgreap command
// does (internal/conn: application_name, timeouts, search_path), as user;
// closed when the test ends.
func Pgreap(t testing.TB, user string) *pgx.Conn {
	t.Helper()
	return PgreapDSN(t, Shared(t).DSN("postgres", user))
}

// PgreapDSN is Pgreap to any server: a connection as the pgreap command
// opens it, closed when the test ends.
func PgreapDSN(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	cfg, err := conn.Config(conn.Params{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	cn, err := conn.Connect(Context(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cn.Close(context.Background()) })
	return cn
}

// LockWait makes a lock pile-up in db: holder keeps an ACCESS EXCLUSIVE
// lock on table t in an open transaction, waiter's query waits for it.
func LockWait(t testing.TB, db string) (holder, waiter *Victim) {
	t.Helper()
	holder = NewVictim(t, VictimOptions{DB: db})
	holder.Exec("CREATE TABLE t (id int)")
	holder.Exec("BEGIN")
	holder.Exec("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
	waiter = NewVictim(t, VictimOptions{DB: db})
	waiter.Start("SELECT count(*) FROM t")
	waiter.WaitState("active", "Lock")
	return holder, waiter
}

// Parallel starts a parallel query in a new database: the leader's
// statement runs (Start) until the test ends, and at least one parallel
// worker of it is up when Parallel returns. It returns the database, the
// leader and the pid of one worker.
func Parallel(t testing.TB) (db string, leader *Victim, worker int32) {
	t.Helper()
	db = NewDB(t)
	leader = NewVictim(t, VictimOptions{DB: db})
	leader.Exec("CREATE TABLE big AS SELECT g AS id FROM pg_catalog.generate_series(1, 200000) AS g")
	leader.Exec("ANALYZE big")
	// Make the planner choose a parallel plan on a small table, and keep
	// the workers busy long enough to be seen.
	leader.Exec("SET max_parallel_workers_per_gather = 2")
	leader.Exec("SET parallel_setup_cost = 0")
	leader.Exec("SET parallel_tuple_cost = 0")
	leader.Exec("SET min_parallel_table_scan_size = 0")
	leader.Start("SELECT count(*) FROM big WHERE pg_catalog.pg_sleep(0.001) IS NOT NULL")
	Eventually(t, "a parallel worker", func() (bool, error) {
		err := Admin(t).QueryRow(Context(t),
			"SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'parallel worker' AND datname = $1 LIMIT 1", db).Scan(&worker)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, nil
		}
		return err == nil, err
	})
	return db, leader, worker
}

// SQLState is the SQLSTATE of a server error in err's chain, or "".
func SQLState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// AutovacuumWorker makes autovacuum work in db, slowly, on a cluster
// started with a short autovacuum_naptime (Options.Settings), and returns
// the pid of its worker once it is there. The worker sleeps 100 ms for
// every page it reads, so it stays for minutes.
func AutovacuumWorker(t testing.TB, c *Cluster, db string) int32 {
	t.Helper()
	ctx := Context(t)
	cn, err := pgx.Connect(ctx, c.DSN(db, Superuser))
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer cn.Close(context.Background())
	for _, sql := range []string{
		`CREATE TABLE slow_vacuum (id int, pad text) WITH (autovacuum_vacuum_cost_delay = 100,
		   autovacuum_vacuum_cost_limit = 1, autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0,
		   autovacuum_analyze_threshold = 2000000000)`,
		`INSERT INTO slow_vacuum SELECT g, repeat('x', 200) FROM pg_catalog.generate_series(1, 20000) AS g`,
		`DELETE FROM slow_vacuum WHERE id % 2 = 0`,
	} {
		if _, err := cn.Exec(ctx, sql); err != nil {
			t.Fatalf("pgtest: %s: %v", sql, err)
		}
	}
	var pid int32
	Eventually(t, "an autovacuum worker in "+db, func() (bool, error) {
		// The worker of slow_vacuum, which lasts: another may be at a
		// catalog table, done in milliseconds.
		err := cn.QueryRow(ctx, `SELECT pid FROM pg_catalog.pg_stat_activity
		   WHERE datname = $1 AND backend_type = 'autovacuum worker' AND query LIKE '%slow_vacuum%' LIMIT 1`, db).Scan(&pid)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, nil
		}
		return err == nil, err
	})
	return pid
}

// PrepareTransaction runs the statements as user (default: the superuser)
// in db in a transaction, and prepares it (PREPARE TRANSACTION) as gid (""
// makes one unique to the test): its locks stay held with no backend. It
// returns the GID; the transaction is rolled back when the test ends, if it
// is still prepared (a database with one cannot be dropped).
func PrepareTransaction(t testing.TB, db, user, gid string, sqls ...string) string {
	t.Helper()
	if user == "" {
		user = Superuser
	}
	if gid == "" {
		gid = Name(t, "gx_")
	}
	ctx := Context(t)
	c, err := pgx.Connect(ctx, Shared(t).DSN(db, user))
	if err != nil {
		t.Fatalf("pgtest: prepare transaction: %v", err)
	}
	defer c.Close(ctx) // the transaction outlives its session
	for _, sql := range append(append([]string{"BEGIN"}, sqls...), "PREPARE TRANSACTION "+literal(gid)) {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatalf("pgtest: prepare transaction: %s: %v", sql, err)
		}
	}
	t.Cleanup(func() { RollbackPrepared(t, db, gid) })
	return gid
}

// RollbackPrepared rolls back the prepared transaction gid of db, as the
// superuser, if it is still there.
func RollbackPrepared(t testing.TB, db, gid string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, Shared(t).DSN(db, Superuser))
	if err != nil {
		t.Logf("pgtest: rollback prepared %s: %v", gid, err)
		return
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "ROLLBACK PREPARED "+literal(gid)); err != nil && SQLState(err) != "42704" {
		t.Logf("pgtest: rollback prepared %s: %v", gid, err)
	}
}

// literal quotes s as an SQL string literal (E'...', whatever
// standard_conforming_strings says).
func literal(s string) string {
	return "E'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(s) + "'"
}

// IsPrepared reports whether the prepared transaction gid is still there.
func IsPrepared(t testing.TB, gid string) bool {
	t.Helper()
	var n int
	if err := Admin(t).QueryRow(Context(t), "SELECT count(*) FROM pg_catalog.pg_prepared_xacts WHERE gid = $1", gid).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n == 1
}
