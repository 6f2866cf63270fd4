package watch_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/watch"
)

// A watch whose target is a hot standby is elected there (an advisory
// lock works in recovery), sends nothing the standby refuses, and cancels
// a standby's query at its threshold, by the deadline, not the poll.
func TestWatchOnStandby(t *testing.T) {
	t.Parallel()
	s := pgtest.Standby(t)
	v := pgtest.NewVictim(t, pgtest.VictimOptions{Cluster: s})
	v.Start("SELECT pg_catalog.pg_sleep(600)")
	v.WaitState("active", "")
	d := startDaemon(t, s.DSN("postgres", pgtest.Superuser), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1m
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], state: [active], longer_than: 1s}
    action: cancel
`)
	if code := pgtest.SQLState(v.Wait()); code != "57014" {
		t.Fatalf("the query ended with SQLSTATE %q, want 57014 (cancelled)", code)
	}
	e := d.waitEntries(t, 1)[0]
	if e.Rule != "slow" || e.PID != v.PID || !e.BackendStart.Equal(v.BackendStart) || e.Action != "cancel" || e.Outcome != "cancelled" {
		t.Fatalf("audit line %+v", e)
	}
	// By the standby's clock: after the threshold, and long before the
	// next poll (a minute) would have found it.
	var queryStart, stateChange time.Time
	if err := pgtest.Connect(t, s.DSN("postgres", pgtest.Superuser)).QueryRow(pgtest.Context(t),
		"SELECT query_start, state_change FROM pg_catalog.pg_stat_activity WHERE pid = $1", v.PID).Scan(&queryStart, &stateChange); err != nil {
		t.Fatal(err)
	}
	if !queryStart.Equal(*e.QueryStart) {
		t.Fatalf("query_start %s, audited %s", queryStart, e.QueryStart)
	}
	if over := stateChange.Sub(queryStart.Add(time.Second)); over < 0 || over > 30*time.Second {
		t.Errorf("cancelled %s after the threshold, want after it and before the next poll", over)
	}
	if len(d.entries(t)) != 1 {
		t.Errorf("audit lines %+v", d.entries(t))
	}
}

// Two watches of one standby: one leads, the other stands by for it, seen
// as a replica (the election lock's holder read from the standby's
// pg_locks), healthy, no conflict.
func TestWatchReplicasOnStandby(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	standbyDSN := pgtest.Standby(t).DSN("postgres", pgtest.Superuser)
	const pol = `
targets: [{name: TAG, dsn: "DSN"}]
interval: 100ms
audit_log: AUDIT
metrics_addr: 127.0.0.1:0
rules:
  - name: slow
    match: {app: [TAG-v], state: [active]}
    action: cancel
`
	first := startDaemon(t, standbyDSN, pol)
	waitHealth(t, first, http.StatusOK, map[string]watch.State{tag: watch.Leading})
	second := startDaemon(t, standbyDSN, pol)
	waitHealth(t, second, http.StatusOK, map[string]watch.State{tag: watch.Standby})
	if n := testutil.ToFloat64(second.Metrics().LeaderConflict.WithLabelValues(tag)); n != 0 {
		t.Errorf("pgreap_leader_conflict %v for a replica", n)
	}
}
