package watch_test

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/watch"
)

// sleepers are n victims named app, each running a long pg_sleep.
func sleepers(t *testing.T, app string, n int) map[int32]*pgtest.Victim {
	t.Helper()
	vs := map[int32]*pgtest.Victim{}
	for range n {
		v := pgtest.NewVictim(t, pgtest.VictimOptions{App: app})
		v.Start("SELECT pg_catalog.pg_sleep(600)")
		v.WaitState("active", "")
		vs[v.PID] = v
	}
	return vs
}

// byOutcome counts, per pid, the audit lines with outcome.
func byOutcome(got []watch.Entry, outcome string) map[int32]int {
	out := map[int32]int{}
	for _, e := range got {
		if e.Outcome == outcome {
			out[e.PID]++
		}
	}
	return out
}

// errorLines counts the daemon's ERROR log lines that contain s.
func errorLines(d *daemon, s string) int {
	n := 0
	for _, l := range strings.Split(d.logs.String(), "\n") {
		if strings.Contains(l, `"level":"ERROR"`) && strings.Contains(l, s) {
			n++
		}
	}
	return n
}

// cancelledBy checks from the clients' side that the daemon cancelled
// pids, then steps the fake clock (no later than by) until each is
// audited cancelled.
func cancelledBy(t *testing.T, d *daemon, clk *watch.FakeClock, vs map[int32]*pgtest.Victim, pids []int32, before int, by time.Time) {
	t.Helper()
	for _, pid := range pids {
		v := vs[pid]
		if code := pgtest.SQLState(v.Wait()); code != "57014" {
			t.Fatalf("victim %d: SQLSTATE %q, want 57014 (cancelled)", pid, code)
		}
		v.WaitState("idle", "")
		delete(vs, pid)
	}
	for len(byOutcome(d.entries(t), "cancelled")) < before+len(pids) {
		// Only the verification's polls: never as far as the window's end.
		if next := clk.Waiting(t); next.After(by) {
			t.Fatalf("the daemon waits for %s, and has not audited the cancels", next)
		}
		clk.Step(t)
		clk.Waiting(t) // it has looked
	}
	got := d.entries(t)
	if n := len(byOutcome(got, "cancelled")); n != before+len(pids) {
		t.Fatalf("%d audited cancelled, want %d: %+v", n, before+len(pids), got)
	}
	if n := len(byOutcome(got, "survived")); n != 0 {
		t.Fatalf("%d survived: %+v", n, got)
	}
}

// A rule that matches ten sessions with max_actions {count: 3, per: 10m}
// cancels three; the seven others are audited suppressed once each,
// counted, and said in one ERROR line; nothing is signalled, /healthz
// stays ok. Once the window has room (the fake clock), the rule acts again
// on those still matching, three more.
func TestBudgetSuppresses(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	vs := sleepers(t, tag, 10)
	// Past the threshold before the first snapshot: all ten are due at
	// one instant, and the budget alone decides.
	for _, v := range vs {
		olderThan(t, v, time.Second)
	}
	d, clk := startFake(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1h
audit_log: AUDIT
metrics_addr: 127.0.0.1:0
rules:
  - name: slow
    match: {app: [TAG], state: [active], query: "pg_sleep", longer_than: 1s}
    action: cancel
    max_actions: {count: 3, per: 10m}
`)
	at := clk.Step(t)
	clk.Waiting(t) // the rule has fired
	got := d.entries(t)
	suppressed := byOutcome(got, "suppressed")
	if len(got) != 7 || len(suppressed) != 7 {
		t.Fatalf("audit %+v, want 7 suppressed lines", got)
	}
	for _, e := range got {
		if e.Rule != "slow" || e.Action != "cancel" || e.DryRun || !e.Time.Equal(at) || vs[e.PID] == nil ||
			e.Detail != "the rule's max_actions (at most 3 per 10m0s) is spent: not signalled" {
			t.Errorf("suppressed line %+v", e)
		}
	}
	var acted []int32
	for pid := range vs {
		if suppressed[pid] == 0 {
			acted = append(acted, pid)
		}
	}
	cancelledBy(t, d, clk, vs, acted, 0, at.Add(watch.VerifyFor))
	for pid, v := range vs {
		if suppressed[pid] != 1 {
			t.Errorf("victim %d: suppressed %d times, want once", pid, suppressed[pid])
		}
		stillRunning(t, v, "suppressed")
	}
	if n := testutil.ToFloat64(d.Metrics().Suppressed.WithLabelValues(tag, "slow")); n != 7 {
		t.Errorf("pgreap_rule_suppressed_total = %v, want 7", n)
	}
	if n := errorLines(d, "max_actions"); n != 1 {
		t.Errorf("%d ERROR lines about the budget, want 1:\n%s", n, d.logs.String())
	}
	if body := get(t, "http://"+d.Addr()+"/healthz"); !strings.Contains(body, `"status":"ok"`) {
		t.Errorf("/healthz %q", body)
	}
	if body := get(t, "http://"+d.Addr()+"/metrics"); !strings.Contains(body, `pgreap_rule_suppressed_total{rule="slow",target="`+tag+`"} 7`) {
		t.Errorf("/metrics lacks the suppressed count")
	}

	// The window has room again 10m after the three actions: the rule acts
	// on three more of the seven still running, suppresses the four
	// others (a new window: audited again, one more ERROR line).
	if next := clk.Waiting(t); !next.Equal(at.Add(10 * time.Minute)) {
		t.Fatalf("waits for %s, want the window's end %s", next, at.Add(10*time.Minute))
	}
	again := clk.Step(t)
	clk.Waiting(t)
	var still []int32
	for _, e := range d.entries(t) {
		if e.Outcome == "suppressed" && e.Time.Equal(again) {
			still = append(still, e.PID)
		}
	}
	if len(still) != 4 {
		t.Fatalf("%d suppressed after the window, want 4", len(still))
	}
	acted = acted[:0]
	for pid := range vs {
		if !slices.Contains(still, pid) {
			acted = append(acted, pid)
		}
	}
	cancelledBy(t, d, clk, vs, acted, 3, again.Add(watch.VerifyFor))
	for _, v := range vs {
		stillRunning(t, v, "suppressed again")
	}
	if n := testutil.ToFloat64(d.Metrics().Suppressed.WithLabelValues(tag, "slow")); n != 11 {
		t.Errorf("pgreap_rule_suppressed_total = %v, want 11", n)
	}
	if n := errorLines(d, "max_actions"); n != 2 {
		t.Errorf("%d ERROR lines about the budget, want 2 (one per window)", n)
	}
}

// The policy's max_actions caps all the rules together on the target:
// two rules matching three sessions each, a budget of four.
func TestBudgetGlobal(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	vs := sleepers(t, tag+"-a", 3)
	for pid, v := range sleepers(t, tag+"-b", 3) {
		vs[pid] = v
	}
	d := startDaemon(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
max_actions: {count: 4, per: 1h}
rules:
  - name: a
    match: {app: [TAG-a], state: [active], query: "pg_sleep"}
    action: cancel
  - name: b
    match: {app: [TAG-b], state: [active], query: "pg_sleep"}
    action: cancel
`)
	d.waitEntries(t, 6)
	waitSnapshots(t, d, 3)
	got := d.entries(t)
	cancelled, suppressed := byOutcome(got, "cancelled"), byOutcome(got, "suppressed")
	if len(got) != 6 || len(cancelled) != 4 || len(suppressed) != 2 {
		t.Fatalf("audit %+v, want 4 cancelled, 2 suppressed", got)
	}
	for pid := range cancelled {
		if code := pgtest.SQLState(vs[pid].Wait()); code != "57014" {
			t.Errorf("victim %d: SQLSTATE %q, want 57014", pid, code)
		}
	}
	for pid := range suppressed {
		stillRunning(t, vs[pid], "suppressed")
	}
	for _, e := range got {
		if e.Outcome == "suppressed" && !strings.HasPrefix(e.Detail, "the policy's (all rules on this target) max_actions (at most 4 per 1h0m0s)") {
			t.Errorf("detail %q", e.Detail)
		}
	}
	m := d.Metrics().Suppressed
	if n := testutil.ToFloat64(m.WithLabelValues(tag, "a")) + testutil.ToFloat64(m.WithLabelValues(tag, "b")); n != 2 {
		t.Errorf("pgreap_rule_suppressed_total = %v, want 2", n)
	}
}

// A dry-run rule is never capped, and its planned lines count against no
// budget: the policy's budget of one is left for a real rule.
func TestBudgetDryRunNotCounted(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	sleepers(t, tag+"-d", 3)
	d := startDaemon(t, dsn(t), `
targets: [{name: TAG, dsn: "DSN"}]
interval: 200ms
audit_log: AUDIT
metrics_addr: "off"
max_actions: {count: 1, per: 1h}
rules:
  - name: look
    match: {app: [TAG-d], state: [active], query: "pg_sleep"}
    action: cancel
    dry_run: true
    max_actions: {count: 1, per: 1h}
  - name: real
    match: {app: [TAG-r], state: [active], query: "pg_sleep"}
    action: cancel
`)
	d.waitEntries(t, 3)
	waitSnapshots(t, d, 2)
	got := d.entries(t)
	if len(got) != 3 || len(byOutcome(got, "planned")) != 3 {
		t.Fatalf("audit %+v, want 3 planned", got)
	}
	first := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-r"})
	first.Start("SELECT pg_catalog.pg_sleep(600)")
	if code := pgtest.SQLState(first.Wait()); code != "57014" {
		t.Fatalf("SQLSTATE %q, want 57014: the dry run spent the budget", code)
	}
	// The budget is live: the next one is suppressed.
	second := sleepers(t, tag+"-r", 1)
	got = d.waitEntries(t, 5)
	for _, v := range second {
		if s := byOutcome(got, "suppressed"); len(got) != 5 || s[v.PID] != 1 {
			t.Fatalf("audit %+v, want the second real session suppressed", got)
		}
		stillRunning(t, v, "suppressed")
	}
	if n := testutil.ToFloat64(d.Metrics().Suppressed.WithLabelValues(tag, "look")); n != 0 {
		t.Errorf("dry run suppressed %v times", n)
	}
}

// A reload keeps what a budget counted when its rule keeps its name and
// its budget; a changed budget starts empty.
func TestBudgetKeptOnReload(t *testing.T) {
	t.Parallel()
	vs := sleepers(t, pgtest.Tag(t), 2)
	const pol = `
targets: [{name: TAG, dsn: "DSN"}]
interval: INTERVAL
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], state: [active], query: "pg_sleep"}
    action: cancel
    max_actions: {count: COUNT, per: 1h}
`
	text := func(interval, count string) string {
		return strings.NewReplacer("INTERVAL", interval, "COUNT", count).Replace(pol)
	}
	d := startDaemon(t, dsn(t), text("200ms", "1"))
	reload := func(text string) {
		t.Helper()
		if err := os.WriteFile(d.path, []byte(policyText(t, dsn(t), d.audit, text)), 0o600); err != nil {
			t.Fatal(err)
		}
		before := strings.Count(d.logs.String(), `"policy reloaded"`)
		d.Reload(pgtest.Context(t))
		// One line from the daemon, one from the target's loop.
		pgtest.Eventually(t, "the reload", func() (bool, error) { return strings.Count(d.logs.String(), `"policy reloaded"`) >= before+2, nil })
	}
	got := d.waitEntries(t, 2)
	var held int32
	for _, e := range got {
		if e.Outcome == "suppressed" {
			held = e.PID
		}
	}
	if len(byOutcome(got, "cancelled")) != 1 || held == 0 {
		t.Fatalf("audit %+v, want one cancelled, one suppressed", got)
	}
	reload(text("300ms", "1"))
	waitSnapshots(t, d, 3)
	stillRunning(t, vs[held], "after a reload that kept the budget")
	if got := d.entries(t); len(got) != 2 {
		t.Fatalf("audit %+v after a reload that kept the budget", got)
	}
	reload(text("300ms", "2"))
	if code := pgtest.SQLState(vs[held].Wait()); code != "57014" {
		t.Fatalf("SQLSTATE %q, want 57014 once the budget changed", code)
	}
}
