package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgreap/pgreap/internal/cluster"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// poolHold is how long each drain holds the database.
const poolHold = 5 * time.Second

// poolClients is how many request loops the application runs, each on a
// connection of its pool (pgxpool, as many connections).
const poolClients = 8

// BenchmarkDrainPgBouncer is an application behind PgBouncer (transaction
// mode, started for the benchmark in front of its own cluster): a pgxpool
// of 8 connections, 8 loops of SELECT pg_sleep(0.02) (20 ms queries), each
// query with a 60 s deadline, counting the queries that fail and timing
// the longest. Per iteration, in an order that alternates, each on a
// database of its own:
//
//	pgbouncer  `pgreap drain DB --pgbouncer CONSOLE`, hold 5 s, `pgreap
//	           undrain DB --pgbouncer CONSOLE`; pgreap's own "every pooler
//	           paused in D" is its time to paused.
//	plain      `pgreap drain DB`, hold 5 s, `pgreap undrain DB`: the drain
//	           without the pooler.
//	pause      a fresh console connection and a bare `PAUSE DB`, timed to
//	           its answer, then `RESUME DB`: the floor of the time to
//	           paused (no long transaction in either).
//
// Each round waits until the pool has run queries again after the undrain
// (or the RESUME), then counts. Metrics:
//
//	errors/pgbouncer  the pool's failed queries per drain with --pgbouncer (goal: 0)
//	errors/plain      the same without it
//	maxwait-ms/pgbouncer  the longest query during a drain with --pgbouncer (≈ the hold)
//	paused-ms/pgreap  the drain's time to paused, its own measure
//	paused-ms/bare    the bare PAUSE
//	ratio             paused-ms/pgreap / paused-ms/bare (goal: at most 1.2)
func BenchmarkDrainPgBouncer(b *testing.B) {
	bin := buildPgreap(b)
	c := startCluster(b)
	ctx := context.Background()
	pgb, err := cluster.StartPgBouncer(ctx, c, cluster.PgBouncerOptions{PoolMode: "transaction",
		// the held clients must outwait the hold
		Settings: map[string]string{"query_wait_timeout": "120"}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = pgb.Stop() })
	console := pgb.AdminDSN(cluster.AdminUser)
	env := append([]string{"PATH=/usr/bin:/bin", "HOME=" + os.Getenv("HOME"), "PGREAP_STATE_DIR=" + b.TempDir()}, c.Env()...)
	admin, err := pgx.Connect(ctx, c.DSN("postgres", pgtest.Superuser))
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close(ctx)

	type stats struct {
		errors  []int64
		maxwait []time.Duration
		paused  []time.Duration
	}
	got := map[string]*stats{"pgbouncer": {}, "plain": {}, "pause": {}}
	pausedRE := regexp.MustCompile(`every pooler paused in (\S+)`)
	i := 0
	for b.Loop() {
		order := []string{"pgbouncer", "plain", "pause"}
		var line []string
		for j := range order {
			name := order[(i+j)%len(order)]
			db := fmt.Sprintf("drainpool_%d_%s", i, name)
			if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()); err != nil {
				b.Fatal(err)
			}
			p := startAppPool(b, pgb.DSN(db, pgtest.Superuser))
			run := func(args ...string) string {
				cmd := exec.Command(bin, args...)
				cmd.Env = env
				out, err := cmd.CombinedOutput()
				if err != nil {
					b.Fatalf("pgreap %s: %v\n%s", strings.Join(args, " "), err, out)
				}
				return string(out)
			}
			before := p.done.Load()
			switch name {
			case "pgbouncer", "plain":
				args := []string{"drain", db}
				if name == "pgbouncer" {
					args = append(args, "--pgbouncer", console)
				}
				out := run(args...)
				if name == "pgbouncer" {
					m := pausedRE.FindStringSubmatch(out)
					if m == nil {
						b.Fatalf("drain says no time to paused:\n%s", out)
					}
					d, err := time.ParseDuration(m[1])
					if err != nil {
						b.Fatal(err)
					}
					got[name].paused = append(got[name].paused, d)
				}
				time.Sleep(poolHold) // the hold being measured, not a wait for a condition
				args[0] = "undrain"
				run(args...)
			case "pause":
				cn, err := pgconn.Connect(ctx, console)
				if err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				if _, err := cn.Exec(ctx, "PAUSE "+pgx.Identifier{db}.Sanitize()).ReadAll(); err != nil {
					b.Fatal(err)
				}
				got[name].paused = append(got[name].paused, time.Since(start))
				if _, err := cn.Exec(ctx, "RESUME "+pgx.Identifier{db}.Sanitize()).ReadAll(); err != nil {
					b.Fatal(err)
				}
				cn.Close(ctx)
			}
			// Back: the pool runs queries again.
			deadline := time.Now().Add(time.Minute)
			for p.done.Load() < before+2*poolClients && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			p.stop()
			got[name].errors = append(got[name].errors, p.errs.Load())
			got[name].maxwait = append(got[name].maxwait, time.Duration(p.maxwait.Load()))
			line = append(line, fmt.Sprintf("%s: %d errors (first %v), longest query %s", name, p.errs.Load(), p.firstErr(), time.Duration(p.maxwait.Load()).Round(time.Millisecond)))
			if _, err := admin.Exec(ctx, "DROP DATABASE "+pgx.Identifier{db}.Sanitize()+" WITH (FORCE)"); err != nil {
				b.Logf("drop %s: %v", db, err)
			}
		}
		b.Logf("iteration %d: %s", i, strings.Join(line, "; "))
		i++
	}
	mean := func(xs []int64) float64 {
		var s int64
		for _, x := range xs {
			s += x
		}
		return float64(s) / float64(len(xs))
	}
	b.ReportMetric(mean(got["pgbouncer"].errors), "errors/pgbouncer")
	b.ReportMetric(mean(got["plain"].errors), "errors/plain")
	b.ReportMetric(meanMS(got["pgbouncer"].maxwait), "maxwait-ms/pgbouncer")
	b.ReportMetric(meanMS(got["pgbouncer"].paused), "paused-ms/pgreap")
	b.ReportMetric(meanMS(got["pause"].paused), "paused-ms/bare")
	b.ReportMetric(meanMS(got["pgbouncer"].paused)/meanMS(got["pause"].paused), "ratio")
}

// appPool is the application: a pgxpool and its request loops.
type appPool struct {
	pool    *pgxpool.Pool
	done    atomic.Int64
	errs    atomic.Int64
	maxwait atomic.Int64
	mu      sync.Mutex
	first   error
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

func startAppPool(b *testing.B, dsn string) *appPool {
	b.Helper()
	// exec mode: PgBouncer 1.18 keeps no prepared statement across
	// transactions.
	cfg, err := pgxpool.ParseConfig(dsn + " default_query_exec_mode=exec")
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns, cfg.MinConns = poolClients, poolClients
	ctx, cancel := context.WithCancel(context.Background())
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	p := &appPool{pool: pool, cancel: cancel}
	for range poolClients {
		p.wg.Go(func() {
			for ctx.Err() == nil {
				qctx, qcancel := context.WithTimeout(ctx, time.Minute)
				start := time.Now()
				_, err := pool.Exec(qctx, "SELECT pg_catalog.pg_sleep(0.02)")
				qcancel()
				took := int64(time.Since(start))
				for {
					m := p.maxwait.Load()
					if took <= m || p.maxwait.CompareAndSwap(m, took) {
						break
					}
				}
				switch {
				case ctx.Err() != nil:
					return
				case err != nil:
					p.errs.Add(1)
					p.mu.Lock()
					if p.first == nil {
						p.first = err
					}
					p.mu.Unlock()
					time.Sleep(10 * time.Millisecond) // an application's retry pause
				default:
					p.done.Add(1)
				}
			}
		})
	}
	deadline := time.Now().Add(time.Minute)
	for p.done.Load() < poolClients && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return p
}

func (p *appPool) stop() {
	p.cancel()
	p.wg.Wait()
	p.pool.Close()
}

func (p *appPool) firstErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.first
}
