package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/activity"
)

// pileupIdle is how many idle sessions the server holds besides the pile-up.
const pileupIdle = 1000

// pileupGID names the prepared transaction at the root of a pile-up.
const pileupGID = "bench_pileup"

// BenchmarkLsPileup times the snapshot statement of `pgreap ls` while
// sessions wait on a lock, against the statement as it was before issue 16
// (commit ebdb774, frozen in testdata/snapshot-ebdb774), the baseline: the
// same server state, the same connection, one after the other in every
// iteration (the new one first on odd iterations). Issue 16 added two
// materialized CTEs over pg_locks and, per waiter, a subquery naming the
// prepared transactions it waits on; whatever that costs shows here. What
// pgreap does with the rows afterwards is BenchmarkLs's subject.
//
// The server holds 1000 idle sessions. Sub-benchmarks:
//
//	waiters=0          no lock wait at all
//	waiters=N          one session holds ACCESS EXCLUSIVE on a table in an
//	                   open transaction; N sessions wait in SELECT count(*)
//	waiters=N/prepared the same, the lock held by a prepared transaction
//
// Each statement runs as pgreap runs it (pgx QueryExecModeExec: parsed and
// planned every time, as by each pgreap process), with " ORDER BY a.pid"
// appended as Take does; timed from sending it to the last row read
// (unparsed). Metrics:
//
//	ms/new   mean time of this checkout's statement (ns/op is the same)
//	ms/old   mean time of the ebdb774 statement
//	ratio    ms/new / ms/old
func BenchmarkLsPileup(b *testing.B) {
	c := startCluster(b)
	openSessions(b, c, pileupIdle)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cfg, err := pgx.ParseConfig(c.DSN("postgres", "postgres"))
	if err != nil {
		b.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	config := func(app string) *pgx.ConnConfig {
		cc := cfg.Copy()
		cc.RuntimeParams["application_name"] = app
		return cc
	}
	conn, err := pgx.ConnectConfig(ctx, config("pileup-bench"))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(context.Background())
	var version int
	if err := conn.QueryRow(ctx, "SELECT pg_catalog.current_setting('server_version_num')::int").Scan(&version); err != nil {
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
	// As Take runs it, and as readSQL gives the old one.
	newSQL += " ORDER BY a.pid"
	oldSQL := readSQL(b, filepath.Join(sourceRoot(b), "bench", "testdata", "snapshot-ebdb774", file))
	if _, err := conn.Exec(ctx, "CREATE TABLE pileup_t (i int)"); err != nil {
		b.Fatal(err)
	}

	for _, tc := range []struct {
		waiters  int
		prepared bool
	}{{0, false}, {200, false}, {200, true}, {1000, false}, {1000, true}} {
		name := fmt.Sprintf("waiters=%d", tc.waiters)
		if tc.prepared {
			name += "/prepared"
		}
		b.Run(name, func(b *testing.B) {
			holder := uint32(0)
			if tc.waiters > 0 {
				var release func()
				holder, release = startPileup(ctx, b, conn, config, tc.waiters, tc.prepared)
				defer release()
			}
			// Untimed: both statements once, and what they say about the
			// waiters checked.
			for _, sql := range []string{oldSQL, newSQL} {
				checkPileup(ctx, b, conn, sql, tc.waiters, holder, tc.prepared, sql == newSQL)
			}
			var oldTimes, newTimes []time.Duration
			i := 0
			for b.Loop() {
				newFirst := i%2 == 1
				i++
				if newFirst {
					newTimes = append(newTimes, timeSnapshot(ctx, b, conn, newSQL, pileupIdle+tc.waiters))
				}
				oldTimes = append(oldTimes, timeSnapshot(ctx, b, conn, oldSQL, pileupIdle+tc.waiters))
				if !newFirst {
					newTimes = append(newTimes, timeSnapshot(ctx, b, conn, newSQL, pileupIdle+tc.waiters))
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
		})
	}
}

func readSQL(b *testing.B, path string) string {
	b.Helper()
	text, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	return string(text) + " ORDER BY a.pid"
}

// startPileup makes one session hold ACCESS EXCLUSIVE on pileup_t (in an
// open transaction, or in a prepared one) and n sessions wait for it, and
// returns once pg_locks shows all n waiting. It returns the holder's pid (0
// for a prepared transaction) and release, which ends the holder's
// transaction, checks that every waiter then got its count, and closes them.
func startPileup(ctx context.Context, b *testing.B, conn *pgx.Conn, config func(string) *pgx.ConnConfig, n int, prepared bool) (uint32, func()) {
	b.Helper()
	h, err := pgx.ConnectConfig(ctx, config("pileup-holder"))
	if err != nil {
		b.Fatal(err)
	}
	stmts := []string{"BEGIN", "LOCK TABLE pileup_t IN ACCESS EXCLUSIVE MODE"}
	if prepared {
		stmts = append(stmts, "PREPARE TRANSACTION '"+pileupGID+"'")
	}
	for _, sql := range stmts {
		if _, err := h.Exec(ctx, sql); err != nil {
			h.Close(ctx)
			b.Fatalf("holder: %s: %v", sql, err)
		}
	}
	waiters := openVictims(b, config("pileup-waiter"), n)
	done := make(chan error, n)
	for _, w := range waiters {
		go func() {
			_, err := w.Exec(ctx, "SELECT count(*) FROM pileup_t")
			done <- err
		}()
	}
	release := func() {
		var errs []error
		if prepared {
			_, err := conn.Exec(ctx, "ROLLBACK PREPARED '"+pileupGID+"'")
			errs = append(errs, err)
		} else {
			_, err := h.Exec(ctx, "ROLLBACK")
			errs = append(errs, err)
		}
		h.Close(ctx)
		for range waiters {
			errs = append(errs, <-done)
		}
		closeAll(waiters)
		if err := errors.Join(errs...); err != nil {
			b.Errorf("releasing the pile-up: %v", err)
		}
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(10 * time.Millisecond) {
		var waiting int
		err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_catalog.pg_locks WHERE NOT granted AND relation = 'pileup_t'::regclass").Scan(&waiting)
		if err != nil || waiting == n {
			if err != nil {
				release()
				b.Fatal(err)
			}
			break
		}
		if time.Now().After(deadline) {
			release()
			b.Fatalf("%d of %d waiters waiting after 2 minutes", waiting, n)
		}
	}
	if prepared {
		return 0, release
	}
	return h.PgConn().PID(), release
}

// checkPileup runs sql once and checks its rows: every session listed, and
// exactly the waiters blocked, by the holder's pid or, for the new
// statement, by the prepared transaction's GID (the old one says pid 0).
func checkPileup(ctx context.Context, b *testing.B, conn *pgx.Conn, sql string, waiters int, holder uint32, prepared, isNew bool) {
	b.Helper()
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		b.Fatal(err)
	}
	recs, err := pgx.CollectRows(rows, pgx.RowToMap)
	if err != nil {
		b.Fatal(err)
	}
	if len(recs) < pileupIdle+waiters {
		b.Fatalf("%d rows, want at least %d", len(recs), pileupIdle+waiters)
	}
	want := []int32{int32(holder)}
	if prepared && isNew {
		want = []int32{}
	}
	blocked := 0
	for _, r := range recs {
		by, _ := r["blocked_by"].([]any)
		if r["blocked_by"] == nil {
			continue
		}
		blocked++
		got := make([]int32, 0, len(by))
		for _, p := range by {
			got = append(got, p.(int32))
		}
		if !slices.Equal(got, want) {
			b.Fatalf("pid %v: blocked_by %v, want %v", r["pid"], got, want)
		}
		if isNew {
			gids, _ := r["blocked_by_prepared"].([]any)
			if prepared != (len(gids) == 1 && gids[0] == pileupGID) || !prepared && len(gids) != 0 {
				b.Fatalf("pid %v: blocked_by_prepared %v (prepared root: %v)", r["pid"], gids, prepared)
			}
		}
	}
	if blocked != waiters {
		b.Fatalf("%d sessions blocked, want %d", blocked, waiters)
	}
}

// timeSnapshot runs sql and reads its rows without decoding them.
func timeSnapshot(ctx context.Context, b *testing.B, conn *pgx.Conn, sql string, atLeast int) time.Duration {
	b.Helper()
	start := time.Now()
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	rows.Close()
	wall := time.Since(start)
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
	if n < atLeast {
		b.Fatalf("%d rows, want at least %d", n, atLeast)
	}
	return wall
}
