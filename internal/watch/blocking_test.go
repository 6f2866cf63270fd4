package watch_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/watch"
)

// waitedLonger waits until the session pid has waited on a lock longer
// than d by the server's clock, measured as unblock measures it.
func waitedLonger(t *testing.T, pid int32, d time.Duration) {
	t.Helper()
	pgtest.Eventually(t, fmt.Sprintf("backend %d waiting longer than %s", pid, d), func() (bool, error) {
		var old bool
		err := pgtest.Admin(t).QueryRow(pgtest.Context(t), `
			SELECT coalesce(coalesce((SELECT pg_catalog.min((pg_catalog.to_jsonb(l) ->> 'waitstart')::timestamptz)
			                            FROM pg_catalog.pg_locks AS l WHERE l.pid = $1 AND NOT l.granted),
			                          (SELECT a.query_start FROM pg_catalog.pg_stat_activity AS a
			                            WHERE a.pid = $1 AND a.pid IN (SELECT l.pid FROM pg_catalog.pg_locks AS l WHERE NOT l.granted)))
			         < pg_catalog.statement_timestamp() - $2::interval, false)`, pid, d).Scan(&old)
		return old, err
	})
}

// pileUp makes a lock pile-up of the test's tag in a new database: root
// holds an ACCESS EXCLUSIVE lock on t in an open transaction (rootSQL,
// then idle in it, or running rootQuery when not empty); waiter's ALTER
// TABLE waits for it; behind, reader's SELECT waits for both: waiter is
// blocked and blocks.
func pileUp(t *testing.T, rootQuery string) (root, waiter, reader *pgtest.Victim) {
	t.Helper()
	db := pgtest.NewDB(t)
	root = pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	root.Exec("CREATE TABLE t (id int)")
	root.Exec("BEGIN")
	root.Exec("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
	if rootQuery != "" {
		root.Start(rootQuery)
		root.WaitState("active", "")
	}
	waiter = pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	waiter.Start("ALTER TABLE t ADD COLUMN c int")
	waiter.WaitState("active", "Lock")
	reader = pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	reader.Start("SELECT count(*) FROM t")
	reader.WaitState("active", "Lock")
	return root, waiter, reader
}

// releasedPIDs are the pids of an audit line's released waiters, each
// checked to have waited at least min.
func releasedPIDs(t *testing.T, e watch.Entry, min time.Duration) []int32 {
	t.Helper()
	var pids []int32
	for _, r := range e.Released {
		if r.WaitedSeconds == nil || *r.WaitedSeconds < min.Seconds() {
			t.Errorf("released %d waited %v, want at least %s", r.PID, r.WaitedSeconds, min)
		}
		pids = append(pids, r.PID)
	}
	slices.Sort(pids)
	return pids
}

// blocking_longer_than acts on the root of a pile-up at the instant the
// oldest wait behind it crosses the threshold, by the daemon's clock, not
// before; the waiter in between, which blocks the reader, is never acted
// on; the audit line names the waiters released and how long they waited.
func TestBlockingLongerThanAtTheThreshold(t *testing.T) {
	t.Parallel()
	root, waiter, reader := pileUp(t, "")
	d, clk := startFake(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1h
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: pileup
    match: {app: [TAG], blocking_longer_than: 2s}
    action: terminate
`)
	due := clk.Waiting(t)
	// The waiter's wait start + 2s by the server's clock, on the daemon's:
	// the wait began before the snapshot, so at most 2s from it.
	if due.Before(epoch.Add(watch.Margin)) || due.After(epoch.Add(2*time.Second+watch.Margin)) {
		t.Fatalf("armed at %s, want within 2s of the snapshot (%s)", due, epoch)
	}
	waitedLonger(t, waiter.PID, 2*time.Second)
	clk.Set(t, due.Add(-time.Nanosecond))
	if next := clk.Waiting(t); !next.Equal(due) {
		t.Fatalf("waits for %s, want the deadline %s", next, due)
	}
	if !root.Alive() || len(d.entries(t)) != 0 {
		t.Fatalf("before the deadline: root alive %v, audit %+v", root.Alive(), d.entries(t))
	}

	clk.Set(t, due)
	pgtest.Eventually(t, "the root terminated", func() (bool, error) { return !root.Alive(), nil })
	if err := waiter.Wait(); err != nil {
		t.Fatalf("the waiter: %v", err)
	}
	if err := reader.Wait(); err != nil {
		t.Fatalf("the reader: %v", err)
	}
	if at := clk.Step(t); !at.Equal(due.Add(watch.FirstPoll)) {
		t.Fatalf("verified at %s, want the first poll %s", at, due.Add(watch.FirstPoll))
	}
	got := d.waitEntries(t, 1)
	e := got[0]
	if len(got) != 1 || e.PID != root.PID || e.Rule != "pileup" || e.Outcome != "terminated" {
		t.Fatalf("audit %+v", got)
	}
	want := []int32{waiter.PID, reader.PID}
	slices.Sort(want)
	// The reader began to wait after the waiter: it waited less than 2s
	// by the server's clock at the threshold, a little more at the look.
	if pids := releasedPIDs(t, e, 0); !slices.Equal(pids, want) {
		t.Errorf("released %v, want the waiter and the reader %v", pids, want)
	}
	for _, r := range e.Released {
		if r.PID == waiter.PID && *r.WaitedSeconds < 2 {
			t.Errorf("the waiter waited %vs, want at least 2", *r.WaitedSeconds)
		}
	}
	if !waiter.Alive() || !reader.Alive() {
		t.Errorf("a waiter was ended: waiter alive %v, reader alive %v", waiter.Alive(), reader.Alive())
	}
	if n, ok := actedLog(t, d, root.PID)["released"]; !ok || n != 2.0 {
		t.Errorf("the acted log line says released %v (%t), want 2", n, ok)
	}
}

// actedLog is the daemon's "acted" log line of pid, once written (it
// follows the audit line).
func actedLog(t *testing.T, d *daemon, pid int32) map[string]any {
	t.Helper()
	var line map[string]any
	pgtest.Eventually(t, fmt.Sprintf("the acted log line of %d", pid), func() (bool, error) {
		for _, l := range strings.Split(d.logs.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "acted" && m["pid"] == float64(pid) {
				line = m
				return true, nil
			}
		}
		return false, nil
	})
	return line
}

// A root whose waiters have waited less than the threshold is not acted
// on, even when the daemon's clock says the threshold is past: the
// signalling statement judges the waits by the server's clock, and finds
// none that old.
func TestBlockingLongerThanNotBefore(t *testing.T) {
	t.Parallel()
	root, waiter, _ := pileUp(t, "")
	d, clk := startFake(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 2h
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: pileup
    match: {app: [TAG], blocking_longer_than: 1h}
    action: terminate
`)
	at := clk.Step(t)
	if at.Before(epoch.Add(time.Hour-time.Minute)) || at.After(epoch.Add(time.Hour+watch.Margin)) {
		t.Fatalf("armed at %s, want about an hour after %s", at, epoch)
	}
	for range watch.MaxRetries {
		clk.Step(t)
	}
	if next := clk.Waiting(t); !next.Equal(epoch.Add(2 * time.Hour)) {
		t.Fatalf("after the retries, waits for %s, want the next snapshot at %s", next, epoch.Add(2*time.Hour))
	}
	if !root.Alive() || !waiter.Alive() {
		t.Fatalf("acted on: root alive %v, waiter alive %v", root.Alive(), waiter.Alive())
	}
	if n := len(d.entries(t)); n != 0 {
		t.Fatalf("%d audit lines, want none", n)
	}
}

// A cancel rule on the root of a pile-up that runs a query: the query is
// cancelled, its transaction aborts and releases the lock, and the audit
// line names the waiters released. Both wait on the root alone (two
// readers), so both hold their locks when the root lets go: with a waiter
// in between, the reader behind it is released only once that one's ALTER
// has ended, which may be after the look (TestBlockingLongerThanAtTheThreshold
// waits for it under a fake clock).
func TestBlockingLongerThanCancelsTheRoot(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	root := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	root.Exec("CREATE TABLE t (id int)")
	root.Exec("BEGIN")
	root.Exec("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
	root.Start("SELECT pg_catalog.pg_sleep(60)")
	root.WaitState("active", "")
	waiter := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	waiter.Start("SELECT count(*) FROM t")
	waiter.WaitState("active", "Lock")
	reader := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	reader.Start("SELECT count(*) FROM t")
	reader.WaitState("active", "Lock")
	d := startDaemon(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: pileup
    match: {app: [TAG], blocking_longer_than: 500ms}
    action: cancel
`)
	if code := pgtest.SQLState(root.Wait()); code != "57014" {
		t.Fatalf("the root's query ended with SQLSTATE %q, want 57014 (cancelled)", code)
	}
	if err := waiter.Wait(); err != nil {
		t.Fatalf("the waiter: %v", err)
	}
	if err := reader.Wait(); err != nil {
		t.Fatalf("the reader: %v", err)
	}
	got := d.waitEntries(t, 1)
	e := got[0]
	if len(got) != 1 || e.PID != root.PID || e.Outcome != "cancelled" {
		t.Fatalf("audit %+v", got)
	}
	want := []int32{waiter.PID, reader.PID}
	slices.Sort(want)
	if pids := releasedPIDs(t, e, 0); !slices.Equal(pids, want) {
		t.Errorf("released %v, want %v", pids, want)
	}
	waitSnapshots(t, d, 2)
	if got := d.entries(t); len(got) != 1 {
		t.Errorf("audit %+v, want one line", got)
	}
}

// A prepared transaction at the root of a pile-up has no backend: nothing
// is acted on, not the waiter in between either, though it blocks a wait
// older than the threshold.
func TestBlockingLongerThanPreparedRoot(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	setup := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	setup.Exec("CREATE TABLE t (id int)")
	pgtest.PrepareTransaction(t, db, "", "", "LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
	waiter := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	waiter.Start("ALTER TABLE t ADD COLUMN c int")
	waiter.WaitState("active", "Lock")
	reader := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	reader.Start("SELECT count(*) FROM t")
	reader.WaitState("active", "Lock")
	d := startDaemon(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: pileup
    match: {app: [TAG], blocking_longer_than: 300ms}
    action: terminate
`)
	waitedLonger(t, reader.PID, 300*time.Millisecond)
	waitSnapshots(t, d, 3)
	if got := d.entries(t); len(got) != 0 {
		t.Fatalf("audit %+v, want nothing acted on", got)
	}
	if !waiter.Alive() || !reader.Alive() || !setup.Alive() {
		t.Fatalf("a session was ended: waiter %v, reader %v, setup %v", waiter.Alive(), reader.Alive(), setup.Alive())
	}
}

// A session in the middle of a pile-up (it holds a lock the reader waits
// for and waits for the root's) becomes its root when the rule ends the
// root above it. The reader has waited longer than the threshold, but
// behind a session that was itself waiting: the new root is due the
// threshold after the look that first sees it blocking without waiting,
// not at once. The first root's audit line names the middle session
// released, not the reader, which still waits.
func TestBlockingLongerThanMiddleBecomesRoot(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	root := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	root.Exec("CREATE TABLE x (id int); CREATE TABLE y (id int)")
	root.Exec("BEGIN")
	root.Exec("LOCK TABLE y IN ACCESS EXCLUSIVE MODE")
	middle := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	middle.Exec("BEGIN")
	middle.Exec("LOCK TABLE x IN ACCESS EXCLUSIVE MODE")
	middle.Start("LOCK TABLE y IN ACCESS EXCLUSIVE MODE")
	middle.WaitState("active", "Lock")
	reader := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	reader.Start("SELECT count(*) FROM x")
	reader.WaitState("active", "Lock")
	d, clk := startFake(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1h
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: pileup
    match: {app: [TAG], blocking_longer_than: 2s}
    action: terminate
`)
	due := clk.Waiting(t)
	waitedLonger(t, reader.PID, 2*time.Second)
	clk.Set(t, due)
	pgtest.Eventually(t, "the root terminated", func() (bool, error) { return !root.Alive(), nil })
	if err := middle.Wait(); err != nil {
		t.Fatalf("the middle session's LOCK: %v", err)
	}
	clk.Step(t) // the first poll verifies the root's end
	got := d.waitEntries(t, 1)
	if e := got[0]; len(got) != 1 || e.PID != root.PID || e.Outcome != "terminated" {
		t.Fatalf("audit %+v", got)
	}
	if pids := releasedPIDs(t, got[0], 0); !slices.Equal(pids, []int32{middle.PID}) {
		t.Errorf("released %v, want only the middle session %d (the reader %d waits for it)", pids, middle.PID, reader.PID)
	}

	// The next look: the middle session is the root of the reader's wait,
	// older than 2s, and has blocked it as a root only since this look.
	look := clk.Step(t)
	if look != epoch.Add(time.Hour) {
		t.Fatalf("stepped to %s, want the next look at %s", look, epoch.Add(time.Hour))
	}
	next := clk.Waiting(t)
	if next.Before(look.Add(2 * time.Second)) {
		t.Fatalf("the middle session armed at %s, want 2s after the look that saw it a root (%s)", next, look)
	}
	if !middle.Alive() || len(d.entries(t)) != 1 {
		t.Fatalf("before its threshold: middle alive %v, audit %+v", middle.Alive(), d.entries(t))
	}
	clk.Set(t, next)
	pgtest.Eventually(t, "the middle session terminated", func() (bool, error) { return !middle.Alive(), nil })
	if err := reader.Wait(); err != nil {
		t.Fatalf("the reader: %v", err)
	}
	if !reader.Alive() {
		t.Error("the reader was ended")
	}
}
