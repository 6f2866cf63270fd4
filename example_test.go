package pgreap_test

import (
	"context"
	"fmt"
	"log"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// The examples run against a throwaway server: pgtest points the PG*
// variables at it, so Connect("") connects as psql with no arguments would.
func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Options{})
}

// session opens a client session named app, as an application would.
func session(ctx context.Context, app, sql string) *pgx.Conn {
	c, err := pgx.Connect(ctx, "application_name="+app)
	if err != nil {
		log.Fatal(err)
	}
	if sql != "" {
		if _, err := c.Exec(ctx, sql); err != nil {
			log.Fatal(err)
		}
	}
	return c
}

func ExampleSessions() {
	ctx := context.Background()
	app := session(ctx, "example-sessions", "BEGIN; SELECT 42")
	defer app.Close(ctx)

	conn, err := pgreap.Connect(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(ctx)
	sessions, err := pgreap.Sessions(ctx, conn, &pgreap.Selection{App: []string{"example-sessions"}})
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range sessions {
		fmt.Printf("%s: %s: %s\n", s.ApplicationName, s.State, s.Query)
	}
	// Output:
	// example-sessions: idle in transaction: BEGIN; SELECT 42
}

func ExampleTerminate() {
	ctx := context.Background()
	// A transaction someone forgot.
	forgotten := session(ctx, "example-batch", "BEGIN; SELECT 1")
	defer forgotten.Close(ctx)

	conn, err := pgreap.Connect(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(ctx)
	results, err := pgreap.Terminate(ctx, conn, pgreap.Target{
		Select: &pgreap.Selection{App: []string{"example-*"}, State: []string{"idle in transaction"}},
	}, pgreap.Options{Limit: 10})
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range results {
		fmt.Println(r.ApplicationName, r.Action, r.Outcome)
	}
	// Output:
	// example-batch terminate terminated
}

func ExampleCancel() {
	ctx := context.Background()
	conn, err := pgreap.Connect(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(ctx)

	// Cancelling one's own session is refused, even by pid.
	results, err := pgreap.Cancel(ctx, conn, pgreap.Target{PIDs: []int32{int32(conn.PgConn().PID())}}, pgreap.Options{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(results[0].Outcome, "-", results[0].Detail)
	// Output:
	// protected - pgreap's own session
}

func ExampleDrain() {
	ctx := context.Background()
	conn, err := pgreap.Connect(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE example_drain"); err != nil {
		log.Fatal(err)
	}
	defer conn.Exec(ctx, "DROP DATABASE example_drain")
	app := session(ctx, "example-drain dbname=example_drain", "BEGIN; SELECT 1")
	defer app.Close(ctx)

	drained, err := pgreap.Drain(ctx, conn, "example_drain", pgreap.DrainOptions{Timeout: time.Minute})
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range drained.Ended {
		fmt.Println(r.ApplicationName, r.Outcome)
	}
	if _, err := pgx.Connect(ctx, "dbname=example_drain"); err != nil {
		fmt.Println("new connections refused")
	}
	// Reopen it as it was.
	if err := pgreap.Undrain(ctx, conn, "example_drain", drained.Before); err != nil {
		log.Fatal(err)
	}
	// Output:
	// example-drain terminated
	// new connections refused
}

func ExampleUnblock() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A transaction that took a lock and was forgotten, and a session
	// queued behind it.
	holder := session(ctx, "example-unblock-holder", "CREATE TABLE example_unblock ()")
	if _, err := holder.Exec(ctx, "BEGIN; LOCK TABLE example_unblock"); err != nil {
		log.Fatal(err)
	}
	defer holder.Close(ctx)
	waiter := session(ctx, "example-unblock-waiter", "")
	defer waiter.Close(ctx)
	waited := make(chan error)
	go func() {
		_, err := waiter.Exec(ctx, "SELECT * FROM example_unblock")
		waited <- err
	}()

	conn, err := pgreap.Connect(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(ctx)
	for { // until the waiter waits
		s, err := pgreap.Sessions(ctx, conn, &pgreap.Selection{App: []string{"example-unblock-waiter"}})
		if err != nil {
			log.Fatal(err)
		}
		if len(s) == 1 && s[0].Waits() {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	unblocked, err := pgreap.Unblock(ctx, conn, pgreap.UnblockOptions{Select: &pgreap.Selection{App: []string{"example-unblock-*"}}})
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range unblocked.Results {
		fmt.Println(r.ApplicationName, r.Action, r.Outcome)
	}
	fmt.Println("the waiter got its lock:", <-waited == nil)
	// Output:
	// example-unblock-holder terminate terminated
	// the waiter got its lock: true
}
