// Command quickstart shows pgreap at work on a throwaway server: it starts
// a PostgreSQL cluster in a temporary directory, opens a few realistic
// sessions (idle ones, a long report, a transaction left open holding a
// lock and a query queued behind it, a parallel query), runs pgreap ls on
// them, ends the blocker and cancels the report, and removes everything. `pgreap demo` will replace it.
//
//	go run ./internal/pgtest/quickstart
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/cli"
	"github.com/pgreap/pgreap/internal/pgtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	fmt.Println("starting a throwaway PostgreSQL cluster ...")
	c, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		return err
	}
	defer c.Stop()
	fmt.Printf("PostgreSQL %d in %s\n\n", c.Major, c.Dir)
	for _, kv := range c.Env() {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}

	var conns []*pgx.Conn
	var wg sync.WaitGroup
	bgCtx, cancelBackground := context.WithCancel(ctx)
	defer func() {
		cancelBackground()
		wg.Wait()
		for _, cn := range conns {
			cn.Close(context.Background())
		}
	}()
	open := func(db, app string, settings ...string) (*pgx.Conn, error) {
		cn, err := pgx.Connect(ctx, c.DSN(db, pgtest.Superuser)+" application_name="+app+" "+strings.Join(settings, " "))
		if err == nil {
			conns = append(conns, cn)
		}
		return cn, err
	}
	admin, err := open("postgres", "setup")
	if err != nil {
		return err
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE shop"); err != nil {
		return err
	}
	setup, err := open("shop", "setup")
	if err != nil {
		return err
	}
	if _, err := setup.Exec(ctx, `CREATE TABLE orders AS SELECT g AS id, g % 100 AS customer FROM generate_series(1, 300000) g;
		CREATE TABLE stock (sku text PRIMARY KEY, n int); INSERT INTO stock VALUES ('A1', 10); ANALYZE`); err != nil {
		return err
	}
	setup.Close(ctx)

	background := func(cn *pgx.Conn, sql string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = cn.Exec(bgCtx, sql)
		}()
	}
	for i := 0; i < 3; i++ {
		cn, err := open("shop", "web")
		if err != nil {
			return err
		}
		if _, err := cn.Exec(ctx, "SELECT n FROM stock WHERE sku = 'A1'"); err != nil {
			return err
		}
	}
	forgotten, err := open("shop", "batch")
	if err != nil {
		return err
	}
	if _, err := forgotten.Exec(ctx, "BEGIN; UPDATE stock SET n = n - 1 WHERE sku = 'A1'"); err != nil {
		return err
	}
	queued, err := open("shop", "web")
	if err != nil {
		return err
	}
	background(queued, "UPDATE stock SET n = n + 1 WHERE sku = 'A1'")
	// A parallel plan even on a small table, set by the connection so the
	// query text stays the report's own.
	report, err := open("shop", "report", "max_parallel_workers_per_gather=2", "parallel_setup_cost=0", "min_parallel_table_scan_size=0")
	if err != nil {
		return err
	}
	background(report, "SELECT customer, count(*) FROM orders WHERE pg_sleep(0.001) IS NOT NULL GROUP BY customer")

	// Wait until the lock wait and the report's workers show.
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		var waiting, workers int
		err := admin.QueryRow(ctx, `SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'),
			count(*) FILTER (WHERE backend_type = 'parallel worker') FROM pg_stat_activity`).Scan(&waiting, &workers)
		if err != nil {
			return err
		}
		if waiting > 0 && (workers > 0 || time.Now().After(deadline.Add(-15*time.Second))) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	admin.Close(ctx)

	streams := cli.System()
	for _, args := range [][]string{
		{"ls", "--db", "shop"},
		{"ls", "--blocking"},
		{"ls", "--waiting", "-o", "json"},
		{"terminate", "--blocking", "--state", "idle in transaction", "--dry-run"},
		{"terminate", "--blocking", "--state", "idle in transaction", "--yes"},
		{"cancel", "--app", "report", "--yes"},
		{"ls", "--db", "shop"},
	} {
		shown := make([]string, len(args))
		for i, a := range args {
			shown[i] = a
			if strings.Contains(a, " ") {
				shown[i] = "'" + a + "'"
			}
		}
		fmt.Printf("$ pgreap %s\n", strings.Join(shown, " "))
		code := cli.Run(ctx, args, streams)
		fmt.Printf("(exit %d)\n\n", code)
	}
	fmt.Println("stopping the cluster and removing", c.Dir)
	return nil
}
