package cli_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/pgreap/pgreap/internal/cli"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// runAsk runs pgreap in-process with a terminal on standard input that
// answers answer.
func runAsk(t *testing.T, answer string, args ...string) result {
	t.Helper()
	streams, out, errOut := cli.Test()
	streams.In = strings.NewReader(answer)
	streams.InTTY = true
	code := cli.Run(pgtest.Context(t), args, streams)
	return result{code, out.String(), errOut.String()}
}

func jsonRows(t *testing.T, out string) []map[string]any {
	t.Helper()
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("not a JSON array: %v\n%s", err, out)
	}
	return rows
}

func TestTerminateBySelectorAsksOnATerminal(t *testing.T) {
	t.Parallel()
	a := pgtest.NewVictim(t, pgtest.VictimOptions{})
	b := pgtest.NewVictim(t, pgtest.VictimOptions{})

	r := runAsk(t, "n\n", "terminate", "--app", pgtest.Tag(t))
	r.wantCode(t, 2)
	if !strings.Contains(r.errOut, "terminate 2 sessions? [y/N]") || !strings.Contains(r.errOut, "planned") ||
		!strings.Contains(r.errOut, "pgreap: not confirmed: nothing done") {
		t.Fatalf("stderr:\n%s", r.errOut)
	}
	if !a.Alive() || !b.Alive() {
		t.Fatal("a session ended without a yes")
	}

	r = runAsk(t, "y\n", "terminate", "--app", pgtest.Tag(t), "-o", "json")
	r.wantCode(t, 0)
	rows := jsonRows(t, r.out)
	if len(rows) != 2 {
		t.Fatalf("%d rows: %s", len(rows), r.out)
	}
	for _, row := range rows {
		if row["action"] != "terminate" || row["outcome"] != "terminated" {
			t.Fatalf("row %v", row)
		}
	}
	if a.Alive() || b.Alive() {
		t.Fatal("reported terminated, still there")
	}
}

func TestTerminateBySelectorWithoutATerminalNeedsYes(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	r := run(t, false, "terminate", "--app", pgtest.Tag(t))
	r.wantCode(t, 2)
	want := "pgreap: refusing to terminate 1 session chosen by selectors without a terminal to confirm on: add --yes, or see them with --dry-run\n"
	if r.errOut != want || r.out != "" {
		t.Fatalf("stdout %q, stderr %q", r.out, r.errOut)
	}
	if !v.Alive() {
		t.Fatal("ended without --yes")
	}
	// By pid alone: no question.
	r = run(t, false, "terminate", strconv.Itoa(int(v.PID)))
	r.wantCode(t, 0)
	if v.Alive() {
		t.Fatal("still there")
	}
}

func TestLimit(t *testing.T) {
	t.Parallel()
	a := pgtest.NewVictim(t, pgtest.VictimOptions{})
	b := pgtest.NewVictim(t, pgtest.VictimOptions{})
	r := run(t, false, "terminate", "--app", pgtest.Tag(t), "--limit", "1", "--yes")
	r.wantCode(t, 2)
	if r.errOut != "pgreap: 2 sessions chosen, more than --limit 1: nothing done\n" {
		t.Fatalf("stderr %q", r.errOut)
	}
	if !a.Alive() || !b.Alive() {
		t.Fatal("a session ended over the limit")
	}
	r = run(t, false, "terminate", "--app", pgtest.Tag(t), "--limit", "2", "--yes")
	r.wantCode(t, 0)
}

func TestCancelKeepsTheConnection(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	v.WaitState("active", "")
	r := run(t, false, "cancel", "--app", pgtest.Tag(t), "--yes")
	r.wantCode(t, 0)
	if !strings.Contains(r.out, "cancelled") {
		t.Fatalf("stdout:\n%s", r.out)
	}
	_ = v.Wait()
	v.Exec("SELECT 1")
	// Idle now: nothing to cancel.
	r = run(t, false, "cancel", "--app", pgtest.Tag(t), "--yes")
	r.wantCode(t, 1)
}

func TestMixedPrivilegeIsIncomplete(t *testing.T) {
	t.Parallel()
	role := pgtest.NewRole(t, "NOSUPERUSER", "pg_read_all_stats")
	mine := pgtest.NewVictim(t, pgtest.VictimOptions{User: role})
	super := pgtest.NewVictim(t, pgtest.VictimOptions{})
	r := run(t, false, "-U", role, "terminate", strconv.Itoa(int(mine.PID)), strconv.Itoa(int(super.PID)), "-o", "json")
	r.wantCode(t, 3)
	rows := jsonRows(t, r.out)
	got := map[float64]string{}
	for _, row := range rows {
		got[row["pid"].(float64)] = row["outcome"].(string)
	}
	if got[float64(mine.PID)] != "terminated" || got[float64(super.PID)] != "denied" {
		t.Fatalf("outcomes %v", got)
	}
	if !strings.Contains(r.errOut, "1 of 2 sessions did not reach terminated: 1 denied") {
		t.Fatalf("stderr %q", r.errOut)
	}
	if !super.Alive() {
		t.Fatal("the superuser's session ended")
	}
}

func TestDryRunPlanThenApply(t *testing.T) {
	t.Parallel()
	stays := pgtest.NewVictim(t, pgtest.VictimOptions{})
	moves := pgtest.NewVictim(t, pgtest.VictimOptions{})
	moves.Start("SELECT pg_catalog.pg_sleep(60)")
	moves.WaitState("active", "")
	stays.Start("SELECT pg_catalog.pg_sleep(60)")
	stays.WaitState("active", "")

	r := run(t, false, "cancel", "--app", pgtest.Tag(t), "--dry-run", "-o", "json")
	r.wantCode(t, 0)
	rows := jsonRows(t, r.out)
	if len(rows) != 2 {
		t.Fatalf("plan: %s", r.out)
	}
	for _, row := range rows {
		plan, _ := row["plan"].(map[string]any)
		if row["outcome"] != "planned" || row["action"] != "cancel" || plan["version"] != float64(3) || plan["postmaster_start_time"] == nil {
			t.Fatalf("plan row %v", row)
		}
	}
	file := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(file, []byte(r.out), 0o600); err != nil {
		t.Fatal(err)
	}
	if !stays.Alive() || !moves.Alive() {
		t.Fatal("a dry run ended a session")
	}
	// One session moves on to a new query after the plan.
	pgtest.Exec(t, "SELECT pg_catalog.pg_cancel_backend($1)", moves.PID)
	_ = moves.Wait()
	moves.Start("SELECT pg_catalog.pg_sleep(60) /* new */")
	moves.WaitState("active", "")

	r = run(t, false, "apply", file, "-o", "json")
	r.wantCode(t, 3)
	got := map[float64]string{}
	for _, row := range jsonRows(t, r.out) {
		got[row["pid"].(float64)] = row["outcome"].(string)
	}
	if got[float64(stays.PID)] != "cancelled" || got[float64(moves.PID)] != "changed" {
		t.Fatalf("outcomes %v\n%s", got, r.out)
	}
	moves.WaitState("active", "") // the new query runs on
}

func TestApplyRefusesBadPlans(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	r := run(t, false, "terminate", strconv.Itoa(int(v.PID)), "--dry-run", "-o", "json")
	r.wantCode(t, 0)
	good := r.out
	dir := t.TempDir()
	tests := []struct {
		name, plan, err string
	}{
		{"not json", "{", `not a plan (a JSON array of sessions from --dry-run -o json)`},
		{"empty", "[]", "the plan has no sessions"},
		{"unknown field", strings.Replace(good, `"pid":`, `"pdi":1,"pid":`, 1), `session 1: unknown field "pdi"`},
		{"missing field", strings.Replace(good, `"guard":["pid","backend_start"],`, ``, 1), `session 1: missing field "guard"`},
		{"wrong type", strings.Replace(good, `"pid":`+strconv.Itoa(int(v.PID)), `"pid":"x"`, 1), `session 1: field "pid": string is the wrong type`},
		{"zero backend_start", regexp.MustCompile(`"backend_start":"[^"]+"`).ReplaceAllString(good, `"backend_start":"0001-01-01T00:00:00Z"`), `"backend_start" is missing or not a real start time`},
		{"twice", strings.Replace(good, "\n]", ",\n"+strings.Trim(good, "[]\n")+"\n]", 1), "planned twice"},
		{"bad outcome", strings.Replace(good, `"outcome":"planned"`, `"outcome":"done"`, 1), `"outcome" must be one of the outcomes`},
		{"bad action", strings.Replace(good, `"action":"terminate"`, `"action":"drop"`, 1), `"action" must be cancel or terminate`},
		{"restarted since", strings.Replace(good, `"postmaster_start_time":"20`, `"postmaster_start_time":"19`, 1), "the plan was made on another server of this cluster (a primary or standby of it) or before a restart (postmaster started 19"},
		{"another system_identifier", regexp.MustCompile(`"system_identifier":"[0-9]+"`).ReplaceAllString(good, `"system_identifier":"42"`), "the plan was made on another server (system_identifier 42, this server's "},
		{"no system_identifier", regexp.MustCompile(`"system_identifier":"[0-9]+"`).ReplaceAllString(good, `"system_identifier":null`), "system_identifier is null: the plan does not name its server"},
		{"not a system_identifier", regexp.MustCompile(`"system_identifier":"[0-9]+"`).ReplaceAllString(good, `"system_identifier":"-1"`), `system_identifier "-1" is not a system identifier`},
		{"a plan of version 2", regexp.MustCompile(`"version":3,(.*),"system_identifier":"[0-9]+"`).ReplaceAllString(good, `"version":2,$1`), "plan version 2: this pgreap reads version 3 (make the plan again"},
		{"a key twice", strings.Replace(good, `"pid":`, `"pid":1,"pid":`, 1), `the key "pid" appears twice in one object`},
		{"selection dropped by a second key", strings.Replace(good, `"selection":null`, `"selection":{"app":["x"]},"selection":null`, 1), `the key "selection" appears twice`},
		{"a server hidden by a second key", strings.Replace(good, `"system_identifier":`, `"system_identifier":"42","system_identifier":`, 1), `the key "system_identifier" appears twice`},
		{"a key twice in a selection", strings.Replace(good, `"selection":null`, `"selection":{"app":["x"],"app":["y"]}`, 1), `the key "app" appears twice`},
		{"a key twice in the last session", strings.Replace(good, "\n]", ",\n"+strings.Replace(strings.Trim(good, "[]\n"), `"pid":`, `"pid":2,"pid":`, 1)+"\n]", 1), `session 2: not a plan: the key "pid" appears twice`},
		{"a client_addr with a zone", strings.Replace(good, `"client_addr":null`, `"client_addr":"fe80::1%eth0"`, 1), `"client_addr" "fe80::1%eth0" is not an address`},
		{"a plan key in capitals", strings.Replace(good, `"host":`, `"HOST":`, 1), `"plan": unknown field "HOST"`},
		{"a plan key missing", strings.Replace(good, `,"selection":null`, ``, 1), `"plan": missing field "selection"`},
		{"a selection key in capitals", strings.Replace(good, `"selection":null`, `"selection":{"APP":["x"]}`, 1), `"selection": unknown field "APP"`},
		{"a selection on state, a guard without the query", strings.Replace(good, `"selection":null`, `"selection":{"state":["idle"]}`, 1), "its guard must pin its query"},
	}
	for _, tt := range tests {
		file := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_")+".json")
		if err := os.WriteFile(file, []byte(tt.plan), 0o600); err != nil {
			t.Fatal(err)
		}
		r := run(t, false, "apply", file)
		if r.code != 2 || !strings.Contains(r.errOut, tt.err) || strings.Count(r.errOut, "\n") != 1 || r.out != "" {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", tt.name, r.code, r.out, r.errOut, tt.err)
		}
	}
	if !v.Alive() {
		t.Fatal("a bad plan ended a session")
	}

	// A forged plan: the pid is right, the backend_start is not.
	forged := regexp.MustCompile(`"backend_start":"[^"]+"`).ReplaceAllString(good, `"backend_start":"2001-02-03T04:05:06.789Z"`)
	file := filepath.Join(dir, "forged.json")
	if err := os.WriteFile(file, []byte(forged), 0o600); err != nil {
		t.Fatal(err)
	}
	r = run(t, false, "apply", file, "-o", "csv")
	r.wantCode(t, 3)
	if !strings.Contains(r.out, ",terminate,changed,pid reused") {
		t.Fatalf("stdout:\n%s", r.out)
	}
	if !v.Alive() {
		t.Fatal("a forged plan ended a session")
	}

	r = run(t, false, "apply", filepath.Join(dir, "nonexistent.json"))
	r.wantCode(t, 2)
	if !strings.Contains(r.errOut, "nonexistent.json: no such file or directory") {
		t.Fatalf("stderr %q", r.errOut)
	}
}

func TestActBadInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		err  string
	}{
		{[]string{"terminate"}, "name sessions by pid or choose them with selectors"},
		{[]string{"cancel", "abc"}, `"abc": not a pid`},
		{[]string{"cancel", "-5"}, `unknown shorthand flag: '5'`},
		{[]string{"terminate", "--app", "x", "--wait", "soon"}, `invalid argument "soon" for "--wait"`},
		{[]string{"terminate", "--app", "x", "--limit", "-1"}, "--limit -1: must be 0"},
		{[]string{"terminate", "--app", "x", "--grace", "-1s"}, "must not be negative"},
		{[]string{"cancel", "--grace", "1s", "1"}, "unknown flag: --grace"},
		{[]string{"terminate", "--longer-than", "5x"}, `--longer-than "5x": not a duration`},
		{[]string{"apply"}, "apply takes one plan file"},
	}
	for _, tt := range tests {
		r := run(t, false, tt.args...)
		if r.code != 2 || !strings.Contains(r.errOut, tt.err) || strings.Count(r.errOut, "\n") != 1 || r.out != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", tt.args, r.code, r.out, r.errOut, tt.err)
		}
	}
}

// A plan records its selection, and apply's signalling statement checks it
// again: a session that no longer matches is changed and left alone. Here
// the plan chose the root of a lock wait (--blocking) and the wait is gone
// by the time of apply, while the root is the session the plan describes,
// in the same transaction and statement.
func TestApplyRechecksTheSelection(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder, waiter := pgtest.LockWait(t, db)
	r := run(t, false, "terminate", "--db", db, "--blocking", "--dry-run", "-o", "json")
	r.wantCode(t, 0)
	rows := jsonRows(t, r.out)
	if len(rows) != 1 || rows[0]["pid"] != float64(holder.PID) {
		t.Fatalf("plan:\n%s", r.out)
	}
	if sel, _ := rows[0]["plan"].(map[string]any)["selection"].(map[string]any); sel["blocking"] != true {
		t.Fatalf("the plan does not record the selection: %v", rows[0]["plan"])
	}
	file := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(file, []byte(r.out), 0o600); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, "SELECT pg_catalog.pg_cancel_backend($1)", waiter.PID)
	_ = waiter.Wait()
	r = run(t, false, "apply", file, "-o", "json")
	r.wantCode(t, 3)
	rows = jsonRows(t, r.out)
	if len(rows) != 1 || rows[0]["outcome"] != "changed" || rows[0]["detail"] != "no longer matches the selection" {
		t.Fatalf("outcomes:\n%s", r.out)
	}
	if !holder.Alive() {
		t.Fatal("apply ended a session that no longer matched the plan's selection")
	}
}
