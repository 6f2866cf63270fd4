package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// victims is how many idle sessions each variant of BenchmarkTerminate
// ends, per iteration.
const victims = 1000

// floorPoll is the floor's fixed poll interval.
const floorPoll = 5 * time.Millisecond

// The statements of the floor and of the timeout variant. $1 is the
// application_name of the sessions to end.
const (
	floorSQL   = `SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE application_name = $1`
	leftSQL    = `SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE application_name = $1`
	timeoutSQL = `SELECT pg_catalog.pg_terminate_backend(pid, 5000) FROM pg_catalog.pg_stat_activity WHERE application_name = $1`
)

// BenchmarkTerminate ends 1000 idle sessions three ways, each on a fresh
// set of 1000 sessions of the same cluster, in an order that rotates from
// one iteration to the next:
//
//	pgreap   `pgreap terminate --app TAG --yes -o json`, a fresh process,
//	         timed from start to exit; its JSON must list 1000 sessions,
//	         all terminated.
//	floor    the least work that ends them and knows they are gone: a fresh
//	         pgx connection, one pg_terminate_backend(pid) statement for
//	         the set, then a count of the set's sessions in pg_stat_activity
//	         every 5 ms until it is 0; timed from connect to close.
//	timeout  a fresh pgx connection and one pg_terminate_backend(pid, 5000)
//	         statement (PostgreSQL 14+), which waits for each backend in
//	         turn; timed from connect to close, and the set must be gone
//	         when it returns.
//
// Opening the sessions (pgx, 32 at a time, application_name
// victim-<iteration>-<variant>) is not timed: each variant is timed on its
// own, and ns/op is pgreap's mean wall time, as ms/pgreap. Each
// iteration logs every variant's time and how long its victims took to go
// (from the first to the last of their FATAL lines in the server log).
//
// The timeout variant takes about 100 s per iteration: the server waits
// for each backend in turn, 100 ms at a time. -benchtime 1x is the run
// that fits in two minutes.
//
// Metrics:
//
//	ms/pgreap     mean wall time of one pgreap run
//	ms/floor      mean wall time of the floor
//	ms/timeout    mean wall time of the timeout variant
//	ratio         ms/pgreap / ms/floor (target: at most 1.2)
//	speedup       ms/timeout / ms/pgreap (target: at least 5)
//	stmts/pgreap  statements the server logged for pgreap per run
//	polls/floor   count statements of the floor per run
func BenchmarkTerminate(b *testing.B) {
	bin := buildPgreap(b)
	c := startCluster(b)
	if c.Major < 14 {
		b.Skipf("pg_terminate_backend(pid, timeout) needs PostgreSQL 14 or later, the server is %d", c.Major)
	}
	cfg, err := pgx.ParseConfig(c.DSN("postgres", pgtest.Superuser))
	if err != nil {
		b.Fatal(err)
	}
	// The protocol pgreap speaks: one round trip per statement, no
	// prepared statement to set up on a fresh connection.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	t := &terminateBench{
		bin: bin,
		env: append([]string{"PATH=/usr/bin:/bin", "HOME=" + os.Getenv("HOME")}, c.Env()...),
		cfg: cfg,
		log: &serverLog{path: c.LogFile()},
		// round's own look at the log, for the victims' lines.
		exits: &serverLog{path: c.LogFile()},
	}
	// Registered after startCluster, so it runs before the cluster stops.
	b.Cleanup(t.reapLeftovers)

	variants := []struct {
		name string
		run  func(*testing.B, string) time.Duration
	}{
		{"pgreap", t.pgreap},
		{"floor", t.floor},
		{"timeout", t.timeout},
	}
	times := make([][]time.Duration, len(variants))
	i := 0
	for b.Loop() {
		var line []string
		for k := range variants {
			v := (i + k) % len(variants)
			tag := fmt.Sprintf("victim-%d-%s", i, variants[v].name)
			d, exits := t.round(b, tag, variants[v].run)
			times[v] = append(times[v], d)
			line = append(line, fmt.Sprintf("%s %.1f ms (exits %.1f ms)", variants[v].name, float64(d)/float64(time.Millisecond), exits))
		}
		b.Logf("iteration %d: %s", i, strings.Join(line, ", "))
		i++
	}
	mPgreap, mFloor, mTimeout := meanMS(times[0]), meanMS(times[1]), meanMS(times[2])
	// The loop also opens 3000 sessions per iteration and runs the other
	// variants: ns/op is pgreap's own wall time instead.
	b.ReportMetric(mPgreap*float64(time.Millisecond), "ns/op")
	b.ReportMetric(mPgreap, "ms/pgreap")
	b.ReportMetric(mFloor, "ms/floor")
	b.ReportMetric(mTimeout, "ms/timeout")
	b.ReportMetric(mPgreap/mFloor, "ratio")
	b.ReportMetric(mTimeout/mPgreap, "speedup")
	b.ReportMetric(float64(t.pgreapStmts)/float64(len(times[0])), "stmts/pgreap")
	b.ReportMetric(float64(t.floorPolls)/float64(len(times[1])), "polls/floor")
	b.Logf("%d iterations of %d sessions; median ms: pgreap %.1f, floor %.1f, timeout %.1f (ratio %.2f, speedup %.0f); max ms: pgreap %.1f, floor %.1f, timeout %.1f",
		i, victims, medianMS(times[0]), medianMS(times[1]), medianMS(times[2]),
		medianMS(times[0])/medianMS(times[1]), medianMS(times[2])/medianMS(times[0]),
		maxMS(times[0]), maxMS(times[1]), maxMS(times[2]))
}

type terminateBench struct {
	bin   string
	env   []string
	cfg   *pgx.ConnConfig // the superuser over the unix socket
	log   *serverLog      // pgreap's statements
	exits *serverLog      // the victims' last words

	pgreapStmts int
	floorPolls  int
}

// config is the benchmark's connection config under an application_name.
func (t *terminateBench) config(app string) *pgx.ConnConfig {
	cc := t.cfg.Copy()
	cc.RuntimeParams["application_name"] = app
	return cc
}

// round opens victims idle sessions named tag, lets run end them and time
// it, and checks that none is left. The client side of the sessions is
// closed whatever happens, which also ends any that survived a failure.
//
// It also returns, in ms, how long the victims took to go: the span
// between the first and the last of their "terminating connection due to
// administrator command" lines in the server log (ms resolution), which
// each backend logs as it starts to exit.
func (t *terminateBench) round(b *testing.B, tag string, run func(*testing.B, string) time.Duration) (time.Duration, float64) {
	b.Helper()
	conns := openVictims(b, t.config(tag), victims)
	defer closeAll(conns)
	if n := t.left(b, tag); n != victims {
		b.Fatalf("%s: %d sessions in pg_stat_activity, want %d", tag, n, victims)
	}
	if err := t.exits.skip(); err != nil {
		b.Fatal(err)
	}
	d := run(b, tag)
	if n := t.left(b, tag); n != 0 {
		b.Fatalf("%s: %d of %d sessions still in pg_stat_activity after the run", tag, n, victims)
	}
	text, err := t.exits.next()
	if err != nil {
		b.Fatal(err)
	}
	return d, exitSpan(text, tag)
}

// exitSpan is the time in ms between the first and the last FATAL line
// that the sessions named app logged, -1 when there is none.
func exitSpan(text []byte, app string) float64 {
	tag := "] app=" + app + " FATAL:"
	var first, last time.Time
	for _, line := range strings.Split(string(text), "\n") {
		if !strings.Contains(line, tag) || len(line) < 23 {
			continue
		}
		// log_line_prefix %m: "2006-01-02 15:04:05.000 UTC"
		ts, err := time.Parse("2006-01-02 15:04:05.000", line[:23])
		if err != nil {
			continue
		}
		if first.IsZero() {
			first = ts
		}
		last = ts
	}
	if first.IsZero() {
		return -1
	}
	return float64(last.Sub(first)) / float64(time.Millisecond)
}

// left counts the sessions named tag, on a connection of its own.
func (t *terminateBench) left(b *testing.B, tag string) int64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, t.config("bench-check"))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int64
	if err := conn.QueryRow(ctx, leftSQL, tag).Scan(&n); err != nil {
		b.Fatal(err)
	}
	return n
}

// pgreap runs `pgreap terminate` on the sessions named tag and checks that
// it reports every one terminated, and that the server saw no error from it.
func (t *terminateBench) pgreap(b *testing.B, tag string) time.Duration {
	b.Helper()
	if err := t.log.skip(); err != nil {
		b.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(t.bin, "terminate", "--app", tag, "--yes", "-o", "json")
	cmd.Env = t.env
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	if err != nil {
		b.Fatalf("pgreap terminate: %v\n%s\n%s", err, stderr.Bytes(), head(stdout.Bytes()))
	}
	var rows []struct {
		PID             int32  `json:"pid"`
		ApplicationName string `json:"application_name"`
		Outcome         string `json:"outcome"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &rows); err != nil {
		b.Fatalf("pgreap terminate output: %v\n%s", err, head(stdout.Bytes()))
	}
	terminated := 0
	for _, r := range rows {
		if r.Outcome == "terminated" && r.ApplicationName == tag {
			terminated++
		}
	}
	if len(rows) != victims || terminated != victims {
		b.Fatalf("pgreap terminate: %d rows, %d of them terminated sessions of %s, want %d of %d:\n%s",
			len(rows), terminated, tag, victims, victims, head(stdout.Bytes()))
	}
	text, err := t.log.next()
	if err != nil {
		b.Fatal(err)
	}
	stmts, problems := statements(text, "pgreap")
	if len(problems) > 0 {
		b.Fatalf("server log for pgreap:\n%s", strings.Join(problems, "\n"))
	}
	t.pgreapStmts += stmts
	return wall
}

// floor signals the sessions named tag in one statement and polls every
// floorPoll until none is left, on a connection of its own: pgreap has to
// connect too.
func (t *terminateBench) floor(b *testing.B, tag string) time.Duration {
	b.Helper()
	wall, polls := t.floorWith(b, tag, floorSQL, leftSQL)
	t.floorPolls += polls
	return wall
}

// floorWith is a floor: on a fresh connection, signalSQL (every row true)
// for the sessions named tag, then leftSQL every floorPoll until it counts
// 0; it returns the wall time and the polls.
func (t *terminateBench) floorWith(b *testing.B, tag, signalSQL, leftSQL string) (time.Duration, int) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	conn, err := pgx.ConnectConfig(ctx, t.config("bench-floor"))
	if err != nil {
		b.Fatal(err)
	}
	signalled, err := countTrue(conn.Query(ctx, signalSQL, tag))
	if err != nil {
		b.Fatalf("floor: %v", err)
	}
	polls := 0
	for {
		var left int64
		if err := conn.QueryRow(ctx, leftSQL, tag).Scan(&left); err != nil {
			b.Fatalf("floor poll: %v", err)
		}
		polls++
		if left == 0 {
			break
		}
		time.Sleep(floorPoll)
	}
	err = conn.Close(ctx)
	wall := time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	if signalled != victims {
		b.Fatalf("floor signalled %d sessions, want %d", signalled, victims)
	}
	return wall, polls
}

// timeout ends the sessions named tag with pg_terminate_backend(pid,
// 5000), which returns once each backend is gone (false, with a warning,
// if one is still there after 5 s).
func (t *terminateBench) timeout(b *testing.B, tag string) time.Duration {
	b.Helper()
	// The statement waits for the backends one after the other.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	conn, err := pgx.ConnectConfig(ctx, t.config("bench-timeout"))
	if err != nil {
		b.Fatal(err)
	}
	gone, err := countTrue(conn.Query(ctx, timeoutSQL, tag))
	if err != nil {
		b.Fatalf("timeout: %v", err)
	}
	err = conn.Close(ctx)
	wall := time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	if gone != victims {
		b.Fatalf("pg_terminate_backend(pid, 5000) returned true for %d sessions, want %d", gone, victims)
	}
	return wall
}

// countTrue counts the rows whose only column is true.
func countTrue(rows pgx.Rows, err error) (int, error) {
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var ok bool
		if err := rows.Scan(&ok); err != nil {
			return 0, err
		}
		if ok {
			n++
		}
	}
	return n, rows.Err()
}

// reapLeftovers ends the victims a failed iteration may have left behind.
// The client side closes them already (round's defer); this makes sure on
// the server side before the cluster is stopped.
func (t *terminateBench) reapLeftovers() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, t.config("bench-reap"))
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	conn.Exec(ctx, `SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE application_name LIKE 'victim-%'`)
}

// openVictims opens n idle sessions with cfg, 32 at a time. On a failure
// it closes those it opened and fails.
func openVictims(b *testing.B, cfg *pgx.ConnConfig, n int) []*pgx.Conn {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conns := make([]*pgx.Conn, n)
	errs := make([]error, n)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			conns[i], errs[i] = pgx.ConnectConfig(ctx, cfg)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			closeAll(conns)
			b.Fatalf("session %d of %d: %v", i, n, err)
		}
	}
	return conns
}

// closeAll closes the client side of the sessions; those the server ended
// already just lose their socket.
func closeAll(conns []*pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, conn := range conns {
		if conn != nil {
			conn.Close(ctx)
		}
	}
}
