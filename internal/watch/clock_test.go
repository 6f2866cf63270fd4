package watch_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/watch"
)

// The tests here run the daemon on a fake clock against a real server: the
// server judges the thresholds by its own clock, the daemon schedules by
// the fake one. The fake clock starts far from the real time (the daemon
// bridges the two by the offset it measures at each snapshot), and a test
// moves it only once the server-side condition it needs already holds, so
// every step is decided, never raced.
var epoch = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func startFake(t *testing.T, dsn, text string) (*daemon, *watch.FakeClock) {
	t.Helper()
	clk := watch.NewFakeClock(epoch)
	return startDaemonOpts(t, dsn, text, watch.Options{Clock: clk}), clk
}

// olderThan waits until the victim's query has run longer than d by the
// server's clock.
func olderThan(t *testing.T, v *pgtest.Victim, d time.Duration) {
	t.Helper()
	pgtest.Eventually(t, fmt.Sprintf("the query older than %s", d), func() (bool, error) {
		var old bool
		err := pgtest.Admin(t).QueryRow(pgtest.Context(t), `SELECT state = 'active' AND now() - query_start > $2
			FROM pg_catalog.pg_stat_activity WHERE pid = $1`, v.PID, d).Scan(&old)
		return old, err
	})
}

// lastConnectedPID is the backend pid of the daemon's latest connection,
// from its log.
func lastConnectedPID(t *testing.T, d *daemon) int32 {
	t.Helper()
	var pid int32
	for _, l := range strings.Split(d.logs.String(), "\n") {
		var line struct {
			Msg string `json:"msg"`
			PID int32  `json:"pid"`
		}
		if json.Unmarshal([]byte(l), &line) == nil && line.Msg == "connected" {
			pid = line.PID
		}
	}
	if pid == 0 {
		t.Fatal("no connection logged")
	}
	return pid
}

// gone waits until the server has no backend pid, nor a lock of it.
func gone(t *testing.T, pid int32) {
	t.Helper()
	pgtest.Eventually(t, fmt.Sprintf("backend %d gone", pid), func() (bool, error) {
		var n int
		err := pgtest.Admin(t).QueryRow(pgtest.Context(t), `SELECT (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1)
			+ (SELECT count(*) FROM pg_catalog.pg_locks WHERE pid = $1)`, pid).Scan(&n)
		return n == 0, err
	})
}

// stillRunning fails the test unless the victim's query still runs.
func stillRunning(t *testing.T, v *pgtest.Victim, what string) {
	t.Helper()
	var state string
	if err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT state FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND backend_start = $2",
		v.PID, v.BackendStart).Scan(&state); err != nil || state != "active" {
		t.Fatalf("%s: the query no longer runs (state %q, %v)", what, state, err)
	}
}

// A rule with a duration arms the session's deadline from one snapshot,
// and acts at that instant of the daemon's clock, not before, even when
// the server would already let it.
func TestClockArmsAndActsAtTheDeadline(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	v.WaitState("active", "")
	d, clk := startFake(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1h
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], state: [active], longer_than: 2s}
    action: cancel
`)
	due := clk.Waiting(t)
	// query_start + 2s by the server's clock, on the daemon's: the query
	// started before the snapshot, so at most 2s from the snapshot.
	if due.Before(epoch.Add(watch.Margin)) || due.After(epoch.Add(2*time.Second+watch.Margin)) {
		t.Fatalf("armed at %s, want within 2s of the snapshot (%s)", due, epoch)
	}
	if n := snapshots(t, d); n != 1 {
		t.Fatalf("%d snapshots, want 1", n)
	}
	olderThan(t, v, 2*time.Second)
	clk.Set(t, due.Add(-time.Nanosecond))
	if next := clk.Waiting(t); !next.Equal(due) {
		t.Fatalf("waits for %s, want the deadline %s", next, due)
	}
	stillRunning(t, v, "before the deadline")
	if n := len(d.entries(t)); n != 0 {
		t.Fatalf("%d audit lines before the deadline", n)
	}

	clk.Set(t, due)
	if code := pgtest.SQLState(v.Wait()); code != "57014" {
		t.Fatalf("the query ended with SQLSTATE %q, want 57014 (cancelled)", code)
	}
	v.WaitState("idle", "")
	if at := clk.Step(t); !at.Equal(due.Add(watch.FirstPoll)) {
		t.Fatalf("verified at %s, want the first poll %s", at, due.Add(watch.FirstPoll))
	}
	got := d.waitEntries(t, 1)
	if e := got[0]; len(got) != 1 || e.PID != v.PID || e.Outcome != "cancelled" || !e.Time.Equal(due.Add(watch.FirstPoll)) {
		t.Fatalf("audit %+v", got)
	}
	if next := clk.Waiting(t); !next.Equal(epoch.Add(time.Hour)) {
		t.Fatalf("then waits for %s, want the next interval %s", next, epoch.Add(time.Hour))
	}
	if n := snapshots(t, d); n != 1 {
		t.Errorf("%d snapshots, want 1", n)
	}
}

// A signal sent before the session is past its threshold by the server's
// clock matches nothing: it is tried again 5ms later, then twice as late
// each time, maxRetries times, without a line in the audit log; then the
// next snapshot judges the session again.
func TestClockRetriesNoMatch(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Start("SELECT pg_catalog.pg_sleep(600)")
	v.WaitState("active", "")
	d, clk := startFake(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 2h
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], state: [active], longer_than: 1h}
    action: cancel
`)
	// The daemon's clock says the hour has passed; the server's does not.
	at := clk.Step(t)
	if at.Before(epoch.Add(time.Hour-time.Minute)) || at.After(epoch.Add(time.Hour+watch.Margin)) {
		t.Fatalf("armed at %s, want about an hour after %s", at, epoch)
	}
	for i := range watch.MaxRetries {
		next := clk.Waiting(t)
		if want := at.Add(watch.RetryNoMatch << i); !next.Equal(want) {
			t.Fatalf("retry %d at %s, want %s", i+1, next, want)
		}
		clk.Set(t, next)
		at = next
	}
	if next := clk.Waiting(t); !next.Equal(epoch.Add(2 * time.Hour)) {
		t.Fatalf("after the retries, waits for %s, want the next snapshot at %s", next, epoch.Add(2*time.Hour))
	}
	stillRunning(t, v, "after the retries")
	if n := len(d.entries(t)); n != 0 {
		t.Fatalf("%d audit lines for signals that matched nothing", n)
	}
	if n := strings.Count(d.logs.String(), "tried again"); n != watch.MaxRetries {
		t.Errorf("%d retries logged, want %d", n, watch.MaxRetries)
	}
	if n := testutil.ToFloat64(d.Metrics().Actions.WithLabelValues(tag, "slow", "cancel", "changed")); n != 1 {
		t.Errorf("actions changed = %v, want 1 (the last try)", n)
	}
	// Judged again by the next snapshot: armed again, an hour after the
	// query's start by the server's clock.
	clk.Set(t, epoch.Add(2*time.Hour))
	if next := clk.Waiting(t); next.Before(epoch.Add(2*time.Hour)) || !next.Before(epoch.Add(4*time.Hour)) {
		t.Fatalf("after the next snapshot, waits for %s, want the session armed again", next)
	}
	if n := snapshots(t, d); n != 2 {
		t.Errorf("%d snapshots, want 2", n)
	}
}

// cancel-then-terminate on the daemon's clock: a query that ends on the
// cancel is verified cancelled at the next poll; one that ignores it runs
// until the grace ends, to the instant, and is terminated then.
func TestClockGraceThenEscalation(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	sleeper := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-a"})
	sleeper.Start("SELECT pg_catalog.pg_sleep(60)")
	stubborn := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-b"})
	stubborn.Start(`DO $$ BEGIN LOOP BEGIN PERFORM pg_catalog.pg_sleep(60); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$`)
	sleeper.WaitState("active", "")
	stubborn.WaitState("active", "")
	d, clk := startFake(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1h
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: escalate
    match: {app: ["TAG-*"], state: [active]}
    action: cancel-then-terminate
    grace: 10m
`)
	// No duration: due at the snapshot.
	due := clk.Step(t)
	if !due.Equal(epoch.Add(watch.Margin)) {
		t.Fatalf("acted at %s, want at the snapshot %s", due, epoch.Add(watch.Margin))
	}
	if code := pgtest.SQLState(sleeper.Wait()); code != "57014" {
		t.Fatalf("sleeper: SQLSTATE %q, want 57014", code)
	}
	sleeper.WaitState("idle", "")
	if at := clk.Step(t); !at.Equal(due.Add(watch.FirstPoll)) {
		t.Fatalf("polled at %s, want %s", at, due.Add(watch.FirstPoll))
	}
	got := d.waitEntries(t, 1)
	if e := got[0]; len(got) != 1 || e.PID != sleeper.PID || e.Action != "cancel" || e.Outcome != "cancelled" {
		t.Fatalf("audit %+v", got)
	}

	end := due.Add(10 * time.Minute)
	clk.Set(t, end.Add(-time.Nanosecond))
	if next := clk.Waiting(t); !next.Equal(end) {
		t.Fatalf("waits for %s, want the end of the grace %s", next, end)
	}
	stillRunning(t, stubborn, "within the grace")
	if n := len(d.entries(t)); n != 1 {
		t.Fatalf("%d audit lines within the grace, want 1", n)
	}
	clk.Set(t, end)
	if code := pgtest.SQLState(stubborn.Wait()); code != "57P01" {
		t.Fatalf("stubborn: SQLSTATE %q, want 57P01", code)
	}
	pgtest.Eventually(t, "the stubborn session gone", func() (bool, error) { return !stubborn.Alive(), nil })
	if at := clk.Step(t); !at.Equal(end.Add(watch.FirstPoll)) {
		t.Fatalf("polled at %s, want %s", at, end.Add(watch.FirstPoll))
	}
	got = d.waitEntries(t, 2)
	if e := got[1]; len(got) != 2 || e.PID != stubborn.PID || e.Action != "terminate" || e.Outcome != "terminated" {
		t.Fatalf("audit %+v", got)
	}
	if !sleeper.Alive() {
		t.Error("the sleeper's session ended")
	}
}

// A signalled session still there when the verification ends (verifyFor on
// the daemon's clock) is audited survived, not before.
func TestClockSurvivedAfterVerification(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Start(`DO $$ BEGIN LOOP BEGIN PERFORM pg_catalog.pg_sleep(60); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$`)
	v.WaitState("active", "")
	// Closing its connection does not end a query that swallows cancels:
	// ended here, so a run of the test again (-count) finds none.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = pgtest.Admin(t).Exec(ctx, "SELECT pg_catalog.pg_terminate_backend($1)", v.PID)
	})
	d, clk := startFake(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1h
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: stubborn
    match: {app: [TAG], state: [active]}
    action: cancel
`)
	due := clk.Step(t)
	expire := due.Add(watch.VerifyFor)
	clk.Step(t) // a poll: still running
	clk.Set(t, expire.Add(-time.Nanosecond))
	if next := clk.Waiting(t); !next.Equal(expire) {
		t.Fatalf("waits for %s, want the end of the verification %s", next, expire)
	}
	if n := len(d.entries(t)); n != 0 {
		t.Fatalf("%d audit lines before the verification ended", n)
	}
	clk.Set(t, expire)
	got := d.waitEntries(t, 1)
	if e := got[0]; len(got) != 1 || e.PID != v.PID || e.Outcome != "survived" || !strings.Contains(e.Detail, "after 5s") {
		t.Fatalf("audit %+v", got)
	}
	stillRunning(t, v, "after the verification")
}

// A server that cannot be reached is tried again after a backoff that
// doubles from minBackoff to maxBackoff, with jitter in [50%, 100%].
func TestClockConnectBackoff(t *testing.T) {
	t.Parallel()
	d, clk := startFake(t, "", `
targets: [{name: TAG, dsn: "host=`+t.TempDir()+` port=5432 user=nobody dbname=nothing sslmode=disable"}]
interval: 1h
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: any
    match: {app: [TAG], state: [active]}
    action: cancel
`)
	at := epoch
	const attempts = 9
	for i := range attempts {
		next := clk.Waiting(t)
		full := min(watch.MinBackoff<<i, watch.MaxBackoff)
		if wait := next.Sub(at); wait < full/2 || wait > full {
			t.Errorf("attempt %d: retry in %s, want within [%s, %s]", i+1, wait, full/2, full)
		}
		clk.Set(t, next)
		at = next
	}
	clk.Waiting(t)
	if n := strings.Count(d.logs.String(), `"msg":"cannot connect"`); n != attempts+1 {
		t.Errorf("%d failed attempts logged, want %d", n, attempts+1)
	}
	if h := testutil.ToFloat64(d.Metrics().TargetUp.WithLabelValues(pgtest.Tag(t))); h != 0 {
		t.Errorf("target_up %v", h)
	}
}

// A lost connection is noticed at the next statement and tried again
// after the first backoff; the daemon connects and leads again.
func TestClockReconnect(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	p := pgtest.ProxyTo(t, pgtest.Shared(t))
	d, clk := startFake(t, p.DSN("postgres", pgtest.Superuser), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1h
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], state: [active], longer_than: 1h}
    action: cancel
`)
	for round := 1; round <= 2; round++ {
		tick := clk.Waiting(t)
		if testutil.ToFloat64(d.Metrics().Leader.WithLabelValues(tag)) != 1 {
			t.Fatalf("round %d: not leading", round)
		}
		p.Cut()
		clk.Set(t, tick) // the next snapshot finds the connection lost
		next := clk.Waiting(t)
		if wait := next.Sub(tick); wait < watch.MinBackoff/2 || wait > watch.MinBackoff {
			t.Errorf("round %d: reconnects in %s, want within [%s, %s]", round, wait, watch.MinBackoff/2, watch.MinBackoff)
		}
		if testutil.ToFloat64(d.Metrics().TargetUp.WithLabelValues(tag)) != 0 {
			t.Errorf("round %d: target_up while the connection is lost", round)
		}
		// The server ends the lost connection's backend (and frees the
		// election lock it holds) once it reads the close: the next
		// connection leads at once.
		gone(t, lastConnectedPID(t, d))
		clk.Set(t, next)
		if tick := clk.Waiting(t); !tick.Equal(next.Add(time.Hour)) {
			t.Fatalf("round %d: after reconnecting, waits for %s, want the next interval %s", round, tick, next.Add(time.Hour))
		}
	}
	if n := strings.Count(d.logs.String(), `"msg":"connection lost"`); n != 2 {
		t.Errorf("%d lost connections logged, want 2", n)
	}
	if n := strings.Count(d.logs.String(), `"msg":"connected"`); n != 3 {
		t.Errorf("%d connections logged, want 3", n)
	}
}

// Two replicas of one policy: the standby takes the lead at its first
// interval after the leader's connection is gone, not before (its clock
// has not moved) and not later.
func TestClockStandbyTakesOverAtTheNextInterval(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	const pol = `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1h
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], state: [active], longer_than: 1h}
    action: cancel
`
	a, clkA := startFake(t, dsn(t), pol)
	clkA.Waiting(t)
	if testutil.ToFloat64(a.Metrics().Leader.WithLabelValues(tag)) != 1 {
		t.Fatal("the first replica does not lead")
	}
	b, clkB := startFake(t, dsn(t), pol)
	if next := clkB.Waiting(t); !next.Equal(epoch.Add(time.Hour)) {
		t.Fatalf("the standby waits for %s, want the next interval %s", next, epoch.Add(time.Hour))
	}
	leader := func() float64 { return testutil.ToFloat64(b.Metrics().Leader.WithLabelValues(tag)) }
	if leader() != 0 || !strings.Contains(b.logs.String(), "standing by: another pgreap watch leads") {
		t.Fatalf("the second replica does not stand by:\n%s", b.logs.String())
	}

	pid := a.connectedPID(t, tag)
	a.stop()
	gone(t, pid)
	if leader() != 0 {
		t.Fatal("the standby leads before its next interval")
	}
	clkB.Set(t, epoch.Add(time.Hour))
	if next := clkB.Waiting(t); !next.Equal(epoch.Add(2 * time.Hour)) {
		t.Fatalf("then waits for %s, want the next interval %s", next, epoch.Add(2*time.Hour))
	}
	if leader() != 1 {
		t.Fatalf("the standby did not take the lead at its next interval:\n%s", b.logs.String())
	}
}

// A cancel whose query's client rolls back to a savepoint (psql's
// ON_ERROR_ROLLBACK, JDBC's autosave) and goes on in the same transaction
// cannot be told from a query that completed: its outcome is changed. The
// cancel was sent all the same: it is audited, with why.
func TestCancelRolledBackToSavepointIsAudited(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Exec("BEGIN")
	v.Exec("SAVEPOINT s")
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	v.WaitState("active", "")
	d, clk := startFake(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1h
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], state: [active], longer_than: 1s}
    action: cancel
`)
	due := clk.Waiting(t)
	olderThan(t, v, time.Second)
	clk.Set(t, due)
	if code := pgtest.SQLState(v.Wait()); code != "57014" {
		t.Fatalf("the query ended with SQLSTATE %q, want 57014 (cancelled)", code)
	}
	// The client rolls back to its savepoint and goes on.
	v.Exec("ROLLBACK TO SAVEPOINT s")
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	v.WaitState("active", "")
	clk.Step(t) // the first poll: the transaction went on with another statement
	got := d.waitEntries(t, 1)
	if e := got[0]; len(got) != 1 || e.PID != v.PID || e.Action != "cancel" || e.Outcome != "changed" || !strings.Contains(e.Detail, "savepoint") {
		t.Fatalf("audit %+v, want the cancel, changed, saying its client may have rolled back to a savepoint", got)
	}
}

// cancel-then-terminate terminates a session idle in a transaction at
// once (there is no query to cancel): a stop during what would have been
// its grace says nothing of a cancelled query or a grace cut short.
func TestStopAfterAnIdleSessionTerminatedAtOnce(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Exec("BEGIN")
	v.Exec("SELECT 1")
	v.WaitState("idle in transaction", "")
	d, clk := startFake(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1h
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: idle
    match: {app: [TAG], state: [idle in transaction]}
    action: cancel-then-terminate
    grace: 1h
`)
	clk.Set(t, clk.Waiting(t))
	pgtest.Eventually(t, "the session terminated", func() (bool, error) { return !v.Alive(), nil })
	clk.Step(t) // the first poll verifies it
	got := d.waitEntries(t, 1)
	if e := got[0]; len(got) != 1 || e.PID != v.PID || e.Action != "terminate" || e.Outcome != "terminated" {
		t.Fatalf("audit %+v", got)
	}
	d.stop()
	if logs := d.logs.String(); strings.Contains(logs, "grace ended") || strings.Contains(logs, `"level":"WARN"`) {
		t.Errorf("the stop warns of a grace cut short, though the session was terminated at once:\n%s", logs)
	}
}
