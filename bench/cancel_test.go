package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// The floor's statements for BenchmarkCancel. $1 is the application_name
// of the sessions whose queries to cancel.
const (
	cancelFloorSQL = `SELECT pg_catalog.pg_cancel_backend(pid) FROM pg_catalog.pg_stat_activity WHERE application_name = $1 AND state = 'active'`
	runningSQL     = `SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE application_name = $1 AND state = 'active'`
)

// BenchmarkCancel cancels the running queries of 1000 sessions two ways,
// each on a fresh set of 1000 sessions running SELECT pg_sleep(600), in an
// order that alternates from one iteration to the next:
//
//	pgreap  `pgreap cancel --app TAG --yes -o json`, a fresh process, timed
//	        from start to exit; its JSON must list 1000 sessions, all
//	        cancelled, and every client must have got 57014.
//	floor   the least work that cancels them and knows their queries
//	        ended: a fresh pgx connection, one pg_cancel_backend(pid)
//	        statement for the set, then a count of the set's active
//	        sessions every 5 ms until it is 0; timed from connect to close.
//
// pgreap reads each session afresh at its signal, and again right after it
// (docs/safety.md); the floor reads pg_stat_activity once. Starting the
// sessions and their queries is not timed.
//
// Metrics:
//
//	ms/pgreap  mean wall time of one pgreap run
//	ms/floor   mean wall time of the floor
//	ratio      ms/pgreap / ms/floor (target: at most 1.3)
func BenchmarkCancel(b *testing.B) {
	bin := buildPgreap(b)
	c := startCluster(b)
	cfg, err := pgx.ParseConfig(c.DSN("postgres", pgtest.Superuser))
	if err != nil {
		b.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	t := &terminateBench{cfg: cfg}
	env := append([]string{"PATH=/usr/bin:/bin", "HOME=" + os.Getenv("HOME")}, c.Env()...)
	b.Cleanup(t.reapLeftovers)
	variants := []struct {
		name string
		run  func(tag string) time.Duration
	}{
		{"pgreap", func(tag string) time.Duration {
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(bin, "cancel", "--app", tag, "--yes", "-o", "json")
			cmd.Env, cmd.Stdout, cmd.Stderr = env, &stdout, &stderr
			start := time.Now()
			err := cmd.Run()
			wall := time.Since(start)
			if err != nil {
				b.Fatalf("pgreap cancel: %v\n%s\n%s", err, stderr.Bytes(), head(stdout.Bytes()))
			}
			var rows []struct {
				Outcome string `json:"outcome"`
			}
			if err := json.Unmarshal(stdout.Bytes(), &rows); err != nil {
				b.Fatalf("pgreap cancel output: %v\n%s", err, head(stdout.Bytes()))
			}
			cancelled := 0
			for _, r := range rows {
				if r.Outcome == "cancelled" {
					cancelled++
				}
			}
			if len(rows) != victims || cancelled != victims {
				b.Fatalf("pgreap cancel: %d rows, %d cancelled, want %d:\n%s", len(rows), cancelled, victims, head(stdout.Bytes()))
			}
			return wall
		}},
		{"floor", func(tag string) time.Duration {
			wall, _ := t.floorWith(b, tag, cancelFloorSQL, runningSQL)
			return wall
		}},
	}
	times := make([][]time.Duration, len(variants))
	i := 0
	for b.Loop() {
		var line []string
		for k := range variants {
			v := (i + k) % len(variants)
			tag := fmt.Sprintf("victim-%d-%s", i, variants[v].name)
			d := cancelRound(b, t, tag, variants[v].run)
			times[v] = append(times[v], d)
			line = append(line, fmt.Sprintf("%s %.1f ms", variants[v].name, float64(d)/float64(time.Millisecond)))
		}
		b.Logf("iteration %d: %s", i, strings.Join(line, ", "))
		i++
	}
	mPgreap, mFloor := meanMS(times[0]), meanMS(times[1])
	b.ReportMetric(mPgreap*float64(time.Millisecond), "ns/op")
	b.ReportMetric(mPgreap, "ms/pgreap")
	b.ReportMetric(mFloor, "ms/floor")
	b.ReportMetric(mPgreap/mFloor, "ratio")
	b.Logf("%d iterations of %d sessions; median ms: pgreap %.1f, floor %.1f (ratio %.2f)",
		i, victims, medianMS(times[0]), medianMS(times[1]), medianMS(times[0])/medianMS(times[1]))
}

// cancelRound opens victims sessions named tag, starts a long query on
// each, lets run cancel them and time it, and checks that every client got
// 57014 and that the sessions are still there.
func cancelRound(b *testing.B, t *terminateBench, tag string, run func(string) time.Duration) time.Duration {
	b.Helper()
	conns := openVictims(b, t.config(tag), victims)
	defer closeAll(conns)
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, conn := range conns {
		wg.Go(func() { _, errs[i] = conn.Exec(context.Background(), "SELECT pg_catalog.pg_sleep(600)") })
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	check, err := pgx.ConnectConfig(ctx, t.config("bench-check"))
	if err != nil {
		b.Fatal(err)
	}
	defer check.Close(ctx)
	for {
		var n int64
		if err := check.QueryRow(ctx, runningSQL, tag).Scan(&n); err != nil {
			b.Fatal(err)
		}
		if n == victims {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	d := run(tag)
	wg.Wait()
	for i, err := range errs {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
			b.Fatalf("%s: session %d's query ended with %v, want 57014", tag, i, err)
		}
	}
	if n := t.left(b, tag); n != victims {
		b.Fatalf("%s: %d of %d sessions left after a cancel", tag, n, victims)
	}
	return d
}
