package activity_test

import (
	"slices"
	"testing"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/selector"
)

// TestReplayBlockers holds up WAL replay on a standby: a session reads a
// table the primary then drops. pg_blocking_pids of the startup process is
// empty; the snapshot names the blocker from pg_locks, and only it.
func TestReplayBlockers(t *testing.T) {
	t.Parallel()
	primary := pgtest.Own(t, pgtest.Options{})
	standby := pgtest.OwnStandby(t, primary, pgtest.StandbyOptions{Settings: map[string]string{"max_standby_streaming_delay": "-1"}})
	ctx := pgtest.Context(t)
	p := pgtest.Connect(t, primary.DSN("postgres", pgtest.Superuser))
	if _, err := p.Exec(ctx, "CREATE TABLE dropped (x int); CREATE TABLE kept (x int)"); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitReplay(t, standby, primary)

	blocker := pgtest.NewVictim(t, pgtest.VictimOptions{Cluster: standby})
	blocker.Exec("BEGIN")
	blocker.Exec("SELECT * FROM dropped")
	other := pgtest.NewVictim(t, pgtest.VictimOptions{Cluster: standby})
	other.Exec("BEGIN")
	other.Exec("SELECT * FROM kept")

	cn := pgtest.PgreapDSN(t, standby.DSN("postgres", pgtest.Superuser))
	if snap := take(t, cn); snap.Replay == nil || snap.Replay.Waits() {
		t.Fatalf("before the drop: replay %+v, want a standby whose replay does not wait", snap.Replay)
	}
	if _, err := p.Exec(ctx, "DROP TABLE dropped"); err != nil {
		t.Fatal(err)
	}
	var snap *activity.Snapshot
	pgtest.Eventually(t, "replay waits for a lock", func() (bool, error) {
		snap = take(t, cn)
		return snap.Replay != nil && snap.Replay.Startup.WaitEventType == "Lock", nil
	})
	r := snap.Replay
	if r.Startup.BackendType != "startup" || !slices.Equal(r.Startup.BlockedBy, []int32{blocker.PID}) {
		t.Errorf("startup row: backend_type %q, blocked by %v; want startup, blocked by %d", r.Startup.BackendType, r.Startup.BlockedBy, blocker.PID)
	}
	if slices.ContainsFunc(snap.Sessions, func(s activity.Session) bool { return s.PID == r.Startup.PID }) {
		t.Error("the startup process is among the sessions")
	}
	if got := find(snap, blocker.PID); got == nil || !got.BlockingReplay {
		t.Errorf("blocker %d: %+v, want blocking_replay", blocker.PID, got)
	}
	if got := find(snap, other.PID); got == nil || got.BlockingReplay {
		t.Errorf("session on another table %d: %+v, want not blocking_replay", other.PID, got)
	}
	if snap.ServerVersion >= 140000 && r.WaitingSince.IsZero() {
		t.Error("replay's wait has no start on 14+ (pg_locks.waitstart)")
	}
	if r.ReplayLSN == "" || r.ReceiveLSN == "" || r.LagBytes == nil || *r.LagBytes <= 0 {
		t.Errorf("replay position: receive %q replay %q lag_bytes %v; want the drop received and not replayed", r.ReceiveLSN, r.ReplayLSN, r.LagBytes)
	}

	// The selector chooses on the server exactly the blocker.
	sel, err := selector.Parse(selector.Spec{BlockingReplay: true, App: []string{pgtest.Tag(t) + "*"}})
	if err != nil {
		t.Fatal(err)
	}
	chosen, err := sel.Take(ctx, cn)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int32
	for _, s := range chosen.Sessions {
		pids = append(pids, s.PID)
	}
	if !slices.Equal(pids, []int32{blocker.PID}) {
		t.Errorf("--blocking-replay chose %v, want [%d]", pids, blocker.PID)
	}
	if chosen.Replay == nil {
		t.Error("a selected snapshot of a standby has no replay")
	}

	// Once the blocker's transaction ends, replay goes on.
	blocker.Exec("COMMIT")
	pgtest.WaitReplay(t, standby, primary)
	snap = take(t, cn)
	if snap.Replay == nil || snap.Replay.Waits() || len(snap.Replay.Startup.BlockedBy) != 0 {
		t.Errorf("after the blocker committed: replay %+v, want it not waiting", snap.Replay)
	}
}

// TestReplayPrimary: a primary has no replay, and no session blocks it.
func TestReplayPrimary(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Exec("BEGIN")
	v.Exec("SELECT 1")
	snap := take(t, open(t, pgtest.Superuser))
	if snap.Replay != nil {
		t.Errorf("primary: replay %+v", snap.Replay)
	}
	if s := find(snap, v.PID); s == nil || s.BlockingReplay {
		t.Errorf("primary session: %+v", s)
	}
}
