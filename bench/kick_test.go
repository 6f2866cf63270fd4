package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// The statements of the kick baselines. $1 is the database whose sessions
// they end; they run on a connection to another database (postgres), and
// leave their own session out all the same.
const (
	kickFloorSQL  = `SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid()`
	kickLeftSQL   = `SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = $1`
	kickPIDsSQL   = `SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid()`
	kickOneSQL    = `SELECT pg_catalog.pg_terminate_backend($1)`
	kickSerialSQL = `SELECT pg_catalog.pg_terminate_backend(pid, 5000) FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid()`
)

// BenchmarkKick ends every client connection of a database four ways, in
// the sub-benchmarks N=200 and N=1000 (the number of sessions). Each
// variant gets a database of its own, kick_<N>_<iteration>_<variant>,
// created for it and holding N fresh idle sessions (pgx, 32 at a time,
// application_name kick-<N>-<iteration>-<variant>), all in the same
// cluster; the order of the variants rotates from one iteration to the
// next:
//
//	pgreap  `pgreap kick --db DB --yes -o json`, a fresh process, timed
//	        from start to exit; its JSON must list N sessions of DB, all
//	        terminated.
//	floor   a fresh pgx connection, one pg_terminate_backend(pid)
//	        statement for the database's sessions, then a count of them
//	        in pg_stat_activity every 5 ms until it is 0 (terminate's
//	        floor, by database); timed from connect to close.
//	perpid  a fresh pgx connection, the database's pids in one
//	        statement, then one pg_terminate_backend($1) statement per
//	        pid (N round trips), then the same polls until 0; timed from
//	        connect to close.
//	serial  a fresh pgx connection and one pg_terminate_backend(pid, 5000)
//	        statement (PostgreSQL 14+), which waits for each backend in
//	        turn; timed from connect to close, and the database must be
//	        empty when it returns.
//
// Creating the database and opening the sessions is not timed, nor is
// dropping the database afterwards (leftovers terminated first). Each
// iteration logs every variant's time and how long its sessions took to go
// (the first to the last of their FATAL lines in the server log).
//
// Autovacuum is switched off in the benchmark's cluster: a worker visiting
// a fresh database would be one more session of it (one the floor would
// end and pgreap would list as protected).
//
// The serial variant takes about 100 ms per session: 20 s at N=200, 100 s
// at N=1000. One iteration of both sub-benchmarks takes about 2.2 minutes;
// -benchtime 1x is the run to make.
//
// Metrics, per sub-benchmark:
//
//	ms/pgreap     mean wall time of one pgreap run (also ns/op)
//	ms/floor      mean wall time of the floor
//	ms/perpid     mean wall time of the per-pid variant
//	ms/serial     mean wall time of the serial variant
//	ratio         ms/pgreap / ms/floor (target: at most 1.2)
//	speedup       ms/serial / ms/pgreap (target: at least 5)
//	stmts/pgreap  statements the server logged for pgreap per run
//	polls/floor   count statements of the floor per run
func BenchmarkKick(b *testing.B) {
	k := newKickBench(b)
	if k.major < 14 {
		b.Skipf("pg_terminate_backend(pid, timeout) needs PostgreSQL 14 or later, the server is %d", k.major)
	}
	for _, n := range []int{200, 1000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			k.bench(b, n, []variant{{"pgreap", k.kick}, {"floor", k.floor}, {"perpid", k.perpid}, {"serial", k.serial}})
		})
	}
}

// BenchmarkDrain drains a database of N idle sessions (N=200 and
// N=1000) with `pgreap drain DB -o json` (record, ALLOW_CONNECTIONS false,
// terminate, wait until empty), a fresh process timed from start to exit,
// against the floor of BenchmarkKick, in databases and sessions made as
// there, the order alternating. The drain record goes to a temporary
// PGREAP_STATE_DIR. Target: ratio (ms/pgreap / ms/floor) at most 1.3.
func BenchmarkDrain(b *testing.B) {
	k := newKickBench(b)
	for _, n := range []int{200, 1000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			k.bench(b, n, []variant{{"pgreap", k.drain}, {"floor", k.floor}})
		})
	}
}

// newKickBench builds pgreap, starts the cluster (autovacuum off: a worker
// visiting a fresh database would be one more session of it), and sets up
// the runs: pgreap's environment (drain records in a temporary
// PGREAP_STATE_DIR), the superuser's connection, the server log.
func newKickBench(b *testing.B) *kickBench {
	bin := buildPgreap(b)
	c := startCluster(b)
	cfg, err := pgx.ParseConfig(c.DSN("postgres", pgtest.Superuser))
	if err != nil {
		b.Fatal(err)
	}
	// pgreap's protocol: one round trip per statement.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	k := &kickBench{
		bin:   bin,
		major: c.Major,
		env:   append([]string{"PATH=/usr/bin:/bin", "HOME=" + os.Getenv("HOME"), "PGREAP_STATE_DIR=" + b.TempDir()}, c.Env()...),
		cfg:   cfg,
		log:   &serverLog{path: c.LogFile()},
		exits: &serverLog{path: c.LogFile()},
	}
	k.exec(b, "ALTER SYSTEM SET autovacuum = off")
	k.exec(b, "SELECT pg_catalog.pg_reload_conf()")
	// Registered after startCluster, so it runs before the cluster stops.
	b.Cleanup(k.reapLeftovers)
	return k
}

// variant is one way of ending a database's sessions, timed by run; the
// first of a benchmark's variants is pgreap's.
type variant struct {
	name string
	run  func(*testing.B, string) time.Duration
}

type kickBench struct {
	bin   string
	major int
	env   []string
	cfg   *pgx.ConnConfig // the superuser over the unix socket, database postgres
	log   *serverLog      // pgreap's statements
	exits *serverLog      // the victims' last words

	// Per sub-benchmark.
	n           int
	pgreapStmts int
	floorPolls  int
	perpidPolls int
}

// bench is one sub-benchmark: n sessions per variant and iteration.
func (k *kickBench) bench(b *testing.B, n int, variants []variant) {
	k.n, k.pgreapStmts, k.floorPolls, k.perpidPolls = n, 0, 0, 0
	times := make([][]time.Duration, len(variants))
	i := 0
	for b.Loop() {
		var line []string
		for j := range variants {
			v := (i + j) % len(variants)
			name := fmt.Sprintf("%d_%d_%s", n, i, variants[v].name)
			d, exits := k.round(b, name, variants[v].run)
			times[v] = append(times[v], d)
			line = append(line, fmt.Sprintf("%s %.1f ms (exits %.1f ms)", variants[v].name, float64(d)/float64(time.Millisecond), exits))
		}
		b.Logf("iteration %d: %s", i, strings.Join(line, ", "))
		i++
	}
	means := map[string]float64{}
	medians := map[string]float64{}
	var line []string
	for v := range variants {
		name := variants[v].name
		means[name], medians[name] = meanMS(times[v]), medianMS(times[v])
		b.ReportMetric(means[name], "ms/"+name)
		line = append(line, fmt.Sprintf("%s median %.1f max %.1f", name, medians[name], maxMS(times[v])))
	}
	// The loop also creates databases, opens the sessions and runs the
	// other variants: ns/op is pgreap's own wall time instead.
	b.ReportMetric(means["pgreap"]*float64(time.Millisecond), "ns/op")
	b.ReportMetric(means["pgreap"]/means["floor"], "ratio")
	if _, ok := means["serial"]; ok {
		b.ReportMetric(means["serial"]/means["pgreap"], "speedup")
	}
	b.ReportMetric(float64(k.pgreapStmts)/float64(len(times[0])), "stmts/pgreap")
	b.ReportMetric(float64(k.floorPolls)/float64(len(times[1])), "polls/floor")
	if k.perpidPolls > 0 {
		b.ReportMetric(float64(k.perpidPolls)/float64(len(times[2])), "polls/perpid")
	}
	b.Logf("%d iterations of %d sessions, ms: %s (median ratio %.2f)", i, n, strings.Join(line, ", "), medians["pgreap"]/medians["floor"])
}

// round creates the database kick_<name>, opens k.n idle sessions to it
// (application_name kick-<name>, with the underscores as dashes), lets run
// end them and time it, checks that none is left, and drops the database.
// The client side of the sessions is closed and the database dropped
// whatever happens.
//
// It also returns, in ms, how long the sessions took to go: the span
// between the first and the last of their "terminating connection due to
// administrator command" lines in the server log.
func (k *kickBench) round(b *testing.B, name string, run func(*testing.B, string) time.Duration) (time.Duration, float64) {
	b.Helper()
	db := "kick_" + name
	app := "kick-" + strings.ReplaceAll(name, "_", "-")
	k.exec(b, "CREATE DATABASE "+db)
	defer k.drop(b, db)
	cc := k.cfg.Copy()
	cc.Database = db
	cc.RuntimeParams["application_name"] = app
	conns := openVictims(b, cc, k.n)
	defer closeAll(conns)
	if n := k.left(b, db); n != int64(k.n) {
		b.Fatalf("%s: %d sessions in pg_stat_activity, want %d", db, n, k.n)
	}
	if err := k.exits.skip(); err != nil {
		b.Fatal(err)
	}
	d := run(b, db)
	if n := k.left(b, db); n != 0 {
		b.Fatalf("%s: %d of %d sessions still in pg_stat_activity after the run", db, n, k.n)
	}
	text, err := k.exits.next()
	if err != nil {
		b.Fatal(err)
	}
	return d, exitSpan(text, app)
}

// connect opens a connection of the benchmark to postgres, as app.
func (k *kickBench) connect(ctx context.Context, app string) (*pgx.Conn, error) {
	cc := k.cfg.Copy()
	cc.RuntimeParams["application_name"] = app
	return pgx.ConnectConfig(ctx, cc)
}

// exec runs one statement on a connection of its own.
func (k *kickBench) exec(b *testing.B, sql string, args ...any) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := k.connect(ctx, "bench-setup")
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		b.Fatalf("%s: %v", sql, err)
	}
}

// drop terminates what is left of the database's sessions and drops it.
// It runs deferred, also after a b.Fatal: it reports errors, and goes on.
func (k *kickBench) drop(b *testing.B, db string) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := k.connect(ctx, "bench-setup")
	if err != nil {
		b.Errorf("drop %s: %v", db, err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, kickFloorSQL, db); err != nil {
		b.Errorf("drop %s: terminate: %v", db, err)
	}
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)"); err != nil {
		b.Errorf("drop %s: %v", db, err)
	}
}

// left counts the sessions of the database, on a connection of its own.
func (k *kickBench) left(b *testing.B, db string) int64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := k.connect(ctx, "bench-check")
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int64
	if err := conn.QueryRow(ctx, kickLeftSQL, db).Scan(&n); err != nil {
		b.Fatal(err)
	}
	return n
}

// kick runs `pgreap kick --db DB --yes -o json`.
func (k *kickBench) kick(b *testing.B, db string) time.Duration {
	d, stderr := k.pgreap(b, db, "kick", "--db", db, "--yes", "-o", "json")
	if stderr != "" {
		b.Logf("pgreap kick --db %s, standard error:\n%s", db, stderr)
	}
	return d
}

// drain runs `pgreap drain DB -o json`, and checks the database blocked.
func (k *kickBench) drain(b *testing.B, db string) time.Duration {
	d, stderr := k.pgreap(b, db, "drain", db, "-o", "json")
	if want := fmt.Sprintf("is drained (%d sessions ended) and held", k.n); !strings.Contains(stderr, want) {
		b.Fatalf("pgreap drain %s: standard error without %q:\n%s", db, want, stderr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := k.connect(ctx, "bench-check")
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	var allow bool
	if err := conn.QueryRow(ctx, "SELECT datallowconn FROM pg_catalog.pg_database WHERE datname = $1", db).Scan(&allow); err != nil || allow {
		b.Fatalf("after pgreap drain %s: datallowconn %t (%v)", db, allow, err)
	}
	return d
}

// pgreap runs pgreap with args, which end the database's sessions, and
// checks that it reports its n sessions, every one terminated, and that
// the server saw no error from it. It returns the wall time and what
// pgreap wrote on standard error.
func (k *kickBench) pgreap(b *testing.B, db string, args ...string) (time.Duration, string) {
	b.Helper()
	if err := k.log.skip(); err != nil {
		b.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(k.bin, args...)
	cmd.Env = k.env
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	if err != nil {
		b.Fatalf("pgreap %s: %v\n%s\n%s", args[0], err, stderr.Bytes(), head(stdout.Bytes()))
	}
	var rows []struct {
		PID     int32   `json:"pid"`
		Datname *string `json:"datname"`
		Outcome string  `json:"outcome"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &rows); err != nil {
		b.Fatalf("pgreap %s output: %v\n%s", args[0], err, head(stdout.Bytes()))
	}
	terminated := 0
	for _, r := range rows {
		if r.Outcome == "terminated" && r.Datname != nil && *r.Datname == db {
			terminated++
		}
	}
	if len(rows) != k.n || terminated != k.n {
		b.Fatalf("pgreap %s: %d rows, %d of them terminated sessions of %s, want %d of %d:\n%s",
			args[0], len(rows), terminated, db, k.n, k.n, head(stdout.Bytes()))
	}
	text, err := k.log.next()
	if err != nil {
		b.Fatal(err)
	}
	stmts, problems := statements(text, "pgreap")
	if len(problems) > 0 {
		b.Fatalf("server log for pgreap:\n%s", strings.Join(problems, "\n"))
	}
	k.pgreapStmts += stmts
	return wall, stderr.String()
}

// floor signals the database's sessions in one statement and polls every
// floorPoll until none is left, on a connection of its own.
func (k *kickBench) floor(b *testing.B, db string) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	conn, err := k.connect(ctx, "bench-floor")
	if err != nil {
		b.Fatal(err)
	}
	signalled, err := countTrue(conn.Query(ctx, kickFloorSQL, db))
	if err != nil {
		b.Fatalf("floor: %v", err)
	}
	polls := k.waitGone(ctx, b, conn, db)
	err = conn.Close(ctx)
	wall := time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	if signalled != k.n {
		b.Fatalf("floor signalled %d sessions, want %d", signalled, k.n)
	}
	k.floorPolls += polls
	return wall
}

// perpid lists the database's pids, signals them one statement each, and
// polls every floorPoll until none is left, on a connection of its own.
func (k *kickBench) perpid(b *testing.B, db string) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	conn, err := k.connect(ctx, "bench-perpid")
	if err != nil {
		b.Fatal(err)
	}
	rows, err := conn.Query(ctx, kickPIDsSQL, db)
	if err != nil {
		b.Fatalf("perpid: %v", err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		b.Fatalf("perpid: %v", err)
	}
	signalled := 0
	for _, pid := range pids {
		var ok bool
		if err := conn.QueryRow(ctx, kickOneSQL, pid).Scan(&ok); err != nil {
			b.Fatalf("perpid: pg_terminate_backend(%d): %v", pid, err)
		}
		if ok {
			signalled++
		}
	}
	polls := k.waitGone(ctx, b, conn, db)
	err = conn.Close(ctx)
	wall := time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	if len(pids) != k.n || signalled != k.n {
		b.Fatalf("perpid listed %d sessions and signalled %d, want %d", len(pids), signalled, k.n)
	}
	k.perpidPolls += polls
	return wall
}

// waitGone counts the database's sessions right away and every floorPoll
// until it is 0, and returns how many counts it took.
func (k *kickBench) waitGone(ctx context.Context, b *testing.B, conn *pgx.Conn, db string) int {
	b.Helper()
	polls := 0
	for {
		var left int64
		if err := conn.QueryRow(ctx, kickLeftSQL, db).Scan(&left); err != nil {
			b.Fatalf("poll: %v", err)
		}
		polls++
		if left == 0 {
			return polls
		}
		time.Sleep(floorPoll)
	}
}

// serial ends the database's sessions with pg_terminate_backend(pid,
// 5000), which returns once each backend is gone, one after the other.
func (k *kickBench) serial(b *testing.B, db string) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	conn, err := k.connect(ctx, "bench-serial")
	if err != nil {
		b.Fatal(err)
	}
	gone, err := countTrue(conn.Query(ctx, kickSerialSQL, db))
	if err != nil {
		b.Fatalf("serial: %v", err)
	}
	err = conn.Close(ctx)
	wall := time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	if gone != k.n {
		b.Fatalf("pg_terminate_backend(pid, 5000) returned true for %d sessions, want %d", gone, k.n)
	}
	return wall
}

// reapLeftovers ends the sessions of the kick databases a failed round may
// have left behind, before the cluster is stopped (the rounds' deferred
// drops do it already when they get to run).
func (k *kickBench) reapLeftovers() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := k.connect(ctx, "bench-reap")
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	conn.Exec(ctx, `SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE datname LIKE 'kick\_%'`)
}
