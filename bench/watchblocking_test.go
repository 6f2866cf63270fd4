package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// blockingPileups is how many lock pile-ups BenchmarkWatchBlockingOvershoot
// makes per iteration.
const blockingPileups = 200

// BenchmarkWatchBlockingOvershoot measures how late `pgreap watch` ends the
// root of a lock pile-up after the oldest wait behind it crosses a rule's
// blocking_longer_than. It is BenchmarkWatchOvershoot's method (the built
// binary, `pgreap -v watch -c POLICY --log-format json`, one target over the
// unix socket, interval 5s, metrics off) with one rule:
//
//	match: {app: ["pileup-*"], blocking_longer_than: 2s}
//	action: cancel
//
// Per iteration, a fresh daemon is started and, once it leads, 200 roots
// and 200 waiters are opened (pgx, simple protocol, application_name
// pileup-root-000 … and pileup-waiter-000 …). Every root runs
// `SELECT pg_catalog.pg_advisory_xact_lock(K), pg_catalog.pg_sleep(60)`
// with a key of its own, and once all 200 hold their lock, each waiter
// runs `SELECT pg_catalog.pg_advisory_xact_lock(K)` on its root's key at a
// moment drawn uniformly from the next 10 s (two intervals: the thresholds
// fall at every phase of the snapshots). Every root's Exec must fail with
// SQLSTATE 57014 (cancelled), every waiter's must succeed (released). Then,
// by the server's clock (pg_stat_activity),
//
//	threshold = the waiter's query_start + 2s
//	overshoot = the root's state_change (idle after the cancel) - threshold
//	release   = the waiter's state_change (its lock taken, its statement done) - threshold
//
// The waiter's wait starts a few microseconds after its query_start (the
// statement is the lock call alone), so the figures are that much too
// large, never too small. The deadline path is that of the pile-ups a
// snapshot saw before their threshold (the first snapshot the server
// logged after the waiter's query_start came before the threshold); the
// others can only be acted on at the next snapshot, up to 3 s late.
//
// Once the audit log has 200 lines, the daemon is stopped with SIGTERM and
// must exit 0 with no error and no warning about a target logged; every
// audit line must be a root's, cancelled, and name its waiter among the
// released; no waiter may be acted on; the server must have logged no
// error for pgreap-watch.
//
// One iteration takes about 20 s; -benchtime 1x or 3x. Metrics (nearest
// rank):
//
//	ms-p50, ms-p99, ms-max   overshoot of the deadline path (target: p99 at most 50)
//	ms-release-p99           release of the deadline path, p99
//	ms-p99-all               overshoot of all the pile-ups
//	snapshots/interval       snapshot statements per interval elapsed (target: at most 1)
//	cancelled                audit lines cancelled with their waiter released, per iteration (200)
//	deadline-path            pile-ups on the deadline path, per iteration
func BenchmarkWatchBlockingOvershoot(b *testing.B) {
	bin := buildPgreap(b)
	c := startWatchCluster(b, 2*blockingPileups+100)
	w := newWatchBench(b, bin, c)
	b.Cleanup(w.reapPileups)

	var deadline, release, all, sentLag []time.Duration
	var snapshots, intervals, cancelled, iterations int
	for b.Loop() {
		r := w.blockingRound(b, iterations)
		deadline = append(deadline, r.deadline...)
		release = append(release, r.release...)
		all = append(all, r.all...)
		sentLag = append(sentLag, r.sentLag...)
		snapshots += r.snapshots
		intervals += r.intervals
		cancelled += r.cancelled
		iterations++
	}
	if len(deadline) == 0 {
		b.Fatal("no pile-up was on the deadline path")
	}
	b.ReportMetric(percentileMS(deadline, 50), "ms-p50")
	b.ReportMetric(percentileMS(deadline, 99), "ms-p99")
	b.ReportMetric(percentileMS(deadline, 100), "ms-max")
	b.ReportMetric(percentileMS(release, 99), "ms-release-p99")
	b.ReportMetric(percentileMS(all, 99), "ms-p99-all")
	b.ReportMetric(float64(snapshots)/float64(intervals), "snapshots/interval")
	b.ReportMetric(float64(cancelled)/float64(iterations), "cancelled")
	b.ReportMetric(float64(len(deadline))/float64(iterations), "deadline-path")
	b.Logf("%d iterations: overshoot ms, deadline path (%d pile-ups): p50 %.1f, p90 %.1f, p99 %.1f, max %.1f; waiter released: p50 %.1f, p99 %.1f, max %.1f; all (%d): p50 %.1f, p99 %.1f, max %.1f; %d snapshots in %d intervals",
		iterations, len(deadline), percentileMS(deadline, 50), percentileMS(deadline, 90), percentileMS(deadline, 99), percentileMS(deadline, 100),
		percentileMS(release, 50), percentileMS(release, 99), percentileMS(release, 100),
		len(all), percentileMS(all, 50), percentileMS(all, 99), percentileMS(all, 100), snapshots, intervals)
	if len(sentLag) > 0 {
		b.Logf("deadline path: action statement logged by the server, ms after the threshold (ms resolution): p50 %.0f, p99 %.0f, max %.0f (%d pile-ups)",
			percentileMS(sentLag, 50), percentileMS(sentLag, 99), percentileMS(sentLag, 100), len(sentLag))
	}
}

// blockingResult is one iteration of BenchmarkWatchBlockingOvershoot.
type blockingResult struct {
	deadline, release, all []time.Duration
	sentLag                []time.Duration // action statement's log time - threshold, deadline path
	snapshots, intervals   int
	cancelled              int
}

// pileup is one root and its waiter as the server saw them.
type pileup struct {
	root, waiter victim
}

func (w *watchBench) blockingRound(b *testing.B, iter int) blockingResult {
	b.Helper()
	dir := b.TempDir()
	policy, audit := w.policy(b, dir, []string{"main"}, watchRule{
		Name:   "pileup",
		Match:  map[string]any{"app": []string{"pileup-*"}, "blocking_longer_than": watchThreshold.String()},
		Action: "cancel",
	})
	if err := w.log.skip(); err != nil {
		b.Fatal(err)
	}
	d := w.startDaemon(b, dir, policy, true)
	d.waitLeading(b, 1, time.Minute)

	roots := w.openNamed(b, blockingPileups, func(i int) string { return fmt.Sprintf("pileup-root-%03d", i) })
	defer closeAll(roots)
	waiters := w.openNamed(b, blockingPileups, func(i int) string { return fmt.Sprintf("pileup-waiter-%03d", i) })
	defer closeAll(waiters)
	piles := w.runPileups(b, iter, roots, waiters)
	waitAudit(b, d, audit, len(piles), 10*time.Second)
	stopAt := time.Now()
	d.stop(b)
	retries := 0
	for _, l := range d.lines(b) {
		if strings.HasPrefix(l.Msg, "not yet past its threshold") {
			retries++
		}
	}

	text, err := w.log.next()
	if err != nil {
		b.Fatal(err)
	}
	stmts := watchStatements(b, text)
	if len(stmts.snapshots) == 0 {
		b.Fatal("the server logged no snapshot statement for pgreap-watch")
	}
	r := blockingResult{
		snapshots: len(stmts.snapshots),
		intervals: int(stopAt.Sub(stmts.snapshots[0])/watchInterval) + 1,
	}
	late := 0
	for _, p := range piles {
		threshold := p.waiter.queryStart.Add(watchThreshold)
		over := p.root.stateChange.Sub(threshold)
		r.all = append(r.all, over)
		k, _ := slices.BinarySearchFunc(stmts.snapshots, p.waiter.queryStart, func(s, q time.Time) int {
			if s.After(q) {
				return 1
			}
			return -1
		})
		if k < len(stmts.snapshots) && stmts.snapshots[k].Before(threshold) {
			r.deadline = append(r.deadline, over)
			r.release = append(r.release, p.waiter.stateChange.Sub(threshold))
			if at, ok := stmts.signalled[p.root.pid]; ok {
				r.sentLag = append(r.sentLag, at.Sub(threshold))
			}
		} else {
			late++
		}
	}
	r.cancelled = checkBlockingAudit(b, audit, piles)

	b.Logf("iteration %d: %d pile-ups, %d on the deadline path (p99 %.1f ms, max %.1f ms), %d seen late (max %.1f ms); statements of pgreap-watch: %d snapshots in %d intervals, %d actions, %d waits, %d others; %d signals tried again (not yet past the threshold by the server's clock)",
		iter, len(piles), len(r.deadline), percentileMS(r.deadline, 99), percentileMS(r.deadline, 100),
		late, percentileMS(r.all, 100), r.snapshots, r.intervals, stmts.actions, stmts.waits, stmts.others, retries)
	return r
}

// runPileups makes the pile-ups: every root takes its lock and sleeps,
// then every waiter waits for its root's lock from a random moment of the
// next watchSpread. It checks that every root was cancelled and every
// waiter released, and reads them from pg_stat_activity.
func (w *watchBench) runPileups(b *testing.B, iter int, roots, waiters []*pgx.Conn) []pileup {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), watchSpread+60*time.Second)
	defer cancel()
	key := func(i int) int64 { return int64(iter)*100000 + int64(i) }
	rootErrs := make([]error, len(roots))
	var rootsDone sync.WaitGroup
	for i, cn := range roots {
		rootsDone.Go(func() {
			_, rootErrs[i] = cn.Exec(ctx, "SELECT pg_catalog.pg_advisory_xact_lock($1), pg_catalog.pg_sleep(60)", key(i))
		})
	}
	admin, err := pgx.ConnectConfig(ctx, w.config("bench-check"))
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close(ctx)
	rootPIDs := make([]int32, len(roots))
	for i, cn := range roots {
		rootPIDs[i] = int32(cn.PgConn().PID())
	}
	for {
		var held int
		if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_locks
  WHERE locktype = 'advisory' AND granted AND pid = ANY ($1::integer[])`, rootPIDs).Scan(&held); err != nil {
			b.Fatal(err)
		}
		if held == len(roots) {
			break
		}
		if ctx.Err() != nil {
			b.Fatalf("%d of %d roots hold their lock", held, len(roots))
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitErrs := make([]error, len(waiters))
	var wg sync.WaitGroup
	for i, cn := range waiters {
		delay := rand.N(watchSpread)
		wg.Go(func() {
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				waitErrs[i] = ctx.Err()
				return
			}
			_, waitErrs[i] = cn.Exec(ctx, "SELECT pg_catalog.pg_advisory_xact_lock($1)", key(i))
		})
	}
	wg.Wait()
	rootsDone.Wait()
	for i := range roots {
		var pgErr *pgconn.PgError
		if !errors.As(rootErrs[i], &pgErr) || pgErr.Code != "57014" {
			b.Fatalf("root %d returned %v, want SQLSTATE 57014 (cancelled)", i, rootErrs[i])
		}
		if waitErrs[i] != nil {
			b.Fatalf("waiter %d: %v", i, waitErrs[i])
		}
	}
	read := func(conns []*pgx.Conn) []victim {
		pids := make([]int32, len(conns))
		for i, cn := range conns {
			pids[i] = int32(cn.PgConn().PID())
		}
		rows, err := admin.Query(ctx, `SELECT pid, application_name, query_start, state_change, state
  FROM pg_catalog.pg_stat_activity WHERE pid = ANY ($1::integer[])`, pids)
		if err != nil {
			b.Fatal(err)
		}
		byPID := map[uint32]victim{}
		for rows.Next() {
			var v victim
			var pid int32
			var state string
			if err := rows.Scan(&pid, &v.app, &v.queryStart, &v.stateChange, &state); err != nil {
				b.Fatal(err)
			}
			if state != "idle" {
				b.Fatalf("%s (pid %d): state %q, want idle", v.app, pid, state)
			}
			v.pid = uint32(pid)
			byPID[v.pid] = v
		}
		if err := rows.Err(); err != nil {
			b.Fatal(err)
		}
		out := make([]victim, len(conns))
		for i, p := range pids {
			v, ok := byPID[uint32(p)]
			if !ok {
				b.Fatalf("pid %d not in pg_stat_activity", p)
			}
			out[i] = v
		}
		return out
	}
	r, wt := read(roots), read(waiters)
	piles := make([]pileup, len(roots))
	for i := range piles {
		piles[i] = pileup{root: r[i], waiter: wt[i]}
	}
	return piles
}

// checkBlockingAudit checks that the audit log has one line per root, none
// for a waiter, and returns how many say cancelled with the root's waiter
// among the released.
func checkBlockingAudit(b *testing.B, path string, piles []pileup) int {
	b.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	byRoot := map[uint32]pileup{}
	for _, p := range piles {
		byRoot[p.root.pid] = p
	}
	seen := map[uint32]bool{}
	ok := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var e struct {
			PID      uint32 `json:"pid"`
			Action   string `json:"action"`
			Outcome  string `json:"outcome"`
			Detail   string `json:"detail"`
			Released []struct {
				PID           uint32   `json:"pid"`
				WaitedSeconds *float64 `json:"waited_seconds"`
			} `json:"released"`
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			b.Fatalf("audit log: %v: %s", err, sc.Bytes())
		}
		p, isRoot := byRoot[e.PID]
		if !isRoot || seen[e.PID] {
			b.Fatalf("audit log: a line for no root, or twice: %s", sc.Bytes())
		}
		seen[e.PID] = true
		released := slices.ContainsFunc(e.Released, func(r struct {
			PID           uint32   `json:"pid"`
			WaitedSeconds *float64 `json:"waited_seconds"`
		}) bool {
			return r.PID == p.waiter.pid && r.WaitedSeconds != nil && *r.WaitedSeconds >= watchThreshold.Seconds()
		})
		if e.Action != "cancel" || e.Outcome != "cancelled" || !released {
			b.Errorf("audit log: %s %s (%s), released %+v for root %d (waiter %d): want cancelled, the waiter released after at least %s",
				e.Action, e.Outcome, e.Detail, e.Released, e.PID, p.waiter.pid, watchThreshold)
			continue
		}
		ok++
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	if len(seen) != len(piles) {
		b.Errorf("audit log: %d lines for %d roots", len(seen), len(piles))
	}
	return ok
}

// reapPileups ends the sessions a failed iteration may have left behind,
// before the cluster stops.
func (w *watchBench) reapPileups() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, w.config("bench-reap"))
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	conn.Exec(ctx, `SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE application_name LIKE 'pileup-%'`)
}

// BenchmarkWatchBlockingCost is BenchmarkWatchCost (N=10 and N=100 targets
// on the benchmark's cluster, a 60 s window once the daemon leads them
// all, CPU from /proc/PID/stat, VmRSS and VmHWM from /proc/PID/status) with
// 20 rules that match nothing, half of them on lock pile-ups:
//
//	rule k (k = 0 … 19), app ["nomatch-k-*"], and
//	  k even: blocking_longer_than: 1m, action terminate
//	  k odd:  state [active], longer_than: 1m, action cancel
//
// and a standing pile-up on the cluster, so that every snapshot has lock
// waits and their roots to find: one session (application_name
// bench-pileup-root) holds an ACCESS EXCLUSIVE lock on a table in an open
// transaction, 10 others (bench-pileup-waiter) wait for it in
// SELECT count(*). Targets: at N=10, at most 1% of a core and 30 MB.
//
// One iteration of both sub-benchmarks takes about 2.2 minutes;
// -benchtime 1x. Metrics as BenchmarkWatchCost's.
func BenchmarkWatchBlockingCost(b *testing.B) {
	bin := buildPgreap(b)
	c := startWatchCluster(b, 300)
	w := newWatchBench(b, bin, c)
	stop := w.standingPileup(b, 10)
	defer stop()
	var rules []watchRule
	for k := range 20 {
		r := watchRule{Name: fmt.Sprintf("r%d", k), Match: map[string]any{"app": []string{fmt.Sprintf("nomatch-%d-*", k)}}}
		if k%2 == 0 {
			r.Match["blocking_longer_than"], r.Action = "1m", "terminate"
		} else {
			r.Match["state"], r.Match["longer_than"], r.Action = []string{"active"}, "1m", "cancel"
		}
		rules = append(rules, r)
	}
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			var cpu, rss, hwm, snaps float64
			i := 0
			for b.Loop() {
				r := w.costRound(b, n, rules...)
				b.Logf("iteration %d: %d targets, 20 rules, %.3f%% of a core over %s, VmRSS %.1f MiB (anonymous %.1f, files %.1f), VmHWM %.1f MiB, %.2f snapshots per target and interval",
					i, n, r.cpu, watchCostWindow, r.rss, r.anon, r.file, r.hwm, r.snapshots)
				cpu, rss, hwm, snaps = cpu+r.cpu, rss+r.rss, hwm+r.hwm, snaps+r.snapshots
				i++
			}
			b.ReportMetric(cpu/float64(i), "cpu-%")
			b.ReportMetric(rss/float64(i), "MB-rss")
			b.ReportMetric(hwm/float64(i), "MB-hwm")
			b.ReportMetric(snaps/float64(i), "snapshots/interval")
		})
	}
}

// standingPileup makes a pile-up that lasts until stop: a root holding an
// ACCESS EXCLUSIVE lock in an open transaction, n waiters behind it.
func (w *watchBench) standingPileup(b *testing.B, n int) (stop func()) {
	b.Helper()
	ctx := context.Background()
	root, err := pgx.ConnectConfig(ctx, w.config("bench-pileup-root"))
	if err != nil {
		b.Fatal(err)
	}
	for _, sql := range []string{"CREATE TABLE IF NOT EXISTS pileup (id int)", "BEGIN", "LOCK TABLE pileup IN ACCESS EXCLUSIVE MODE"} {
		if _, err := root.Exec(ctx, sql); err != nil {
			b.Fatal(err)
		}
	}
	waiters := w.openNamed(b, n, func(int) string { return "bench-pileup-waiter" })
	var wg sync.WaitGroup
	wctx, cancel := context.WithCancel(ctx)
	for _, cn := range waiters {
		wg.Go(func() { cn.Exec(wctx, "SELECT count(*) FROM pileup") })
	}
	return func() {
		root.Close(ctx) // its transaction ends: the waiters are released
		cancel()
		wg.Wait()
		closeAll(waiters)
	}
}
