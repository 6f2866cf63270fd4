package watch_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/policy"
	"github.com/pgreap/pgreap/internal/watch"
)

// --test says which sessions a budget lets through and which it
// suppresses, as the daemon does: five sessions past a rule's threshold,
// a budget of two. The daemon (fake clock) cancels two and audits three
// suppressed; Test, on an ls -o json snapshot of the same sessions, names
// the same ones.
func TestOfflineBudgetAsTheDaemon(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	vs := sleepers(t, tag, 5)
	for _, v := range vs {
		olderThan(t, v, time.Second)
	}
	const text = `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1h
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], state: [active], query: "pg_sleep", longer_than: 1s}
    action: cancel
    max_actions: {count: 2, per: 10m}
`
	// The snapshot as ls -o json writes it, taken before the daemon acts.
	conn := pgtest.Connect(t, dsn(t))
	snap, err := activity.Take(pgtest.Context(t), conn, activity.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	rows := make([]output.Row, len(snap.Sessions))
	for i := range snap.Sessions {
		rows[i] = output.Row{Session: snap.Sessions[i]}
	}
	var buf bytes.Buffer
	if err := output.WriteRows(&buf, output.JSON, rows, output.Options{Now: snap.Taken}); err != nil {
		t.Fatal(err)
	}
	taken, _ := json.Marshal(snap.Taken)
	saved, err := output.ReadSnapshot([]byte(fmt.Sprintf(`{"taken_at": %s, "sessions": %s}`, taken, buf.Bytes())), time.Time{})
	if err != nil {
		t.Fatal(err)
	}

	d, clk := startFake(t, dsn(t), text)
	pol, err := policy.Load(d.path)
	if err != nil {
		t.Fatal(err)
	}
	var offActs, offSuppressed []int32
	for _, v := range watch.Test(pol, saved, false) {
		if vs[v.Session.PID] == nil {
			continue
		}
		switch {
		case v.Rule != "slow" || !v.Due.Equal(saved.Taken):
			t.Errorf("--test: %+v, want slow now", v)
		case v.Outcome == "":
			offActs = append(offActs, v.Session.PID)
		case v.Outcome == "suppressed":
			offSuppressed = append(offSuppressed, v.Session.PID)
		default:
			t.Errorf("--test: %+v", v)
		}
	}
	at := clk.Step(t)
	clk.Waiting(t)
	suppressed := byOutcome(d.entries(t), "suppressed")
	var daemonSuppressed, daemonActs []int32
	for pid := range vs {
		if suppressed[pid] > 0 {
			daemonSuppressed = append(daemonSuppressed, pid)
		} else {
			daemonActs = append(daemonActs, pid)
		}
	}
	cancelledBy(t, d, clk, vs, daemonActs, 0, at.Add(watch.VerifyFor))
	slices.Sort(daemonActs)
	slices.Sort(daemonSuppressed)
	slices.Sort(offActs)
	slices.Sort(offSuppressed)
	if len(daemonActs) != 2 || !slices.Equal(daemonActs, offActs) || !slices.Equal(daemonSuppressed, offSuppressed) {
		t.Fatalf("the daemon cancelled %v and suppressed %v; --test says acts %v, suppressed %v",
			daemonActs, daemonSuppressed, offActs, offSuppressed)
	}
}

// --test on a lock pile-up: the rule takes the root only, at the oldest
// wait behind it (wait_start) plus D; the waiters and a bystander its
// match holds but for the duration are taken by no rule, and not said
// protected (they would never be due: they are no roots).
func TestOfflinePileUp(t *testing.T) {
	t.Parallel()
	const file = `{"taken_at": "2026-12-02T10:00:00Z", "sessions": [
{"pid": 10, "datname": "shop", "application_name": "app", "backend_type": "client backend", "state": "idle in transaction",
 "backend_start": "2026-12-02T09:00:00Z", "xact_start": "2026-12-02T09:58:00Z", "query_start": "2026-12-02T09:58:00Z", "state_change": "2026-12-02T09:58:00Z",
 "query": "UPDATE t SET x = 1", "blocked_by": [], "blocked_by_prepared": [], "wait_start": null},
{"pid": 11, "datname": "shop", "application_name": "app", "backend_type": "client backend", "state": "active",
 "backend_start": "2026-12-02T09:00:00Z", "query_start": "2026-12-02T09:58:30Z", "state_change": "2026-12-02T09:58:30Z",
 "query": "LOCK TABLE t", "blocked_by": [10], "blocked_by_prepared": [], "wait_start": "2026-12-02T09:59:00Z"},
{"pid": 12, "datname": "shop", "application_name": "app", "backend_type": "client backend", "state": "active",
 "backend_start": "2026-12-02T09:00:00Z", "query_start": "2026-12-02T09:59:40Z", "state_change": "2026-12-02T09:59:40Z",
 "query": "SELECT * FROM t", "blocked_by": [11], "blocked_by_prepared": [], "wait_start": "2026-12-02T09:59:40Z"},
{"pid": 13, "datname": "shop", "application_name": "app", "backend_type": "client backend", "state": "idle",
 "backend_start": "2026-12-02T09:00:00Z", "query_start": "2026-12-02T09:50:00Z", "state_change": "2026-12-02T09:50:00Z",
 "query": "SELECT 1", "blocked_by": [], "blocked_by_prepared": []}
]}`
	snap, err := output.ReadSnapshot([]byte(file), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse("policy.yaml", []byte(`
targets: [{name: main, dsn: "host=/nonexistent"}]
rules:
  - name: pileup
    match: {db: [shop], blocking_longer_than: 2m}
    action: terminate
`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range watch.Test(pol, snap, false) {
		got = append(got, fmt.Sprintf("%d %q %s %q", v.Session.PID, v.Rule, v.Due.Format(time.TimeOnly), v.Outcome))
	}
	want := []string{
		`10 "pileup" 10:01:00 ""`, // pid 11's wait, the oldest behind it, began at 09:59
		`11 "" 00:00:00 ""`,       // waits (and blocks 12): no root
		`12 "" 00:00:00 ""`,
		`13 "" 00:00:00 ""`, // blocks no one
	}
	if !slices.Equal(got, want) {
		t.Errorf("verdicts:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// A role without pg_read_all_stats sees another role's sessions without
// backend_start (or state, or times): --test reads its ls -o json, and a
// rule that takes such a session is denied, as the daemon's guard denies
// it (it cannot make sure the session it would signal is the one chosen).
func TestOfflineUnseen(t *testing.T) {
	t.Parallel()
	const file = `{"taken_at": "2026-12-02T10:00:00Z", "sessions": [
{"pid": 20, "datname": "shop", "usename": "bob", "application_name": "batch", "backend_type": null, "state": null,
 "backend_start": null, "xact_start": null, "query_start": null, "state_change": null, "query": "<insufficient privilege>",
 "blocked_by": [], "blocked_by_prepared": []},
{"pid": 21, "datname": "shop", "usename": "bob", "application_name": "batch", "backend_type": "client backend", "state": "idle",
 "backend_start": "2026-12-02T09:00:00Z", "query_start": "2026-12-02T09:50:00Z", "state_change": "2026-12-02T09:50:00Z",
 "query": "SELECT 1", "blocked_by": [], "blocked_by_prepared": []}
]}`
	snap, err := output.ReadSnapshot([]byte(file), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse("policy.yaml", []byte(`
targets: [{name: main, dsn: "host=/nonexistent"}]
rules:
  - name: batch
    match: {user: [bob]}
    action: terminate
`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range watch.Test(pol, snap, false) {
		got = append(got, fmt.Sprintf("%d %q %q", v.Session.PID, v.Rule, v.Outcome))
		if v.Outcome == "denied" && !strings.Contains(v.Detail, "pg_read_all_stats") {
			t.Errorf("denied %d: %q, want the privilege it lacks", v.Session.PID, v.Detail)
		}
	}
	want := []string{`20 "batch" "denied"`, `21 "batch" ""`}
	if !slices.Equal(got, want) {
		t.Errorf("verdicts:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
