package pgreap_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/pgreap/pgreap"
	"github.com/pgreap/pgreap/internal/cli"
	"github.com/pgreap/pgreap/internal/cluster"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// SessionsBehind judges a pooler's server connection by the client it
// serves: B, with no application_name, holds the server connection A used
// before, whose own application_name still says A (Sessions alone would
// call it A's).
func TestSessionsBehindAPooler(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t)
	b, db, connect := pgtest.OneServerConnection(t)
	appA := "A-" + pgtest.Tag(t)
	a := connect(appA)
	if _, err := a.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	bc := connect("")
	if _, err := bc.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	conn := pgtest.Pgreap(t, pgtest.Superuser)
	admin := []string{b.AdminDSN(b.StatsUser)}

	byA, err := pgreap.SessionsBehind(ctx, conn, &pgreap.Selection{DB: []string{db}, App: []string{appA}}, admin)
	if err != nil {
		t.Fatal(err)
	}
	if len(byA) != 0 {
		t.Fatalf("sessions of %s: %+v, want none (B holds the server connection)", appA, byA)
	}
	all, err := pgreap.SessionsBehind(ctx, conn, &pgreap.Selection{DB: []string{db}}, admin)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 || all[0].Pooler == nil || !all[0].Pooler.Served || all[0].Pooler.ApplicationName != "" ||
		all[0].Pooler.User != cluster.Superuser || all[0].ApplicationName != appA {
		t.Fatalf("sessions: %+v", all)
	}
	if _, err := pgreap.SessionsBehind(ctx, conn, nil, []string{"host=127.0.0.1 port=1 user=x"}); err == nil ||
		!strings.Contains(err.Error(), "pgbouncer 127.0.0.1:1") {
		t.Fatalf("a pooler that does not answer: %v", err)
	}
}

// Terminate with the poolers judges a server connection by the client it
// serves, at the choice and again at the signal: B holds the backend whose
// own application_name is still A's, and a terminate of A's sessions
// leaves B alone (without the poolers, B's connection is the one ended).
func TestTerminateBehindAPooler(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t)
	b, db, connect := pgtest.OneServerConnection(t)
	appA := "A-" + pgtest.Tag(t)
	a := connect(appA)
	if _, err := a.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	bc := connect("")
	if _, err := bc.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	conn := pgtest.Pgreap(t, pgtest.Superuser)
	res, err := pgreap.Terminate(ctx, conn, pgreap.Target{Select: &pgreap.Selection{DB: []string{db}, App: []string{appA}}},
		pgreap.Options{PgBouncer: []string{b.AdminDSN(cluster.AdminUser)}})
	if err != nil {
		t.Logf("terminate: %v", err)
	}
	for _, r := range res {
		if r.Outcome == pgreap.Terminated {
			t.Errorf("terminated %d (%s): B's server connection, chosen by A's name", r.PID, r.ApplicationName)
		}
	}
	if _, err := bc.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("B's transaction after the terminate of A's sessions: %v", err)
	}
}

// Apply judges a plan made behind a pooler again with the poolers
// (Options.PgBouncer), and refuses one whose selection is by client
// without them (ErrNeedsPoolers), nothing done.
func TestApplyBehindAPooler(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t)
	b, db, connect := pgtest.OneServerConnection(t)
	appA := "A-" + pgtest.Tag(t)
	a := connect(appA)
	pid := pgtest.BackendPID(t, a)
	if _, err := a.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	admin := b.AdminDSN(cluster.AdminUser)
	streams, out, errOut := cli.Test()
	if code := cli.Run(ctx, []string{"terminate", "--db", db, "--app", appA, "--pgbouncer", admin, "--dry-run", "-o", "json"}, streams); code != 0 {
		t.Fatalf("the plan: exit %d: %s", code, errOut)
	}
	plan := out.String()
	conn := pgtest.Pgreap(t, pgtest.Superuser)
	if _, err := pgreap.Apply(ctx, conn, strings.NewReader(plan), pgreap.Options{}); !errors.Is(err, pgreap.ErrNeedsPoolers) {
		t.Fatalf("Apply without the poolers: %v, want ErrNeedsPoolers", err)
	}
	res, err := pgreap.Apply(ctx, conn, strings.NewReader(plan), pgreap.Options{PgBouncer: []string{admin}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].PID != pid || res[0].Outcome != pgreap.Terminated || res[0].Pooler == nil || res[0].Pooler.ApplicationName != appA {
		t.Fatalf("Apply: %+v", res)
	}
}
