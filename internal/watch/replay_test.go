package watch_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// TestStandbyReplayBlocker: a rule for the sessions that block WAL replay
// on a standby target cancels exactly the blocker, once its query is older
// than the threshold; replay then goes on, and the session that blocks
// nothing keeps its transaction.
func TestStandbyReplayBlocker(t *testing.T) {
	t.Parallel()
	h := pgtest.HoldReplay(t)
	d := startDaemon(t, h.Standby.DSN("postgres", pgtest.Superuser), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1s
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: replay
    match: {app: [TAG], blocking_replay: true, longer_than: 2s}
    action: cancel
`)
	if code := pgtest.SQLState(h.Blocker.Wait()); code != "57014" {
		t.Fatalf("the blocker's query ended with SQLSTATE %q, want 57014 (cancelled)", code)
	}
	e := d.waitEntries(t, 1)[0]
	if e.Rule != "replay" || e.PID != h.Blocker.PID || !e.BackendStart.Equal(h.Blocker.BackendStart) || e.Action != "cancel" ||
		e.Outcome != "cancelled" || e.Target != pgtest.Tag(t) || e.DryRun || e.QueryStart == nil {
		t.Fatalf("audit line %+v", e)
	}
	var stateChange time.Time
	s := pgtest.Connect(t, h.Standby.DSN("postgres", pgtest.Superuser))
	if err := s.QueryRow(pgtest.Context(t), "SELECT state_change FROM pg_catalog.pg_stat_activity WHERE pid = $1", h.Blocker.PID).Scan(&stateChange); err != nil {
		t.Fatal(err)
	}
	if early := e.QueryStart.Add(2 * time.Second).Sub(stateChange); early > 0 {
		t.Errorf("cancelled %s before the threshold", early)
	}
	pgtest.WaitReplay(t, h.Standby, h.Primary)
	if lag := testutil.ToFloat64(d.Metrics().ReplayLag.WithLabelValues(pgtest.Tag(t))); lag <= 0 {
		t.Errorf("pgreap_replay_lag_seconds %v, want the lag of a standby whose replay waited", lag)
	}
	if n := len(d.entries(t)); n != 1 {
		t.Errorf("%d audit lines, want 1: %+v", n, d.entries(t))
	}
	var state string
	if err := s.QueryRow(pgtest.Context(t), "SELECT state FROM pg_catalog.pg_stat_activity WHERE pid = $1", h.Other.PID).Scan(&state); err != nil || state != "active" {
		t.Errorf("session %d, which blocks nothing: %q (%v), want its query running", h.Other.PID, state, err)
	}
}

// TestPrimaryHasNoReplayLag: pgreap_replay_lag_seconds has no series for
// a primary.
func TestPrimaryHasNoReplayLag(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 100ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: none
    match: {app: [TAG], longer_than: 1h}
    action: cancel
`)
	pgtest.Eventually(t, "two snapshots", func() (bool, error) { return snapshots(t, d) >= 2, nil })
	if n := testutil.CollectAndCount(d.Metrics().ReplayLag); n != 0 {
		t.Errorf("%d pgreap_replay_lag_seconds series for a primary", n)
	}
}
