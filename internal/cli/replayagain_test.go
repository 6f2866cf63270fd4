package cli_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// Two DROP TABLEs, two records: once the first one's blocker is
// cancelled, replay goes on and waits again, for the second table's
// reader. unblock --replay must not call that a success.
func TestUnblockReplayWaitsAgain(t *testing.T) {
	t.Parallel()
	sc := newReplayScene(t, "a", "b")
	ra, rb := sc.victim(t), sc.victim(t)
	ra.Start("SELECT pg_catalog.pg_sleep(600) FROM a")
	rb.Start("SELECT pg_catalog.pg_sleep(600) FROM b")
	sc.waitActive(t, ra)
	sc.waitActive(t, rb)
	if _, err := sc.p.Exec(pgtest.Context(t), "DROP TABLE a"); err != nil {
		t.Fatal(err)
	}
	sc.drop(t, "b")
	// Replay waits on a's record already: the wait sc.drop looks for says
	// nothing of b's. The standby must have b's record before unblock
	// runs, or replay, let go, finds nothing more to wait on (CI saw exit
	// 0).
	var lsn string
	if err := sc.p.QueryRow(pgtest.Context(t), "SELECT pg_catalog.pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	pgtest.Eventually(t, "the standby received b's DROP", func() (bool, error) {
		var got bool
		err := sc.s.QueryRow(pgtest.Context(t), "SELECT pg_catalog.pg_last_wal_receive_lsn() >= $1::text::pg_lsn", lsn).Scan(&got)
		return got, err
	})

	r := run(t, false, "unblock", "--replay", "--yes", "--timeout", "20s", "-d", sc.dsn)
	r.wantCode(t, 3)
	if !strings.Contains(r.errOut, "went on, then waits again") || !strings.Contains(r.errOut, strconv.Itoa(int(rb.PID))) ||
		strings.Count(r.errOut, "\n") != 1 {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", r.out, r.errOut)
	}
	if err := ra.Wait(); pgtest.SQLState(err) != "57014" {
		t.Fatalf("the first blocker ended with %v, want a cancel", err)
	}
	if !sc.alive(t, rb) {
		t.Fatal("the second table's reader was ended without being shown first")
	}
	r = run(t, false, "unblock", "--replay", "--yes", "-d", sc.dsn)
	r.wantCode(t, 0)
	pgtest.WaitReplay(t, sc.standby, sc.primary)
}

// A role that may not see the startup process (no pg_read_all_stats)
// still learns the server is a standby, who holds replay up (pg_locks is
// every role's), and that its own signal was denied: never "not a
// standby", never a success.
func TestUnblockReplayHiddenStartup(t *testing.T) {
	t.Parallel()
	sc := newReplayScene(t, "t")
	if _, err := sc.p.Exec(pgtest.Context(t), "CREATE ROLE replay_nopriv LOGIN"); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitReplay(t, sc.standby, sc.primary)
	dsn := sc.standby.DSN("postgres", "replay_nopriv")

	r := run(t, false, "ls", "-o", "json", "-d", dsn)
	rows := jsonRows(t, r.out)
	if len(rows) == 0 || rows[0]["backend_type"] != "startup" || rows[0]["pid"] != nil || !strings.Contains(r.out, `"blocking_replay":false`) {
		t.Fatalf("ls as a role without pg_read_all_stats, replay not waiting:\n%s\n%s", r.out, r.errOut)
	}
	r = run(t, false, "unblock", "--replay", "--yes", "-d", dsn)
	r.wantCode(t, 1)
	if strings.Contains(r.errOut, "not a standby") || !strings.Contains(r.errOut, "pg_read_all_stats") {
		t.Fatalf("stderr %q", r.errOut)
	}

	blocker := sc.victim(t)
	blocker.Start("SELECT pg_catalog.pg_sleep(600) FROM t")
	sc.waitActive(t, blocker)
	sc.drop(t, "t")
	r = run(t, false, "ls", "-o", "json", "-d", dsn)
	rows = jsonRows(t, r.out)
	if len(rows) == 0 || rows[0]["backend_type"] != "startup" || rows[0]["pid"] == nil ||
		!strings.Contains(r.out, `"blocked_by":[`+strconv.Itoa(int(blocker.PID))+`]`) {
		t.Fatalf("ls as a role without pg_read_all_stats, replay waiting:\n%s", r.out)
	}
	r = run(t, false, "unblock", "--replay", "--yes", "--timeout", "1s", "-d", dsn)
	r.wantCode(t, 3)
	if !strings.Contains(r.out, "denied") || !strings.Contains(r.errOut, "denied") || strings.Contains(r.errOut, "--terminate") {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", r.out, r.errOut)
	}
	if !sc.alive(t, blocker) {
		t.Fatal("the superuser's session was ended by a role without privileges")
	}
}

// A snapshot conflict: a vacuum on the primary removed rows an old
// snapshot on the standby may still see, and replay waits for that
// snapshot's transaction (max_standby_streaming_delay=-1). The server
// names no one; from 13 it shows the wait. pgreap says replay is held up
// and by what kind of wait, ends nothing, and exits 3.
func TestUnblockReplaySnapshotConflict(t *testing.T) {
	t.Parallel()
	sc := newReplayScene(t)
	ctx := pgtest.Context(t)
	if _, err := sc.p.Exec(ctx, `CREATE TABLE bp (i int) WITH (autovacuum_enabled = off);
		INSERT INTO bp SELECT pg_catalog.generate_series(1, 1000)`); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitReplay(t, sc.standby, sc.primary)
	old := sc.victim(t)
	old.Exec("BEGIN ISOLATION LEVEL REPEATABLE READ")
	old.Exec("SELECT count(*) FROM bp")
	if _, err := sc.p.Exec(ctx, "DELETE FROM bp WHERE i % 3 = 0"); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.p.Exec(ctx, "VACUUM bp"); err != nil {
		t.Fatal(err)
	}
	var version int
	if err := sc.s.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		t.Fatal(err)
	}
	if version < 130000 {
		// No wait event says so before 13: replay is behind, and pgreap
		// can only show its lag and WAL to replay.
		pgtest.Eventually(t, "replay stuck behind the vacuum", func() (bool, error) {
			r := run(t, false, "ls", "-o", "json", "-d", sc.dsn)
			rows := jsonRows(t, r.out)
			replay, _ := rows[0]["replay"].(map[string]any)
			return replay != nil && replay["lag_bytes"] != nil && replay["lag_bytes"].(float64) > 0, nil
		})
	} else {
		pgtest.Eventually(t, "replay waits for the snapshot", func() (bool, error) {
			var n int
			err := sc.s.QueryRow(ctx, "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'startup' AND wait_event = 'RecoveryConflictSnapshot'").Scan(&n)
			return n == 1, err
		})
		r := run(t, false, "ls", "-d", sc.dsn)
		if !strings.Contains(r.out, "WAL replay") || !strings.Contains(r.out, "RecoveryConflict") || !strings.Contains(r.out, " ? ") {
			t.Fatalf("ls:\n%s", r.out)
		}
		r = run(t, false, "unblock", "--replay", "--yes", "-d", sc.dsn)
		r.wantCode(t, 3)
		if !strings.Contains(r.errOut, "backend_xmin") || strings.Count(r.errOut, "\n") != 1 {
			t.Fatalf("stdout:\n%s\nstderr:\n%s", r.out, r.errOut)
		}
		if !sc.alive(t, old) {
			t.Fatal("a session was ended though the server named none")
		}
	}
	old.Exec("COMMIT")
	pgtest.WaitReplay(t, sc.standby, sc.primary)
}

// Replay holds the primary's ACCESS EXCLUSIVE lock while the primary's
// transaction is open, and a standby query waits for it. A role without
// pg_read_all_stats still sees which pid is WAL replay (its locks), and
// unblock names it as replay, not as a nameless backend.
func TestReplayHoldsALock(t *testing.T) {
	t.Parallel()
	sc := newReplayScene(t, "t4")
	ctx := pgtest.Context(t)
	if _, err := sc.p.Exec(ctx, "CREATE ROLE replay_plain LOGIN; GRANT SELECT ON t4 TO replay_plain"); err != nil {
		t.Fatal(err)
	}
	tx, err := sc.p.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "LOCK TABLE t4 IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	// Written out, so the standby replays the lock while it is held.
	if _, err := tx.Exec(ctx, "SELECT pg_catalog.txid_current(); SELECT pg_catalog.pg_switch_wal()"); err != nil {
		t.Fatal(err)
	}
	var startup int32
	pgtest.Eventually(t, "replay holds the lock", func() (bool, error) {
		err := sc.s.QueryRow(ctx, `SELECT l.pid FROM pg_catalog.pg_locks AS l
			WHERE l.mode = 'AccessExclusiveLock' AND l.granted AND l.relation = 't4'::regclass`).Scan(&startup)
		return err == nil, nil
	})
	waiter := pgtest.NewVictim(t, pgtest.VictimOptions{Cluster: sc.standby, User: "replay_plain"})
	waiter.Start("SELECT * FROM t4")
	pgtest.Eventually(t, "the reader waits behind replay", func() (bool, error) {
		var n int
		err := sc.s.QueryRow(ctx, "SELECT count(*) FROM pg_catalog.pg_locks WHERE pid = $1 AND NOT granted", waiter.PID).Scan(&n)
		return n == 1, err
	})
	dsn := sc.standby.DSN("postgres", "replay_plain")
	r := run(t, false, "ls", "-o", "json", "-d", dsn)
	rows := jsonRows(t, r.out)
	if len(rows) == 0 || rows[0]["backend_type"] != "startup" || rows[0]["pid"] != float64(startup) {
		t.Fatalf("the replay row, as a role without pg_read_all_stats: want pid %d\n%s", startup, r.out)
	}
	r = run(t, false, "unblock", "--longer-than", "0", "--dry-run", "-d", dsn)
	r.wantCode(t, 3)
	if !strings.Contains(r.out, "WAL replay (the startup process)") || !strings.Contains(r.out, "protected") {
		t.Fatalf("unblock as a role without pg_read_all_stats:\nstdout:\n%s\nstderr:\n%s", r.out, r.errOut)
	}
}
