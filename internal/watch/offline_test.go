package watch_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
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
