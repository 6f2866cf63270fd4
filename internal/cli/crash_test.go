package cli_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// The server crashes while terminate waits out its grace (the cancel was
// sent, the terminate not yet): pgreap ends with one line, exit 3, and the
// session reported survived, not verified; never terminated, never done
// twice.
func TestTerminateWhenTheServerCrashes(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t)
	c := pgtest.Own(t, pgtest.Options{})
	stubborn, err := pgx.Connect(ctx, c.DSN("postgres", pgtest.Superuser)+" application_name=stubborn")
	if err != nil {
		t.Fatal(err)
	}
	running := make(chan struct{})
	qctx, stop := context.WithCancel(ctx)
	go func() {
		defer close(running)
		// Swallows cancels, and says so in the server log.
		_, _ = stubborn.Exec(qctx, `DO $$ BEGIN LOOP BEGIN PERFORM pg_catalog.pg_sleep(60);
			EXCEPTION WHEN query_canceled THEN RAISE LOG 'stubborn: cancel swallowed'; END; END LOOP; END $$`)
	}()
	defer func() {
		// The crash ends the query (else stop does); a connection is used
		// by one goroutine at a time.
		stop()
		<-running
		stubborn.Close(context.Background())
	}()
	pgtest.Eventually(t, "the stubborn query", func() (bool, error) {
		var n int
		admin, err := pgx.Connect(ctx, c.DSN("postgres", pgtest.Superuser))
		if err != nil {
			return false, err
		}
		defer admin.Close(context.Background())
		err = admin.QueryRow(ctx, "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE application_name = 'stubborn' AND state = 'active'").Scan(&n)
		return n == 1, err
	})

	p := startPgreap(t, nil, "terminate", "--app", "stubborn", "--grace", "30s", "--yes", "-o", "json", "-d", c.DSN("postgres", pgtest.Superuser))
	pgtest.Eventually(t, "the cancel of the grace", func() (bool, error) {
		b, err := os.ReadFile(c.LogFile())
		return strings.Contains(string(b), "stubborn: cancel swallowed"), err
	})
	if err := c.Crash(ctx); err != nil {
		t.Fatal(err)
	}
	p.wait(t)
	if p.code() != 3 {
		t.Fatalf("exit %d, want 3\nstdout %s\nstderr %s", p.code(), p.out.String(), p.errOut.String())
	}
	rows := jsonRows(t, p.out.String())
	if len(rows) != 1 || rows[0]["outcome"] != "survived" || !strings.Contains(rows[0]["detail"].(string), "not verified") {
		t.Fatalf("stdout %s", p.out.String())
	}
	if errOut := p.errOut.String(); strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "not all verified") {
		t.Fatalf("stderr %q", errOut)
	}
	t.Logf("detail %q; stderr %s", rows[0]["detail"], p.errOut.String())
}
