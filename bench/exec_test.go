package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// The load of BenchmarkExec: execClients pgbench clients, each running
// execScript for execLoad, the operation starting execWarm after they are
// all connected.
const (
	execClients = 8
	execRows    = 10000
	execLoad    = 16 * time.Second
	execWarm    = 3 * time.Second
	// execHold is how long the plain ALTER is left queued before the open
	// transaction is ended: nothing else would end its wait.
	execHold = 5 * time.Second
	// The exec ways' flags: the default lock timeout and pause, and 3
	// attempts so that a run that never commits still ends within the
	// load (3×2 s + 2×1 s).
	execLockTimeout = 2 * time.Second
	execAttempts    = 3
	execBetween     = time.Second
)

// execScript is each client's transaction: a read and a write of a random
// row of the table (row 0, the open transaction's, is never touched); %d
// is execRows.
const execScript = `\set id random(1, %d)
BEGIN;
SELECT n FROM bench_orders WHERE id = :id;
UPDATE bench_orders SET n = n + 1 WHERE id = :id;
END;
`

// BenchmarkExec runs the same `ALTER TABLE bench_orders ADD COLUMN …` three
// ways in every iteration, on a table under a steady load: execClients
// pgbench clients (findPgbench; the benchmark skips without one) run execScript, with a log of every transaction (-l), and
// one transaction of another session is left open on the table (it
// updated row 0: idle in transaction, holding ROW EXCLUSIVE). Each way gets
// a fresh pgbench run and a fresh open transaction; the ALTER starts
// execWarm after the clients are all connected:
//
//	plain      the ALTER on a pgx connection with lock_timeout 0, as psql
//	           runs it: it queues behind the open transaction and every
//	           client queues behind it. The benchmark ends the open
//	           transaction (ROLLBACK on its connection) execHold after the
//	           ALTER started, which is all that bounds its wait.
//	none       `pgreap exec -c ALTER --clear none --attempts 3 -o json`, a
//	           fresh process: no queue longer than the lock timeout, and
//	           it gives up (exit 3); the open transaction is rolled back
//	           after.
//	terminate  `pgreap exec -c ALTER --clear terminate --yes --attempts 3
//	           -o json`: it terminates the open transaction's session and
//	           commits (goal: in at most 2 attempts).
//
// The exec ways use the default --lock-timeout (2s) and --between (1s).
// The operation is from the start of the ALTER (or of the pgreap process)
// to its end (or the process's exit). From the pgbench logs, per way:
// the latency of every client transaction that overlapped the operation
// (p50, p99, max), and the transactions per second that ended within it
// and within the execWarm before it. The goal of issue 22 for terminate:
// clients' p99 during the operation at most lock timeout + 100 ms.
//
// Metrics (means over the iterations), per way:
//
//	attempts-W    pgreap's attempts (1 for plain)
//	p99-ms-W      clients' p99 latency during the operation
//	max-ms-W      clients' worst latency during the operation
//	tps-W         client transactions per second during the operation
//	op-s-W        the operation's length (ns/op: terminate's)
func BenchmarkExec(b *testing.B) {
	bin := buildPgreap(b)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{"shared_buffers": "32MB"}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := c.Stop(); err != nil {
			b.Logf("stop cluster: %v", err)
		}
	})
	pgbench := findPgbench(b, c.BinDir)
	cfg, err := pgx.ParseConfig(c.DSN("postgres", pgtest.Superuser))
	if err != nil {
		b.Fatal(err)
	}
	e := &execBench{
		bin:     bin,
		pgbench: pgbench,
		env:     append([]string{"PATH=/usr/bin:/bin", "HOME=" + os.Getenv("HOME")}, c.Env()...),
		cfg:     cfg,
		dir:     b.TempDir(),
	}
	e.setup(b)
	b.Logf("PostgreSQL %d, %s; load: %s", c.Major, pgbench, loadAverage())
	ways := []string{"plain", "none", "terminate"}
	sums := map[string]*execFigures{}
	for _, w := range ways {
		sums[w] = &execFigures{}
	}
	i := 0
	for b.Loop() {
		for _, w := range ways {
			f := e.run(b, w, i)
			b.Logf("iteration %d (load %s): %-9s attempts %d, %s, operation %.2f s; clients p50 %.1f / p99 %.1f / max %.1f ms, %.0f tps (%.0f before), %d transactions overlapped",
				i, loadAverage(), w, f.attempts, f.outcome, f.op.Seconds(), f.p50, f.p99, f.max, f.tps, f.tpsBefore, f.n)
			s := sums[w]
			s.attempts += f.attempts
			s.p99 += f.p99
			s.max += f.max
			s.tps += f.tps
			s.op += f.op
		}
		i++
	}
	for _, w := range ways {
		s := sums[w]
		n := float64(i)
		b.ReportMetric(float64(s.attempts)/n, "attempts-"+w)
		b.ReportMetric(s.p99/n, "p99-ms-"+w)
		b.ReportMetric(s.max/n, "max-ms-"+w)
		b.ReportMetric(s.tps/n, "tps-"+w)
		b.ReportMetric(s.op.Seconds()/n, "op-s-"+w)
	}
	b.ReportMetric(float64(sums["terminate"].op)/float64(i), "ns/op")
}

type execBench struct {
	bin, pgbench string
	env          []string
	cfg          *pgx.ConnConfig
	dir          string
}

// execFigures are one way's figures in one iteration.
type execFigures struct {
	attempts       int
	outcome        string
	op             time.Duration
	p50, p99, max  float64 // ms
	tps, tpsBefore float64
	n              int
}

// findPgbench is the pgbench of binDir, else of the newest
// /usr/lib/postgresql/*/bin, else of PATH (Debian's /usr/bin/pgbench is
// a Perl wrapper); the benchmark skips without one.
func findPgbench(b *testing.B, binDir string) string {
	b.Helper()
	if p := filepath.Join(binDir, "pgbench"); isFile(p) {
		return p
	}
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pgbench")
	best, bestMajor := "", 0
	for _, p := range found {
		if m, err := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(p)))); err == nil && m > bestMajor {
			best, bestMajor = p, m
		}
	}
	if best != "" {
		return best
	}
	p, err := exec.LookPath("pgbench")
	if err != nil {
		b.Skip("pgbench is not installed (apt-get install -y postgresql-contrib, or postgresql's server package): no load")
	}
	return p
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// loadAverage is the machine's 1, 5 and 15 minute load averages.
func loadAverage() string {
	text, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(text))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// setup creates the table and the clients' script.
func (e *execBench) setup(b *testing.B) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, e.cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, sql := range []string{
		"CREATE TABLE bench_orders (id integer PRIMARY KEY, n bigint NOT NULL DEFAULT 0)",
		fmt.Sprintf("INSERT INTO bench_orders (id) SELECT pg_catalog.generate_series(0, %d)", execRows),
		"VACUUM ANALYZE bench_orders",
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(e.dir, "script.sql"), []byte(fmt.Sprintf(execScript, execRows)), 0o600); err != nil {
		b.Fatal(err)
	}
}

// run runs one way under a fresh load and a fresh open transaction, and
// reads its figures from the clients' logs.
func (e *execBench) run(b *testing.B, way string, i int) execFigures {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tag := fmt.Sprintf("exec-%d-%s", i, way)
	prefix := filepath.Join(e.dir, tag)
	var loadErr bytes.Buffer
	load := exec.Command(e.pgbench, "-n", "-c", strconv.Itoa(execClients), "-j", "2",
		"-T", strconv.Itoa(int(execLoad.Seconds())), "-f", filepath.Join(e.dir, "script.sql"),
		"-l", "--log-prefix", prefix)
	load.Env = append(slices.Clip(e.env), "PGAPPNAME=load-"+tag)
	load.Stdout, load.Stderr = &loadErr, &loadErr
	if err := load.Start(); err != nil {
		b.Fatalf("pgbench: %v", err)
	}
	defer func() {
		if load.ProcessState == nil { // a failure before its end
			_ = load.Process.Kill()
			_ = load.Wait()
		}
	}()
	admin, err := pgx.ConnectConfig(ctx, e.cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close(ctx)
	holderCfg := e.cfg.Copy()
	holderCfg.RuntimeParams["application_name"] = "holder-" + tag
	holder, err := pgx.ConnectConfig(ctx, holderCfg)
	if err != nil {
		b.Fatal(err)
	}
	defer holder.Close(context.Background())
	if _, err := holder.Exec(ctx, "BEGIN; UPDATE bench_orders SET n = n + 1 WHERE id = 0"); err != nil {
		b.Fatal(err)
	}
	// The operation starts execWarm after every client is connected.
	waitFor(ctx, b, admin, "the pgbench clients", `SELECT count(*) = $1 FROM pg_catalog.pg_stat_activity WHERE application_name = $2`, execClients, "load-"+tag)
	time.Sleep(execWarm)

	ddl := fmt.Sprintf("ALTER TABLE bench_orders ADD COLUMN c_%d_%s text", i, way)
	var f execFigures
	var opStart, opEnd time.Time
	if way == "plain" {
		f.attempts = 1
		opStart, opEnd, f.outcome = e.plain(ctx, b, admin, holder, ddl, tag)
	} else {
		opStart, opEnd, f.attempts, f.outcome = e.pgreap(b, way, ddl)
		if way == "none" {
			if _, err := holder.Exec(ctx, "ROLLBACK"); err != nil {
				b.Fatalf("the open transaction after --clear none: %v", err)
			}
		} else if err := holder.Ping(ctx); err == nil {
			b.Fatal("the open transaction's session is still there after --clear terminate")
		}
	}
	if err := load.Wait(); err != nil {
		b.Fatalf("pgbench: %v\n%s", err, loadErr.Bytes())
	}
	if bytes.Contains(loadErr.Bytes(), []byte("aborted")) {
		b.Fatalf("pgbench clients aborted:\n%s", loadErr.Bytes())
	}
	txs := readPgbenchLogs(b, prefix)
	if len(txs) == 0 || txs[len(txs)-1].end.Before(opEnd) {
		b.Fatalf("the load ended before the operation (%s): lengthen execLoad", opEnd.Sub(opStart))
	}
	f.op = opEnd.Sub(opStart)
	var lat []time.Duration
	ended, before := 0, 0
	for _, t := range txs {
		start := t.end.Add(-t.latency)
		if !t.end.Before(opStart) && !start.After(opEnd) {
			lat = append(lat, t.latency)
		}
		if !t.end.Before(opStart) && !t.end.After(opEnd) {
			ended++
		}
		if t.end.Before(opStart) && !t.end.Before(opStart.Add(-execWarm)) {
			before++
		}
	}
	if len(lat) == 0 {
		b.Fatalf("%s: no client transaction during the operation", way)
	}
	f.n = len(lat)
	f.p50, f.p99, f.max = percentileMS(lat, 50), percentileMS(lat, 99), maxMS(lat)
	f.tps = float64(ended) / f.op.Seconds()
	f.tpsBefore = float64(before) / execWarm.Seconds()
	return f
}

// plain runs the ALTER as psql would, with no lock timeout, and ends the
// open transaction execHold after it started, once it is seen queued.
func (e *execBench) plain(ctx context.Context, b *testing.B, admin, holder *pgx.Conn, ddl, tag string) (time.Time, time.Time, string) {
	b.Helper()
	cfg := e.cfg.Copy()
	cfg.RuntimeParams["application_name"] = "plain-" + tag
	cfg.RuntimeParams["lock_timeout"] = "0"
	cfg.RuntimeParams["statement_timeout"] = "0"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := conn.Exec(ctx, ddl)
		done <- err
	}()
	waitFor(ctx, b, admin, "the plain ALTER to queue", `SELECT EXISTS (SELECT FROM pg_catalog.pg_locks AS l JOIN pg_catalog.pg_stat_activity AS a USING (pid)
  WHERE a.application_name = $2 AND NOT l.granted) = $1`, true, "plain-"+tag)
	select {
	case err := <-done:
		b.Fatalf("the plain ALTER ended before the open transaction: %v", err)
	case <-time.After(time.Until(start.Add(execHold))):
	}
	if _, err := holder.Exec(ctx, "ROLLBACK"); err != nil {
		b.Fatalf("end the open transaction: %v", err)
	}
	err = <-done
	end := time.Now()
	if err != nil {
		b.Fatalf("the plain ALTER: %v", err)
	}
	return start, end, "committed"
}

// pgreap runs `pgreap exec` with --clear way and checks what it reports:
// terminate must commit (exit 0), none must give up (exit 3).
func (e *execBench) pgreap(b *testing.B, way, ddl string) (time.Time, time.Time, int, string) {
	b.Helper()
	args := []string{"exec", "-c", ddl, "--clear", way, "--attempts", strconv.Itoa(execAttempts),
		"--lock-timeout", execLockTimeout.String(), "--between", execBetween.String(), "-o", "json"}
	if way != "none" {
		args = append(args, "--yes")
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(e.bin, args...)
	cmd.Env, cmd.Stdout, cmd.Stderr = e.env, &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	end := time.Now()
	if cmd.ProcessState == nil {
		b.Fatalf("pgreap exec: %v", err)
	}
	code := cmd.ProcessState.ExitCode()
	var rows []struct {
		Attempt *int   `json:"attempt"`
		Outcome string `json:"outcome"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &rows); err != nil {
		b.Fatalf("pgreap exec output: %v\n%s\n%s", err, head(stdout.Bytes()), stderr.Bytes())
	}
	attempts, committed, terminated := 0, false, 0
	for _, r := range rows {
		switch {
		case r.Attempt != nil:
			attempts++
			committed = r.Outcome == "committed"
		case r.Outcome == "terminated":
			terminated++
		}
	}
	switch {
	case way == "none" && (code != 3 || committed || attempts != execAttempts):
		b.Fatalf("pgreap exec --clear none: exit %d, %d attempts, committed %v; want exit 3 after %d\n%s\n%s", code, attempts, committed, execAttempts, stdout.Bytes(), stderr.Bytes())
	case way == "none":
		return start, end, attempts, "gave up, exit 3"
	case code != 0 || !committed || terminated != 1:
		b.Fatalf("pgreap exec --clear terminate: exit %d, committed %v, %d terminated; want exit 0, committed, 1\n%s\n%s", code, committed, terminated, stdout.Bytes(), stderr.Bytes())
	}
	return start, end, attempts, fmt.Sprintf("committed, %d terminated", terminated)
}

// waitFor polls sql (arguments want, args…) on conn until it returns true.
func waitFor(ctx context.Context, b *testing.B, conn *pgx.Conn, what, sql string, args ...any) {
	b.Helper()
	for {
		var ok bool
		if err := conn.QueryRow(ctx, sql, args...).Scan(&ok); err != nil {
			b.Fatalf("wait for %s: %v", what, err)
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			b.Fatalf("wait for %s: %v", what, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// pgbenchTx is one transaction of a pgbench log: when it ended and how
// long it took.
type pgbenchTx struct {
	end     time.Time
	latency time.Duration
}

// readPgbenchLogs reads every log of a pgbench run (one per thread:
// PREFIX.PID, PREFIX.PID.1, …), in the order the transactions ended. A
// line is "client_id transaction_no time script_no time_epoch time_us",
// time the latency in µs; a failed transaction is a failure here.
func readPgbenchLogs(b *testing.B, prefix string) []pgbenchTx {
	b.Helper()
	files, err := filepath.Glob(prefix + ".*")
	if err != nil || len(files) == 0 {
		b.Fatalf("no pgbench log %s.*: %v", prefix, err)
	}
	var txs []pgbenchTx
	for _, file := range files {
		text, err := os.ReadFile(file)
		if err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(text))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 6 {
				b.Fatalf("%s: %q: not a pgbench log line", file, sc.Text())
			}
			lat, err1 := strconv.ParseInt(f[2], 10, 64)
			sec, err2 := strconv.ParseInt(f[4], 10, 64)
			us, err3 := strconv.ParseInt(f[5], 10, 64)
			if err := errors.Join(err1, err2, err3); err != nil {
				b.Fatalf("%s: %q: %v", file, sc.Text(), err)
			}
			txs = append(txs, pgbenchTx{end: time.Unix(sec, us*1000), latency: time.Duration(lat) * time.Microsecond})
		}
	}
	slices.SortFunc(txs, func(x, y pgbenchTx) int { return x.end.Compare(y.end) })
	return txs
}
