package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// The daemon's policy in both benchmarks, and BenchmarkWatchOvershoot's
// load.
const (
	// watchInterval is the policy's interval: one snapshot per target and
	// interval.
	watchInterval = 5 * time.Second
	// watchThreshold is the overshoot rule's longer_than.
	watchThreshold = 2 * time.Second
	// watchVictims is how many queries the overshoot rule cancels per
	// iteration.
	watchVictims = 200
	// watchSpread is the span over which the victims' queries start, at
	// uniformly random moments: two intervals, so the thresholds fall at
	// every phase of the snapshots.
	watchSpread = 10 * time.Second
	// watchSleepSQL is the victims' query, which the rule must cancel long
	// before it ends by itself.
	watchSleepSQL = "SELECT pg_catalog.pg_sleep(30)"
	// watchCostWindow is how long BenchmarkWatchCost measures the daemon
	// once it leads every target.
	watchCostWindow = 60 * time.Second
	// watchApp is the application_name of the daemon's connections.
	watchApp = "pgreap-watch"
)

// BenchmarkWatchOvershoot measures how late `pgreap watch` cancels a query
// after the query crosses a rule's threshold. It runs the built binary as
// a process, `pgreap -v watch -c POLICY --log-format json`, with this
// policy: one target (the benchmark's cluster over its unix socket),
// interval 5s, metrics off, the audit log in a temporary file, and one
// rule:
//
//	match: {app: ["victim*"], state: [active], longer_than: 2s}
//	action: cancel
//
// Per iteration, a fresh daemon is started and, once it logs that it leads
// the target, 200 idle sessions are opened (pgx, simple protocol,
// application_name victim-000 … victim-199), then each starts
// `SELECT pg_catalog.pg_sleep(30)` at a moment drawn uniformly from the
// next 10 s: two intervals, so the thresholds fall at random phases of the
// daemon's snapshots. Every Exec must fail with SQLSTATE 57014 (query
// cancelled). Then an admin connection reads each victim's query_start and
// state_change (the moment its backend went idle after the cancel) from
// pg_stat_activity, and
//
//	overshoot = state_change - (query_start + 2s)
//
// all by the server's clock. Once the audit log has 200 lines, the daemon
// is stopped with SIGTERM and must exit 0, having logged no error, and no
// warning about a target (it does warn that longer_than is shorter than
// the interval: that is the point); its audit log must hold 200 lines,
// one per victim (pid and query_start), all outcome cancelled; the server
// must have logged no error for pgreap-watch. On a failure, the end of the
// daemon's log (-v: with the sessions it left alone) is shown.
//
// The daemon takes at most one snapshot per interval, so a query that
// starts after a snapshot and crosses its threshold before the next one is
// seen late: with interval 5s and threshold 2s, up to 3 s late, cancelled
// at that next snapshot. That is by design, and the overshoot of all 200
// shows it. The deadline path, which the daemon promises to the
// millisecond, is that of the queries a snapshot saw before their
// threshold: those whose first snapshot after query_start came before
// query_start + 2s. The snapshot times are those the server logged
// (log_statement = all, log_timezone = UTC, ms resolution) for the
// daemon's snapshot statements ("-- pgreap snapshot"); a query that
// started in the same millisecond as a snapshot is counted as started
// after it.
//
// The benchmark also counts the statements the server logged for
// pgreap-watch, by kind (snapshot, action, wait, other), and compares the
// snapshots with the intervals that elapsed between the first snapshot and
// the SIGTERM: floor(elapsed / 5s) + 1 is what one snapshot per interval
// gives. It logs, for the deadline path, when the action statement that
// named each victim reached the server (its log line; the pids are in its
// parameters) relative to the threshold.
//
// One iteration takes about 15 s; -benchtime 1x is the run to make. With
// more iterations, the figures are over all of their victims: about 80
// victims per iteration are on the deadline path (2 s of every 5), so at
// 1x its p99 is its largest or second largest.
//
// Metrics (percentiles by nearest rank: p99 of 200 is the third largest):
//
//	ms-p50         median overshoot of the deadline path
//	ms-p99         p99 overshoot of the deadline path (target: at most 50)
//	ms-max         largest overshoot of the deadline path
//	ms-p99-all     p99 overshoot of all the victims
//	snapshots/interval  snapshot statements per interval elapsed (target: at most 1)
//	cancelled      audit lines with outcome cancelled, per iteration (200)
//	deadline-path  victims on the deadline path, per iteration
func BenchmarkWatchOvershoot(b *testing.B) {
	bin := buildPgreap(b)
	c := startWatchCluster(b, watchVictims+100)
	w := newWatchBench(b, bin, c)
	// Registered after the cluster, so it runs before the cluster stops.
	b.Cleanup(w.reapVictims)

	var deadline, all, sentLag []time.Duration
	var snapshots, intervals, cancelled, iterations int
	for b.Loop() {
		r := w.overshootRound(b, iterations)
		deadline = append(deadline, r.deadline...)
		all = append(all, r.all...)
		sentLag = append(sentLag, r.sentLag...)
		snapshots += r.snapshots
		intervals += r.intervals
		cancelled += r.cancelled
		iterations++
	}
	if len(deadline) == 0 {
		b.Fatal("no victim was on the deadline path")
	}
	b.ReportMetric(percentileMS(deadline, 50), "ms-p50")
	b.ReportMetric(percentileMS(deadline, 99), "ms-p99")
	b.ReportMetric(percentileMS(deadline, 100), "ms-max")
	b.ReportMetric(percentileMS(all, 99), "ms-p99-all")
	b.ReportMetric(float64(snapshots)/float64(intervals), "snapshots/interval")
	b.ReportMetric(float64(cancelled)/float64(iterations), "cancelled")
	b.ReportMetric(float64(len(deadline))/float64(iterations), "deadline-path")
	b.Logf("%d iterations: overshoot ms, deadline path (%d victims): p50 %.1f, p90 %.1f, p99 %.1f, max %.1f, min %.1f; all (%d): p50 %.1f, p90 %.1f, p99 %.1f, max %.1f; %d snapshots in %d intervals",
		iterations, len(deadline), percentileMS(deadline, 50), percentileMS(deadline, 90), percentileMS(deadline, 99), percentileMS(deadline, 100), float64(slices.Min(deadline))/float64(time.Millisecond),
		len(all), percentileMS(all, 50), percentileMS(all, 90), percentileMS(all, 99), percentileMS(all, 100), snapshots, intervals)
	if len(sentLag) > 0 {
		b.Logf("deadline path: action statement logged by the server, ms after the threshold (ms resolution): p50 %.0f, p99 %.0f, max %.0f (%d victims)",
			percentileMS(sentLag, 50), percentileMS(sentLag, 99), percentileMS(sentLag, 100), len(sentLag))
	}
}

// BenchmarkWatchCost measures what `pgreap watch` costs while it watches N
// targets and acts on nothing, in the sub-benchmarks N=10 and N=100. The
// targets t1 … tN all point at the benchmark's cluster over its unix socket
// (the same DSN): each has its own connection and advisory lock key, so the
// daemon leads every one and snapshots each once per interval. The policy:
// interval 5s, metrics_addr off, the audit log in a temporary file, and one
// rule that matches nothing:
//
//	match: {app: ["nomatch-*"], state: [active], longer_than: 1m}
//	action: cancel
//
// Per iteration, a fresh daemon (`pgreap watch -c POLICY --log-format
// json`, the built binary, no -v) is started; once it has logged that it
// leads all N targets, its CPU time (utime + stime in /proc/PID/stat) is
// read, and again after a window of 60 s (watchCostWindow, 12 intervals);
// then its VmRSS and VmHWM (/proc/PID/status; the log splits VmRSS into
// anonymous memory, the Go heap mostly, and mapped files, the binary's
// pages). It is stopped with SIGTERM and must exit 0, with no error logged
// by the server for pgreap-watch, and no warning about a target. The
// snapshot statements the server logged for pgreap-watch in the window
// are counted too (about 12 per target). The daemon runs as shipped: no
// GOGC or GOMEMLIMIT in its environment.
//
// Every target's snapshot lists the cluster's other client sessions, that
// is the daemon's N-1 other connections: at N=100 the daemon reads 100
// snapshots of 99 rows per interval, as it would watching 100 servers of
// about 100 sessions each; at N=10, 10 of 9 rows. The cost therefore grows
// faster than N between the two.
//
// One iteration of both sub-benchmarks takes about 2.2 minutes;
// -benchtime 1x is the run to make. The parent logs N=100 against N=10
// (ratios, and the cost of each target beyond the tenth).
//
// Metrics, per sub-benchmark (means over the iterations):
//
//	cpu-%      CPU time over the window, % of one core (targets: at most 1
//	           at N=10, at most 5 at N=100)
//	MB-rss     VmRSS at the end of the window, MiB (targets: at most 30 at
//	           N=10, at most 100 at N=100)
//	MB-hwm     VmHWM (peak RSS) at the end of the window, MiB
//	snapshots/interval  snapshot statements per target and interval of the window
func BenchmarkWatchCost(b *testing.B) {
	bin := buildPgreap(b)
	// 100 daemon connections, the checks' and some room.
	c := startWatchCluster(b, 300)
	w := newWatchBench(b, bin, c)
	type figures struct{ cpu, rss, hwm float64 }
	got := map[int]figures{}
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			var cpu, rss, hwm, snaps float64
			i := 0
			for b.Loop() {
				r := w.costRound(b, n, watchRule{
					Name:   "none",
					Match:  map[string]any{"app": []string{"nomatch-*"}, "state": []string{"active"}, "longer_than": "1m"},
					Action: "cancel",
				})
				b.Logf("iteration %d: %d targets, %.3f%% of a core over %s, VmRSS %.1f MiB (anonymous %.1f, files %.1f), VmHWM %.1f MiB, %.2f snapshots per target and interval",
					i, n, r.cpu, watchCostWindow, r.rss, r.anon, r.file, r.hwm, r.snapshots)
				cpu, rss, hwm, snaps = cpu+r.cpu, rss+r.rss, hwm+r.hwm, snaps+r.snapshots
				i++
			}
			f := figures{cpu / float64(i), rss / float64(i), hwm / float64(i)}
			b.ReportMetric(f.cpu, "cpu-%")
			b.ReportMetric(f.rss, "MB-rss")
			b.ReportMetric(f.hwm, "MB-hwm")
			b.ReportMetric(snaps/float64(i), "snapshots/interval")
			got[n] = f
		})
	}
	if lo, ok := got[10]; ok {
		if hi, ok := got[100]; ok {
			b.Logf("N=100 against N=10: cpu ×%.1f, VmRSS ×%.2f, VmHWM ×%.2f; each target beyond the tenth: %.4f%% of a core, %.0f KiB of RSS",
				hi.cpu/lo.cpu, hi.rss/lo.rss, hi.hwm/lo.hwm, (hi.cpu-lo.cpu)/90, (hi.rss-lo.rss)*1024/90)
		}
	}
}

// startWatchCluster starts a server that takes maxConns clients and logs
// every statement (with its parameters) with the application_name that
// sent it, timestamps in UTC.
func startWatchCluster(b *testing.B, maxConns int) *pgtest.Cluster {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{
		MaxConnections: maxConns,
		Settings: map[string]string{
			"log_statement":   "all",
			"log_line_prefix": "'%m [%p] app=%a '",
			"log_timezone":    "'UTC'",
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

type watchBench struct {
	bin string
	env []string
	dsn string          // the cluster over its unix socket, as superuser
	cfg *pgx.ConnConfig // the same, for the benchmark's own connections
	log *serverLog
}

func newWatchBench(b *testing.B, bin string, c *pgtest.Cluster) *watchBench {
	dsn := c.DSN("postgres", pgtest.Superuser)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		b.Fatal(err)
	}
	// One Query message per statement: query_start is set once, when the
	// statement starts (the extended protocol's Parse would set it first).
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	return &watchBench{
		bin: bin,
		env: append([]string{"PATH=/usr/bin:/bin", "HOME=" + os.Getenv("HOME")}, c.Env()...),
		dsn: dsn,
		cfg: cfg,
		log: &serverLog{path: c.LogFile()},
	}
}

func (w *watchBench) config(app string) *pgx.ConnConfig {
	cc := w.cfg.Copy()
	cc.RuntimeParams["application_name"] = app
	return cc
}

// The policy file, written as JSON (which is YAML).
type watchPolicy struct {
	Targets     []watchTarget `json:"targets"`
	Interval    string        `json:"interval"`
	AuditLog    string        `json:"audit_log"`
	MetricsAddr string        `json:"metrics_addr"`
	Rules       []watchRule   `json:"rules"`
}

type watchTarget struct {
	Name string `json:"name"`
	DSN  string `json:"dsn"`
}

type watchRule struct {
	Name   string         `json:"name"`
	Match  map[string]any `json:"match"`
	Action string         `json:"action"`
}

// policy writes a policy with the targets named, all with the cluster's
// DSN, and the rules, into dir; it returns its path and the audit log's.
func (w *watchBench) policy(b *testing.B, dir string, names []string, rules ...watchRule) (string, string) {
	b.Helper()
	p := watchPolicy{
		Interval:    watchInterval.String(),
		AuditLog:    filepath.Join(dir, "audit.jsonl"),
		MetricsAddr: "off",
		Rules:       rules,
	}
	for _, n := range names {
		p.Targets = append(p.Targets, watchTarget{Name: n, DSN: w.dsn})
	}
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		b.Fatal(err)
	}
	return path, p.AuditLog
}

// watchDaemon is a running `pgreap watch` process.
type watchDaemon struct {
	cmd    *exec.Cmd
	stderr string // its log
	done   chan struct{}
	err    error // of Wait, once done is closed
}

// startDaemon starts `pgreap [-v] watch -c policy --log-format json`, its
// standard error and output in files of dir. A cleanup kills it (by its
// pid) if it is still running when the benchmark ends.
func (w *watchBench) startDaemon(b *testing.B, dir, policy string, verbose bool) *watchDaemon {
	b.Helper()
	args := []string{"watch", "-c", policy, "--log-format", "json"}
	if verbose {
		args = append([]string{"-v"}, args...)
	}
	d := &watchDaemon{stderr: filepath.Join(dir, "daemon.log"), done: make(chan struct{})}
	errf, err := os.Create(d.stderr)
	if err != nil {
		b.Fatal(err)
	}
	outf, err := os.Create(filepath.Join(dir, "daemon.out"))
	if err != nil {
		errf.Close()
		b.Fatal(err)
	}
	d.cmd = exec.Command(w.bin, args...)
	d.cmd.Env = w.env
	d.cmd.Stdout, d.cmd.Stderr = outf, errf
	err = d.cmd.Start()
	errf.Close()
	outf.Close()
	if err != nil {
		b.Fatalf("pgreap watch: %v", err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	b.Cleanup(func() {
		select {
		case <-d.done:
		default:
			d.cmd.Process.Kill()
			<-d.done
		}
	})
	return d
}

// waitLeading waits until the daemon has logged that it leads n targets.
func (d *watchDaemon) waitLeading(b *testing.B, n int, timeout time.Duration) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for {
		leading := map[string]bool{}
		for _, l := range d.lines(b) {
			if strings.HasPrefix(l.Msg, "leading") {
				leading[l.Target] = true
			}
		}
		if len(leading) >= n {
			return
		}
		select {
		case <-d.done:
			b.Fatalf("pgreap watch exited (%v) leading %d of %d targets:\n%s", d.err, len(leading), n, d.tail(b))
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("pgreap watch leads %d of %d targets after %s:\n%s", len(leading), n, timeout, d.tail(b))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// daemonLine is what the benchmark reads of a line of the daemon's log.
type daemonLine struct {
	Level  string `json:"level"`
	Msg    string `json:"msg"`
	Target string `json:"target"`
}

// lines reads the daemon's log so far (a line being written is skipped).
func (d *watchDaemon) lines(b *testing.B) []daemonLine {
	b.Helper()
	data, err := os.ReadFile(d.stderr)
	if err != nil {
		b.Fatal(err)
	}
	var out []daemonLine
	for _, raw := range bytes.Split(data, []byte("\n")) {
		var l daemonLine
		if json.Unmarshal(raw, &l) == nil {
			out = append(out, l)
		}
	}
	return out
}

// tail is the end of the daemon's log, for failures.
func (d *watchDaemon) tail(b *testing.B) string {
	data, _ := os.ReadFile(d.stderr)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

// stop sends SIGTERM and checks that the daemon exits 0 within 10 s (it
// is killed otherwise), and that it logged no error, and no warning about
// a target.
func (d *watchDaemon) stop(b *testing.B) {
	b.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		b.Fatalf("SIGTERM pgreap watch: %v", err)
	}
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
		b.Fatalf("pgreap watch still running 10 s after SIGTERM:\n%s", d.tail(b))
	}
	if d.err != nil {
		b.Fatalf("pgreap watch: %v after SIGTERM:\n%s", d.err, d.tail(b))
	}
	// A warning about a target (cannot connect, connection lost) is
	// trouble; the policy's notes name no target (the overshoot policy
	// has one: longer_than is shorter than the interval).
	for _, l := range d.lines(b) {
		if l.Level == "ERROR" || (l.Level == "WARN" && l.Target != "") {
			b.Fatalf("pgreap watch logged %s %q:\n%s", l.Level, l.Msg, d.tail(b))
		}
	}
}

// overshootResult is one iteration of BenchmarkWatchOvershoot.
type overshootResult struct {
	deadline, all []time.Duration // overshoots
	sentLag       []time.Duration // action statement's log time - threshold, deadline path
	snapshots     int
	intervals     int
	cancelled     int
}

// victim is one victim's query as the server saw it.
type victim struct {
	pid                     uint32
	app                     string
	queryStart, stateChange time.Time
}

func (w *watchBench) overshootRound(b *testing.B, iter int) overshootResult {
	b.Helper()
	dir := b.TempDir()
	policy, audit := w.policy(b, dir, []string{"main"}, watchRule{
		Name:   "slow",
		Match:  map[string]any{"app": []string{"victim*"}, "state": []string{"active"}, "longer_than": watchThreshold.String()},
		Action: "cancel",
	})
	if err := w.log.skip(); err != nil {
		b.Fatal(err)
	}
	d := w.startDaemon(b, dir, policy, true)
	d.waitLeading(b, 1, time.Minute)

	conns := w.openNamed(b, watchVictims, func(i int) string { return fmt.Sprintf("victim-%03d", i) })
	defer closeAll(conns)
	victims := w.runVictims(b, conns)
	// A victim's Exec returns before the daemon's poll has seen its query
	// end: a SIGTERM now could land on that poll, whose context it
	// cancels, and the cancel would be audited "survived (signalled, not
	// verified: wait: context canceled)". The daemon finishes first.
	waitAudit(b, d, audit, len(victims), 10*time.Second)
	stopAt := time.Now()
	d.stop(b)

	text, err := w.log.next()
	if err != nil {
		b.Fatal(err)
	}
	stmts := watchStatements(b, text)
	if len(stmts.snapshots) == 0 {
		b.Fatal("the server logged no snapshot statement for pgreap-watch")
	}
	r := overshootResult{
		snapshots: len(stmts.snapshots),
		intervals: int(stopAt.Sub(stmts.snapshots[0])/watchInterval) + 1,
	}
	var late int
	for _, v := range victims {
		threshold := v.queryStart.Add(watchThreshold)
		over := v.stateChange.Sub(threshold)
		r.all = append(r.all, over)
		// The first snapshot that started after the query.
		k, _ := slices.BinarySearchFunc(stmts.snapshots, v.queryStart, func(s, q time.Time) int {
			if s.After(q) {
				return 1
			}
			return -1
		})
		if k < len(stmts.snapshots) && stmts.snapshots[k].Before(threshold) {
			r.deadline = append(r.deadline, over)
			if at, ok := stmts.signalled[v.pid]; ok {
				r.sentLag = append(r.sentLag, at.Sub(threshold))
			}
		} else {
			late++
		}
	}
	gaps := make([]time.Duration, 0, len(stmts.snapshots))
	for i := 1; i < len(stmts.snapshots); i++ {
		gaps = append(gaps, stmts.snapshots[i].Sub(stmts.snapshots[i-1]))
	}
	gapText := "none"
	if len(gaps) > 0 {
		gapText = fmt.Sprintf("%.0f–%.0f ms", float64(slices.Min(gaps))/1e6, float64(slices.Max(gaps))/1e6)
	}
	r.cancelled = checkAudit(b, audit, victims)
	b.Logf("iteration %d: %d victims, %d on the deadline path (p99 %.1f ms, max %.1f ms), %d seen late (max %.1f ms); statements of pgreap-watch: %d snapshots in %d intervals (gaps %s), %d actions, %d waits, %d others",
		iter, len(victims), len(r.deadline), percentileMS(r.deadline, 99), percentileMS(r.deadline, 100),
		late, percentileMS(r.all, 100), r.snapshots, r.intervals, gapText, stmts.actions, stmts.waits, stmts.others)
	return r
}

// openNamed opens n idle sessions, session i with application_name
// name(i), 32 at a time. On a failure it closes those it opened and fails.
func (w *watchBench) openNamed(b *testing.B, n int, name func(int) string) []*pgx.Conn {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conns := make([]*pgx.Conn, n)
	errs := make([]error, n)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			conns[i], errs[i] = pgx.ConnectConfig(ctx, w.config(name(i)))
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

// runVictims starts the sleep on every session at a random moment of the
// next watchSpread, checks that each was cancelled, and reads each one's
// query_start and state_change (it is idle since the cancel).
func (w *watchBench) runVictims(b *testing.B, conns []*pgx.Conn) []victim {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), watchSpread+40*time.Second)
	defer cancel()
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, conn := range conns {
		delay := rand.N(watchSpread)
		wg.Go(func() {
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			_, errs[i] = conn.Exec(ctx, watchSleepSQL)
		})
	}
	wg.Wait()
	pids := make([]int32, len(conns))
	for i, err := range errs {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
			b.Fatalf("victim %d: %s returned %v, want SQLSTATE 57014 (cancelled)", i, watchSleepSQL, err)
		}
		pids[i] = int32(conns[i].PgConn().PID())
	}

	admin, err := pgx.ConnectConfig(ctx, w.config("bench-check"))
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close(ctx)
	rows, err := admin.Query(ctx, `SELECT pid, application_name, query_start, state_change, state, query
  FROM pg_catalog.pg_stat_activity WHERE pid = ANY ($1::integer[]) ORDER BY pid`, pids)
	if err != nil {
		b.Fatal(err)
	}
	var out []victim
	for rows.Next() {
		var v victim
		var pid int32
		var state, query string
		if err := rows.Scan(&pid, &v.app, &v.queryStart, &v.stateChange, &state, &query); err != nil {
			b.Fatal(err)
		}
		v.pid = uint32(pid)
		if state != "idle" || query != watchSleepSQL {
			b.Fatalf("victim %s (pid %d): state %q, query %q, want idle after %s", v.app, v.pid, state, query, watchSleepSQL)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
	if len(out) != len(conns) {
		b.Fatalf("%d of %d victims in pg_stat_activity", len(out), len(conns))
	}
	return out
}

// waitAudit waits until the audit log has n lines.
func waitAudit(b *testing.B, d *watchDaemon, path string, n int, timeout time.Duration) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for {
		data, err := os.ReadFile(path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			b.Fatal(err)
		}
		got := bytes.Count(data, []byte("\n"))
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("audit log: %d lines %s after the last victim was cancelled, want %d:\n%s", got, timeout, n, d.tail(b))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkAudit checks that the audit log has one line per victim, for its
// query, outcome cancelled, and returns how many lines say cancelled. A
// line for anything else fails the benchmark at once; a line missing or
// with another outcome fails it once it has reported.
func checkAudit(b *testing.B, path string, victims []victim) int {
	b.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	byPID := map[uint32]victim{}
	for _, v := range victims {
		byPID[v.pid] = v
	}
	seen := map[uint32]bool{}
	cancelled := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var e struct {
			PID             uint32     `json:"pid"`
			ApplicationName string     `json:"application_name"`
			QueryStart      *time.Time `json:"query_start"`
			Action          string     `json:"action"`
			Outcome         string     `json:"outcome"`
			Detail          string     `json:"detail"`
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			b.Fatalf("audit log: %v: %s", err, sc.Bytes())
		}
		v, ok := byPID[e.PID]
		if !ok || seen[e.PID] || e.ApplicationName != v.app || e.QueryStart == nil || !e.QueryStart.Equal(v.queryStart) {
			b.Fatalf("audit log: unexpected line (not a victim's query, or twice): %s", sc.Bytes())
		}
		seen[e.PID] = true
		// Every victim's Exec failed with 57014: another outcome is
		// the audit's error. The benchmark fails, and still reports.
		if e.Action != "cancel" || e.Outcome != "cancelled" {
			b.Errorf("audit log: %s %s (%s) for victim %s, want cancel cancelled", e.Action, e.Outcome, e.Detail, e.ApplicationName)
			continue
		}
		cancelled++
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	if len(seen) != len(victims) {
		b.Errorf("audit log: %d lines for %d victims", len(seen), len(victims))
	}
	return cancelled
}

// reapVictims ends the victims a failed iteration may have left behind,
// before the cluster stops.
func (w *watchBench) reapVictims() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, w.config("bench-reap"))
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	conn.Exec(ctx, `SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE application_name LIKE 'victim-%'`)
}

// watchStmts are the statements the server logged for pgreap-watch.
type watchStmts struct {
	snapshots []time.Time // when each snapshot statement started, in order
	// signalled is when the first action statement naming each pid
	// started.
	signalled              map[uint32]time.Time
	actions, waits, others int
}

// watchStatements reads the server log's lines for pgreap-watch: the
// statements by kind (the first line of each of pgreap's statements is a
// comment that names it), and the pids of the action statements (their
// first parameter, in the DETAIL line that follows). An error or fatal
// line for pgreap-watch fails the benchmark.
func watchStatements(b *testing.B, text []byte) watchStmts {
	b.Helper()
	s := watchStmts{signalled: map[uint32]time.Time{}}
	tag := "] app=" + watchApp + " "
	var lastAction time.Time
	for _, line := range strings.Split(string(text), "\n") {
		_, rest, ok := strings.Cut(line, tag)
		if !ok {
			continue
		}
		switch {
		case strings.HasPrefix(rest, "LOG:  statement: "), strings.HasPrefix(rest, "LOG:  execute "):
			at, err := logTime(line)
			if err != nil {
				b.Fatalf("server log: %v: %s", err, line)
			}
			stmt, ok := strings.CutPrefix(rest, "LOG:  statement: ")
			if !ok {
				// "LOG:  execute <unnamed>: ..." (or a statement's name)
				_, stmt, _ = strings.Cut(strings.TrimPrefix(rest, "LOG:  execute "), ": ")
			}
			lastAction = time.Time{}
			switch {
			case strings.HasPrefix(stmt, "-- pgreap snapshot"):
				s.snapshots = append(s.snapshots, at)
			case strings.HasPrefix(stmt, "-- pgreap action"):
				s.actions++
				lastAction = at
			case strings.HasPrefix(stmt, "-- pgreap wait"):
				s.waits++
			default:
				s.others++
			}
		case strings.HasPrefix(rest, "DETAIL:  parameters: $1 = '{") && !lastAction.IsZero():
			list, _, _ := strings.Cut(strings.TrimPrefix(rest, "DETAIL:  parameters: $1 = '{"), "}")
			for _, f := range strings.Split(list, ",") {
				pid, err := strconv.ParseUint(f, 10, 32)
				if err != nil {
					continue
				}
				if _, ok := s.signalled[uint32(pid)]; !ok {
					s.signalled[uint32(pid)] = lastAction
				}
			}
			lastAction = time.Time{}
		case strings.HasPrefix(rest, "ERROR:"), strings.HasPrefix(rest, "FATAL:"):
			b.Fatalf("server log for %s: %s", watchApp, line)
		}
	}
	return s
}

// logTime reads the time of a server log line (log_line_prefix %m, with
// log_timezone UTC).
func logTime(line string) (time.Time, error) {
	if len(line) < 23 {
		return time.Time{}, errors.New("no timestamp")
	}
	return time.ParseInLocation("2006-01-02 15:04:05.000", line[:23], time.UTC)
}

// costResult is one iteration of BenchmarkWatchCost.
type costResult struct {
	cpu        float64 // % of one core
	rss, hwm   float64 // MiB
	anon, file float64 // MiB
	snapshots  float64 // per target and interval
}

// costRound runs one iteration of the cost benchmarks: n targets, the
// rules given.
func (w *watchBench) costRound(b *testing.B, n int, rules ...watchRule) costResult {
	b.Helper()
	dir := b.TempDir()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("t%d", i+1)
	}
	policy, _ := w.policy(b, dir, names, rules...)
	d := w.startDaemon(b, dir, policy, false)
	d.waitLeading(b, n, 2*time.Minute)
	pid := d.cmd.Process.Pid
	tick := clockTicks()

	if err := w.log.skip(); err != nil {
		b.Fatal(err)
	}
	cpu0 := cpuTicks(b, pid)
	start := time.Now()
	time.Sleep(watchCostWindow)
	cpu1 := cpuTicks(b, pid)
	window := time.Since(start)
	mem := memory(b, pid)
	text, err := w.log.next()
	if err != nil {
		b.Fatal(err)
	}
	d.stop(b)
	stmts := watchStatements(b, text)

	return costResult{
		cpu:       float64(cpu1-cpu0) / tick / window.Seconds() * 100,
		rss:       float64(mem.rss) / 1024,
		hwm:       float64(mem.hwm) / 1024,
		anon:      float64(mem.anon) / 1024,
		file:      float64(mem.file) / 1024,
		snapshots: float64(len(stmts.snapshots)) / float64(n) / (window.Seconds() / watchInterval.Seconds()),
	}
}

// clockTicks is the unit of the times in /proc/PID/stat, per second.
func clockTicks() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && n > 0 {
			return float64(n)
		}
	}
	return 100 // USER_HZ on every Linux architecture Go supports
}

// cpuTicks is utime + stime of the process, in clock ticks.
func cpuTicks(b *testing.B, pid int) int64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The fields after "(comm)", which may hold spaces: state is field 3,
	// utime 14, stime 15.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		b.Fatalf("/proc/%d/stat: %q", pid, data)
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 13 {
		b.Fatalf("/proc/%d/stat: %q", pid, data)
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: %q", pid, data)
	}
	return utime + stime
}

// procMemory is what /proc/PID/status says of a process's memory, in KiB.
type procMemory struct {
	rss, hwm int64 // VmRSS, VmHWM
	// anon and file split VmRSS: anonymous memory (the Go heap, stacks),
	// and mapped files (the binary's pages).
	anon, file int64
}

// memory reads the process's memory from /proc/PID/status.
func memory(b *testing.B, pid int) procMemory {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	var m procMemory
	fields := map[string]*int64{"VmRSS": &m.rss, "VmHWM": &m.hwm, "RssAnon": &m.anon, "RssFile": &m.file}
	for _, line := range strings.Split(string(data), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok || fields[key] == nil {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			b.Fatalf("/proc/%d/status: %s", pid, line)
		}
		*fields[key] = kb
	}
	if m.rss == 0 || m.hwm == 0 {
		b.Fatalf("/proc/%d/status: no VmRSS or VmHWM", pid)
	}
	return m
}

// percentileMS is the p-th percentile of ds by nearest rank, in ms (p 100
// is the largest).
func percentileMS(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	k := int(math.Ceil(float64(len(s))*p/100)) - 1
	k = max(0, min(k, len(s)-1))
	return float64(s[k]) / float64(time.Millisecond)
}
