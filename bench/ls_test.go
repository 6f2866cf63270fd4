// Package bench measures pgreap against its performance targets on a real
// server. The benchmarks start their own PostgreSQL cluster and only run
// with -bench (make bench); `go test ./...` compiles them and runs nothing.
package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// idleSessions is how many client sessions the server holds while ls runs.
const idleSessions = 2000

// BenchmarkLs lists 2000 idle sessions with `pgreap ls` and, in the same
// iteration, with psql's `select * from pg_stat_activity`, the baseline: the
// cheapest way a DBA has to see the same sessions. Both are fresh processes
// that connect over the same unix socket as the same user.
//
// Metrics (ns/op is the mean wall time of one pgreap run, process start to
// exit, as ms/pgreap):
//
//	ms/pgreap     mean wall time of one pgreap run
//	ms/psql       mean wall time of one psql run
//	ratio         ms/pgreap / ms/psql (target: at most 1.5)
//	MB-peak-rss   largest peak RSS of a pgreap run (target: below 40)
//	stmts/run     statements the server logged for pgreap per run (target: 1)
//
// Peak RSS is not the rusage of the timed runs: a child's ru_maxrss starts
// from the RSS of the process that forked it, and this one holds 2000
// connections. GNU time, a small parent, runs pgreap once more per
// iteration, untimed, and reports the child's own peak.
func BenchmarkLs(b *testing.B) {
	bin := buildPgreap(b)
	c := startCluster(b)
	openSessions(b, c, idleSessions)
	psql := filepath.Join(c.BinDir, "psql")
	if _, err := os.Stat(psql); err != nil {
		// Not /usr/bin/psql first: on Debian that is a Perl wrapper whose
		// start-up would flatter pgreap.
		if psql, err = exec.LookPath("psql"); err != nil {
			b.Fatalf("no psql in %s or on PATH", c.BinDir)
		}
	}
	gnuTime, err := exec.LookPath("/usr/bin/time")
	if err != nil {
		b.Log("no /usr/bin/time (apt-get install time): peak RSS not measured")
	}
	env := append([]string{"PATH=/usr/bin:/bin", "HOME=" + os.Getenv("HOME")}, c.Env()...)
	baseline := run{name: "psql", path: psql, env: env,
		args: []string{"-X", "-q", "-A", "-c", "select * from pg_stat_activity"},
		rows: countLines, gnuTime: gnuTime}
	log := &serverLog{path: c.LogFile()}

	for _, format := range []string{"json", "table"} {
		b.Run(format, func(b *testing.B) {
			rows := countLines
			if format == "json" {
				rows = countJSON
			}
			pgreap := run{name: "pgreap", path: bin, env: env, args: []string{"ls", "-o", format}, rows: rows, gnuTime: gnuTime}
			benchPair(b, log, baseline, pgreap)
		})
	}
}

// benchPair alternates the baseline and pgreap, each iteration running
// both, pgreap first on odd iterations, and times each run on its own.
func benchPair(b *testing.B, log *serverLog, baseline, pgreap run) {
	// One untimed pair: warms the page cache and checks both work.
	baseline.once(b, log)
	pgreap.once(b, log)
	psqlKB := baseline.peakRSS(b)

	var psqlTimes, pgreapTimes []time.Duration
	var peakKB int64
	var stmts int
	i := 0
	for b.Loop() {
		pgreapFirst := i%2 == 1
		i++
		if pgreapFirst {
			r := pgreap.once(b, log)
			pgreapTimes, stmts = append(pgreapTimes, r.wall), stmts+r.statements
		}
		r := baseline.once(b, log)
		psqlTimes = append(psqlTimes, r.wall)
		peakKB = max(peakKB, pgreap.peakRSS(b))
		if !pgreapFirst {
			r := pgreap.once(b, log)
			pgreapTimes, stmts = append(pgreapTimes, r.wall), stmts+r.statements
		}
	}
	mPsql, mPgreap := meanMS(psqlTimes), meanMS(pgreapTimes)
	// The loop also runs psql, GNU time and the checks: ns/op is pgreap's
	// own wall time instead.
	b.ReportMetric(mPgreap*float64(time.Millisecond), "ns/op")
	b.ReportMetric(mPgreap, "ms/pgreap")
	b.ReportMetric(mPsql, "ms/psql")
	b.ReportMetric(mPgreap/mPsql, "ratio")
	if peakKB > 0 {
		b.ReportMetric(float64(peakKB)/1024, "MB-peak-rss")
	}
	b.ReportMetric(float64(stmts)/float64(len(pgreapTimes)), "stmts/run")
	b.Logf("%d pairs; median ms: psql %.1f, pgreap %.1f (ratio %.2f); max ms: psql %.1f, pgreap %.1f; peak RSS of psql %.1f MB",
		len(pgreapTimes), medianMS(psqlTimes), medianMS(pgreapTimes), medianMS(pgreapTimes)/medianMS(psqlTimes),
		maxMS(psqlTimes), maxMS(pgreapTimes), float64(psqlKB)/1024)
}

// run is one command the benchmark times.
type run struct {
	name string // its application_name on the server
	path string
	args []string
	env  []string
	rows func([]byte) (int, error) // rows of output, header included
	// gnuTime is GNU time's path, "" when there is none.
	gnuTime string
}

type result struct {
	wall       time.Duration
	statements int
}

// once runs the command, checks that it listed every session and that the
// server saw no error from it, and counts its statements in the server log.
func (r run) once(b *testing.B, log *serverLog) result {
	b.Helper()
	if err := log.skip(); err != nil {
		b.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(r.path, r.args...)
	cmd.Env = r.env
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	if err != nil {
		b.Fatalf("%s: %v\n%s", r.name, err, stderr.Bytes())
	}
	n, err := r.rows(stdout.Bytes())
	if err != nil {
		b.Fatalf("%s output: %v", r.name, err)
	}
	if n < idleSessions {
		b.Fatalf("%s listed %d rows, want at least %d:\n%s", r.name, n, idleSessions, head(stdout.Bytes()))
	}
	text, err := log.next()
	if err != nil {
		b.Fatal(err)
	}
	stmts, problems := statements(text, r.name)
	if len(problems) > 0 {
		b.Fatalf("server log for %s:\n%s", r.name, strings.Join(problems, "\n"))
	}
	return result{wall: wall, statements: stmts}
}

// peakRSS runs the command under GNU time and returns its peak RSS in KiB
// (0 without GNU time). GNU time reads it from the rusage of its child,
// which it forked at its own small size.
func (r run) peakRSS(b *testing.B) int64 {
	b.Helper()
	if r.gnuTime == "" {
		return 0
	}
	report := filepath.Join(b.TempDir(), "rss")
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(r.gnuTime, append([]string{"-f", "%M", "-o", report, r.path}, r.args...)...)
	cmd.Env = r.env
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		b.Fatalf("time %s: %v\n%s", r.name, err, stderr.Bytes())
	}
	if n, err := r.rows(stdout.Bytes()); err != nil || n < idleSessions {
		b.Fatalf("time %s: %d rows, %v", r.name, n, err)
	}
	text, err := os.ReadFile(report)
	if err != nil {
		b.Fatal(err)
	}
	kb, err := strconv.ParseInt(strings.TrimSpace(string(text)), 10, 64)
	if err != nil {
		b.Fatalf("time %s: %q: %v", r.name, text, err)
	}
	return kb
}

func countJSON(out []byte) (int, error) {
	var rows []json.RawMessage
	if err := json.Unmarshal(out, &rows); err != nil {
		return 0, err
	}
	return len(rows), nil
}

func countLines(out []byte) (int, error) {
	return bytes.Count(out, []byte("\n")), nil
}

func head(out []byte) []byte {
	if len(out) > 2000 {
		return out[:2000]
	}
	return out
}

// serverLog reads what the server logged since the last look.
type serverLog struct {
	path string
	off  int64
}

// skip moves past everything logged so far.
func (l *serverLog) skip() error {
	fi, err := os.Stat(l.path)
	if err != nil {
		return err
	}
	l.off = fi.Size()
	return nil
}

// next returns what was logged since the last skip or next.
func (l *serverLog) next() ([]byte, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(l.off, 0); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	n, err := buf.ReadFrom(f)
	l.off += n
	return buf.Bytes(), err
}

// statements counts the statements that log_statement=all logged for app:
// "statement: " for the simple protocol (psql), "execute <name>: " for the
// extended one (pgx). Multi-line statements continue on lines without the
// prefix, so each statement is counted once. Errors are problems.
func statements(text []byte, app string) (n int, problems []string) {
	tag := "] app=" + app + " "
	for _, line := range strings.Split(string(text), "\n") {
		_, rest, ok := strings.Cut(line, tag)
		if !ok {
			continue
		}
		switch {
		case strings.HasPrefix(rest, "LOG:  statement: "), strings.HasPrefix(rest, "LOG:  execute "):
			n++
		case strings.HasPrefix(rest, "ERROR:"), strings.HasPrefix(rest, "FATAL:"):
			problems = append(problems, line)
		}
	}
	return n, problems
}

// buildPgreap builds cmd/pgreap of this checkout into a temporary directory.
func buildPgreap(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "pgreap")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/pgreap")
	cmd.Dir = sourceRoot(b)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// sourceRoot is the root of this checkout.
func sourceRoot(b *testing.B) string {
	b.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		b.Fatal("cannot find the source of the benchmark")
	}
	return filepath.Dir(filepath.Dir(file))
}

// startCluster starts a server that takes idleSessions clients and logs
// every statement with the application_name that sent it.
func startCluster(b *testing.B) *pgtest.Cluster {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{
		MaxConnections: idleSessions + 100,
		Settings: map[string]string{
			"log_statement":   "all",
			"log_line_prefix": "'%m [%p] app=%a '",
			"shared_buffers":  "32MB",
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := c.Stop(); err != nil {
			b.Logf("stop cluster: %v", err)
		}
	})
	return c
}

// openSessions opens n idle sessions, each with its own application_name
// and a query text, as an application's pool would leave them.
func openSessions(b *testing.B, c *pgtest.Cluster, n int) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cfg, err := pgx.ParseConfig(c.DSN("postgres", pgtest.Superuser))
	if err != nil {
		b.Fatal(err)
	}
	conns := make([]*pgx.Conn, n)
	errs := make([]error, n)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			cc := cfg.Copy()
			cc.RuntimeParams["application_name"] = fmt.Sprintf("bench-%04d", i)
			conn, err := pgx.ConnectConfig(ctx, cc)
			if err != nil {
				errs[i] = err
				return
			}
			conns[i] = conn
			_, errs[i] = conn.Exec(ctx, "SELECT c.oid, c.relname, c.relkind FROM pg_catalog.pg_class AS c WHERE c.relname = $1 /* bench session */", fmt.Sprintf("t_%d", i))
		})
	}
	wg.Wait()
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, conn := range conns {
			if conn != nil {
				conn.Close(ctx)
			}
		}
	})
	for i, err := range errs {
		if err != nil {
			b.Fatalf("session %d of %d: %v", i, n, err)
		}
	}
}

func meanMS(ds []time.Duration) float64 {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return float64(sum) / float64(len(ds)) / float64(time.Millisecond)
}

func medianMS(ds []time.Duration) float64 {
	s := slices.Sorted(slices.Values(ds))
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return float64(m) / float64(time.Millisecond)
}

func maxMS(ds []time.Duration) float64 {
	return float64(slices.Max(ds)) / float64(time.Millisecond)
}
