package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// standbyIdle is how many idle sessions the primary and the standby each
// hold.
const standbyIdle = 1000

// BenchmarkLsStandby times the snapshot statement of `pgreap ls` on a hot
// standby, where its replay part (issue 20: the CTEs replay_waiter and
// replay_blockers, behind a one-time filter on pg_is_in_recovery(), and the
// startup process's replay facts) is read, against the statement as it
// was before issue 20 (commit 608ea47, frozen in testdata/snapshot-608ea47),
// the baseline: the same server state, the same connection, one after the
// other in every iteration (the new one first on odd iterations), as
// BenchmarkLsPileup does.
//
// A primary and its streaming standby (max_standby_streaming_delay=-1)
// each hold 1000 idle sessions. Sub-benchmarks:
//
//	primary         on the primary: the replay part is skipped
//	standby         on the standby, replay running
//	standby-held    on the standby, replay held up: a standby session
//	                read a table in its open transaction and the primary
//	                dropped it, so the startup process waits for the lock
//
// Metrics: ms/new, ms/old and ratio (ms/new / ms/old), as BenchmarkLsPileup.
func BenchmarkLsStandby(b *testing.B) {
	primary := startCluster(b)
	standby := pgtest.OwnStandby(b, primary, pgtest.StandbyOptions{
		Settings: map[string]string{"max_standby_streaming_delay": "-1"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	connect := func(c *pgtest.Cluster, app string) *pgx.Conn {
		cfg, err := pgx.ParseConfig(c.DSN("postgres", "postgres"))
		if err != nil {
			b.Fatal(err)
		}
		cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
		cfg.RuntimeParams["application_name"] = app
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	p := connect(primary, "standby-bench")
	if _, err := p.Exec(ctx, "CREATE TABLE standby_dropped (x int)"); err != nil {
		b.Fatal(err)
	}
	openSessions(b, primary, standbyIdle)
	openSessions(b, standby, standbyIdle)
	pgtest.WaitReplay(b, standby, primary)
	s := connect(standby, "standby-bench")

	var version int
	if err := p.QueryRow(ctx, "SELECT pg_catalog.current_setting('server_version_num')::int").Scan(&version); err != nil {
		b.Fatal(err)
	}
	file := "snapshot.v14.sql"
	switch {
	case version < 130000:
		file = "snapshot.v12.sql"
	case version < 140000:
		file = "snapshot.v13.sql"
	}
	newSQL, err := activity.Statement(version)
	if err != nil {
		b.Fatal(err)
	}
	newSQL += " ORDER BY a.pid"
	oldSQL := readSQL(b, filepath.Join(sourceRoot(b), "bench", "testdata", "snapshot-608ea47", file))

	pair := func(b *testing.B, conn *pgx.Conn) {
		var oldTimes, newTimes []time.Duration
		i := 0
		for b.Loop() {
			newFirst := i%2 == 1
			i++
			if newFirst {
				newTimes = append(newTimes, timeSnapshot(ctx, b, conn, newSQL, standbyIdle))
			}
			oldTimes = append(oldTimes, timeSnapshot(ctx, b, conn, oldSQL, standbyIdle))
			if !newFirst {
				newTimes = append(newTimes, timeSnapshot(ctx, b, conn, newSQL, standbyIdle))
			}
		}
		mOld, mNew := meanMS(oldTimes), meanMS(newTimes)
		b.ReportMetric(mNew*float64(time.Millisecond), "ns/op")
		b.ReportMetric(mNew, "ms/new")
		b.ReportMetric(mOld, "ms/old")
		b.ReportMetric(mNew/mOld, "ratio")
		b.Logf("%d pairs; median ms: old %.2f, new %.2f (ratio %.2f); max ms: old %.2f, new %.2f",
			len(newTimes), medianMS(oldTimes), medianMS(newTimes), medianMS(newTimes)/medianMS(oldTimes),
			maxMS(oldTimes), maxMS(newTimes))
	}

	b.Run("primary", func(b *testing.B) {
		checkStandbyRows(ctx, b, p, newSQL, false, false, nil)
		pair(b, p)
	})
	b.Run("standby", func(b *testing.B) {
		checkStandbyRows(ctx, b, s, newSQL, true, false, nil)
		pair(b, s)
	})
	b.Run("standby-held", func(b *testing.B) {
		blocker := connect(standby, "standby-blocker")
		for _, sql := range []string{"BEGIN", "SELECT * FROM standby_dropped"} {
			if _, err := blocker.Exec(ctx, sql); err != nil {
				b.Fatalf("blocker: %s: %v", sql, err)
			}
		}
		defer func() {
			if _, err := blocker.Exec(ctx, "ROLLBACK"); err != nil {
				b.Errorf("blocker: ROLLBACK: %v", err)
			}
		}()
		if _, err := p.Exec(ctx, "DROP TABLE standby_dropped"); err != nil {
			b.Fatal(err)
		}
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(10 * time.Millisecond) {
			var n int
			err := s.QueryRow(ctx, `SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity
				WHERE backend_type = 'startup' AND wait_event_type = 'Lock'`).Scan(&n)
			if err != nil {
				b.Fatal(err)
			}
			if n == 1 {
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("replay does not wait for the lock after 2 minutes")
			}
		}
		checkStandbyRows(ctx, b, s, newSQL, true, true, []int32{int32(blocker.PgConn().PID())})
		pair(b, s)
	})
}

// checkStandbyRows runs this checkout's statement once and checks its
// replay columns: on a standby one row (the startup process's) has the
// replay facts, and held says whether replay waits, for blockers, the rows
// marked blocking_replay; on a primary no row has either.
func checkStandbyRows(ctx context.Context, b *testing.B, conn *pgx.Conn, sql string, standby, held bool, blockers []int32) {
	b.Helper()
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		b.Fatal(err)
	}
	recs, err := pgx.CollectRows(rows, pgx.RowToMap)
	if err != nil {
		b.Fatal(err)
	}
	if len(recs) < standbyIdle {
		b.Fatalf("%d rows, want at least %d", len(recs), standbyIdle)
	}
	var replays []map[string]any
	marked := []int32{}
	for _, r := range recs {
		if r["in_recovery"] != standby {
			b.Fatalf("pid %v: in_recovery %v, want %v", r["pid"], r["in_recovery"], standby)
		}
		if r["blocking_replay"] == true {
			marked = append(marked, r["pid"].(int32))
		}
		if r["replay"] != nil {
			replays = append(replays, r["replay"].(map[string]any))
		}
	}
	if blockers == nil {
		blockers = []int32{}
	}
	if !slices.Equal(marked, blockers) {
		b.Fatalf("blocking_replay on %v, want %v", marked, blockers)
	}
	if !standby {
		if len(replays) != 0 {
			b.Fatalf("replay facts on a primary: %v", replays)
		}
		return
	}
	if len(replays) != 1 || replays[0]["lock_wait"] != held {
		b.Fatalf("replay facts %v, want one row with lock_wait %v", replays, held)
	}
	if held {
		want := fmt.Sprint(blockers)
		if got := fmt.Sprint(replays[0]["blockers"]); got != want {
			b.Fatalf("replay blockers %s, want %s", got, want)
		}
	}
}
