package watch_test

import (
	"os"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/watch"
)

// byRule is the audit lines of one rule.
func byRule(got []watch.Entry, rule string) []watch.Entry {
	var out []watch.Entry
	for _, e := range got {
		if e.Rule == rule {
			out = append(out, e)
		}
	}
	return out
}

// waitSnapshots waits until the daemon has taken n more snapshots.
func waitSnapshots(t *testing.T, d *daemon, n uint64) {
	t.Helper()
	from := snapshots(t, d)
	pgtest.Eventually(t, "more snapshots", func() (bool, error) { return snapshots(t, d) >= from+n, nil })
}

// A dry-run rule that matches first takes the session from no one: it
// audits planned once, and the later real rule terminates the session.
func TestDryRunDoesNotStealSession(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Exec("BEGIN")
	v.Exec("SELECT 1")
	d := startDaemon(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: warn
    match: {app: [TAG], state: [idle in transaction], longer_than: 1s}
    action: terminate
    dry_run: true
  - name: reap
    match: {app: [TAG], state: [idle in transaction], longer_than: 3s}
    action: terminate
`)
	pgtest.Eventually(t, "the session terminated by reap", func() (bool, error) { return !v.Alive(), nil })
	got := d.waitEntries(t, 2)
	warn, reap := byRule(got, "warn"), byRule(got, "reap")
	if len(warn) != 1 || warn[0].PID != v.PID || warn[0].Outcome != "planned" || !warn[0].DryRun {
		t.Errorf("warn: %+v", warn)
	}
	if len(reap) != 1 || reap[0].PID != v.PID || reap[0].Outcome != "terminated" || reap[0].DryRun {
		t.Errorf("reap: %+v", reap)
	}
	m := d.Metrics()
	if n := testutil.ToFloat64(m.Actions.WithLabelValues(tag, "warn", "terminate", "planned")); n != 1 {
		t.Errorf("warn planned %v times, want once", n)
	}
	if n := testutil.ToFloat64(m.Actions.WithLabelValues(tag, "reap", "terminate", "terminated")); n != 1 {
		t.Errorf("reap terminated %v, want 1", n)
	}
}

// A reload that turns a rule's dry_run off makes it act on the sessions it
// had only audited.
func TestReloadDryRunOffActs(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Exec("BEGIN")
	v.Exec("SELECT 1")
	const pol = `
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: stuck
    match: {app: [TAG], state: [idle in transaction], longer_than: 300ms}
    action: terminate
    dry_run: DRY
`
	d := startDaemon(t, dsn(t), strings.ReplaceAll(pol, "DRY", "true"))
	d.waitEntries(t, 1)
	waitSnapshots(t, d, 2)
	if got := d.entries(t); len(got) != 1 || got[0].Outcome != "planned" || !v.Alive() {
		t.Fatalf("dry run: audit %+v, alive %v; want one planned line", got, v.Alive())
	}
	if err := os.WriteFile(d.path, []byte(policyText(t, dsn(t), d.audit, strings.ReplaceAll(pol, "DRY", "false"))), 0o600); err != nil {
		t.Fatal(err)
	}
	d.Reload(pgtest.Context(t))
	pgtest.Eventually(t, "the session terminated", func() (bool, error) { return !v.Alive(), nil })
	got := d.waitEntries(t, 2)
	if e := got[1]; len(got) != 2 || e.Rule != "stuck" || e.PID != v.PID || e.Outcome != "terminated" || e.DryRun {
		t.Fatalf("audit %+v", got)
	}
}

// A session whose query a rule cancelled is acted on later by another
// rule: here, left idle in its aborted transaction, it is terminated.
func TestCancelledThenIdleInTransaction(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Exec("BEGIN")
	d := startDaemon(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], longer_than: 300ms}
    action: cancel
  - name: stuck
    match: {app: [TAG], state: ["idle in transaction*"], longer_than: 500ms}
    action: terminate
`)
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	if code := pgtest.SQLState(v.Wait()); code != "57014" {
		t.Fatalf("SQLSTATE %q, want 57014 (cancelled)", code)
	}
	pgtest.Eventually(t, "the session terminated", func() (bool, error) { return !v.Alive(), nil })
	got := d.waitEntries(t, 2)
	if len(got) != 2 || got[0].Rule != "slow" || got[0].Outcome != "cancelled" || got[1].Rule != "stuck" || got[1].Outcome != "terminated" {
		t.Fatalf("audit %+v", got)
	}
}

// A cancel rule chooses only sessions that run a query: an idle session it
// would otherwise match is neither audited nor counted.
func TestCancelRuleSkipsIdle(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	idle := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-idle"})
	inTx := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-tx"})
	inTx.Exec("BEGIN")
	inTx.Exec("SELECT 1")
	busy := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-busy"})
	busy.Start("SELECT pg_catalog.pg_sleep(60)")
	busy.WaitState("active", "")
	d := startDaemon(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: any
    match: {app: ["TAG-*"]}
    action: cancel
`)
	if code := pgtest.SQLState(busy.Wait()); code != "57014" {
		t.Fatalf("SQLSTATE %q, want 57014 (cancelled)", code)
	}
	d.waitEntries(t, 1)
	waitSnapshots(t, d, 2)
	got := d.entries(t)
	if len(got) != 1 || got[0].PID != busy.PID || got[0].Outcome != "cancelled" {
		t.Errorf("audit %+v, want one line: the busy session cancelled", got)
	}
	if n := testutil.CollectAndCount(d.Metrics().Actions); n != 1 {
		t.Errorf("%d series of pgreap_actions_total, want 1 (cancelled)", n)
	}
	if n := testutil.ToFloat64(d.Metrics().Actions.WithLabelValues(tag, "any", "cancel", "cancelled")); n != 1 {
		t.Errorf("cancelled %v", n)
	}
	if !idle.Alive() || !inTx.Alive() {
		t.Error("an idle session ended")
	}
}

// A session whose signal is being verified belongs to the rule that sent
// it: a later rule does not cut a cancel-then-terminate's grace short.
func TestGraceIsTheRulesAlone(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Start(`DO $$ BEGIN LOOP BEGIN PERFORM pg_catalog.pg_sleep(60); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$`)
	v.WaitState("active", "")
	d := startDaemon(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: patient
    match: {app: [TAG], state: [active]}
    action: cancel-then-terminate
    grace: 2s
  - name: hasty
    match: {app: [TAG], state: [active], longer_than: 300ms}
    action: terminate
`)
	if code := pgtest.SQLState(v.Wait()); code != "57P01" {
		t.Fatalf("SQLSTATE %q, want 57P01 (terminated)", code)
	}
	got := d.waitEntries(t, 1)
	if e := got[0]; len(got) != 1 || e.Rule != "patient" || e.Action != "terminate" || e.Outcome != "terminated" {
		t.Fatalf("audit %+v, want one line: patient terminated it after the grace", got)
	}
}

// Two targets on one server (or two replicas) whose rule matches the
// daemon's own connections: neither ends the other's, they are protected;
// another role that names its session as the daemon's is not.
func TestWatchNeverEndsAWatchSession(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	impostor := pgtest.NewVictim(t, pgtest.VictimOptions{User: pgtest.NewRole(t, "NOSUPERUSER"), App: tag + "-w"})
	d := startDaemon(t, dsn(t)+" application_name="+tag+"-w", `
targets: [{name: TAG-a, dsn: "DSN"}, {name: TAG-b, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: reap
    match: {app: [TAG-w], state: [idle]}
    action: terminate
`)
	pgtest.Eventually(t, "the impostor terminated", func() (bool, error) { return !impostor.Alive(), nil })
	// Each target sees the other's connection: protected, once each (both
	// may audit the impostor: each signalled it before it was gone).
	var got []watch.Entry
	pgtest.Eventually(t, "both watch sessions judged", func() (bool, error) {
		got = d.entries(t)
		n := 0
		for _, e := range got {
			if e.PID != impostor.PID {
				n++
			}
		}
		return n >= 2, nil
	})
	protected := 0
	for _, e := range got {
		switch {
		case e.PID == impostor.PID:
			if e.Outcome != "terminated" {
				t.Errorf("the impostor: %+v", e)
			}
		case e.Outcome == "protected" && strings.Contains(e.Detail, "a pgreap watch session"):
			protected++
		default:
			t.Errorf("a watch session was acted on: %+v", e)
		}
	}
	if protected < 2 {
		t.Fatalf("audit %+v", got)
	}
	if logs := d.logs.String(); strings.Contains(logs, "cannot connect") || strings.Contains(logs, "lost") {
		t.Fatalf("a target lost its connection:\n%s", logs)
	}
}
