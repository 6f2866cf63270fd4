package cli_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// writePlan writes a plan file in the test's temporary directory.
func writePlan(t *testing.T, name, plan string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(file, []byte(plan), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// retarget edits a plan's first session to name another one by pid and
// backend_start, and leaves the rest of the row as it was: what someone
// who can edit a plan file, and read pg_stat_activity, can do.
func retarget(plan string, v *pgtest.Victim) string {
	plan = regexp.MustCompile(`"pid":[0-9]+`).ReplaceAllString(plan, `"pid":`+strconv.Itoa(int(v.PID)))
	return regexp.MustCompile(`"backend_start":"[^"]+"`).ReplaceAllString(plan,
		`"backend_start":"`+v.BackendStart.UTC().Format(time.RFC3339Nano)+`"`)
}

// A plan edited to name a superuser's session in another database, with
// the rest of the row (its datname, usename, application_name) left as the
// plan saw the session it was made for: apply leaves it alone (changed),
// and prints the session as it is on the server, never the file's words.
func TestApplyEditedPlanLeavesAnotherSessionAlone(t *testing.T) {
	t.Parallel()
	tag := pgtest.Tag(t)
	db := pgtest.NewDB(t)
	role := pgtest.NewRole(t, "NOSUPERUSER")
	innocent := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, User: role, App: tag + "-innocent"})
	admin := pgtest.NewVictim(t, pgtest.VictimOptions{App: tag + "-admin"}) // the superuser, in postgres
	admin.Exec("SELECT 'admin at work'")

	for _, tt := range []struct {
		name string
		args []string
	}{
		// Named by pid: only the identity and the description guard it.
		{"by pid", []string{"terminate", strconv.Itoa(int(innocent.PID))}},
		// Chosen by selectors, which the plan records: edited all the same.
		{"by selectors", []string{"terminate", "--db", db, "--app", tag + "-innocent"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, false, append(tt.args, "--dry-run", "-o", "json")...)
			r.wantCode(t, 0)
			if !strings.Contains(r.out, `"application_name":"`+tag+`-innocent"`) {
				t.Fatalf("plan:\n%s", r.out)
			}
			file := writePlan(t, "plan.json", retarget(r.out, admin))
			r = run(t, false, "apply", file, "-o", "json")
			r.wantCode(t, 3)
			rows := jsonRows(t, r.out)
			if len(rows) != 1 {
				t.Fatalf("rows:\n%s", r.out)
			}
			row := rows[0]
			if row["outcome"] != "changed" || !strings.Contains(row["detail"].(string), "not the session the plan describes") {
				t.Fatalf("outcome %v (%v), want changed: not the session the plan describes\n%s", row["outcome"], row["detail"], r.out)
			}
			// What is printed is the session the server has at that pid.
			if row["pid"] != float64(admin.PID) || row["datname"] != "postgres" || row["usename"] != pgtest.Superuser ||
				row["application_name"] != tag+"-admin" || row["query"] != "SELECT 'admin at work'" {
				t.Fatalf("printed %v, want the superuser's session in postgres as it is", row)
			}
			if !admin.Alive() || !innocent.Alive() {
				t.Fatal("a session ended")
			}
		})
	}
}

// What apply prints of a session it acted on is what the signalling
// statement read: the session ran another statement after the plan.
func TestApplyPrintsTheSessionAsSignalled(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Exec("SELECT 'when planned'")
	r := run(t, false, "terminate", strconv.Itoa(int(v.PID)), "--dry-run", "-o", "json")
	r.wantCode(t, 0)
	file := writePlan(t, "plan.json", r.out)
	v.Exec("SELECT 'after the plan'")
	r = run(t, false, "apply", file, "-o", "json")
	r.wantCode(t, 0)
	rows := jsonRows(t, r.out)
	if len(rows) != 1 || rows[0]["outcome"] != "terminated" || rows[0]["query"] != "SELECT 'after the plan'" {
		t.Fatalf("want terminated with the query it ran when signalled:\n%s", r.out)
	}
}

// A plan names its server: applied to another server it does nothing, in
// one line, exit 2, whatever runs there under the same pid.
func TestApplyRefusesAPlanOfAnotherServer(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	r := run(t, false, "terminate", strconv.Itoa(int(v.PID)), "--dry-run", "-o", "json")
	r.wantCode(t, 0)
	plan := r.out
	if !regexp.MustCompile(`"system_identifier":"[1-9][0-9]*"`).MatchString(plan) {
		t.Fatalf("the plan does not name its server:\n%s", plan)
	}
	good := writePlan(t, "plan.json", plan)

	// Another cluster, with its own system_identifier.
	other := pgtest.Own(t, pgtest.Options{})
	r = run(t, false, "apply", good, "-d", other.DSN("postgres", pgtest.Superuser))
	if r.code != 2 || r.out != "" || strings.Count(r.errOut, "\n") != 1 ||
		!regexp.MustCompile(`^pgreap: the plan was made on another server \(system_identifier [0-9]+, this server's [0-9]+\): nothing done\n$`).MatchString(r.errOut) {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.out, r.errOut)
	}

	// The same server named by another system_identifier (an edited plan).
	edited := regexp.MustCompile(`"system_identifier":"[0-9]+"`).ReplaceAllString(plan, `"system_identifier":"1234"`)
	r = run(t, false, "apply", writePlan(t, "edited.json", edited))
	if r.code != 2 || r.out != "" || r.errOut == "" ||
		!strings.HasPrefix(r.errOut, "pgreap: the plan was made on another server (system_identifier 1234, this server's ") {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.out, r.errOut)
	}
	if !v.Alive() {
		t.Fatal("a plan of another server ended a session")
	}
	r = run(t, false, "apply", good, "-o", "json")
	r.wantCode(t, 0)
}

// apply reports a session as the signalling statement read it, with the
// columns of its server's version: a plan edited to name a parallel
// worker gets it protected, with its leader_pid (13+).
func TestApplyPrintsAWorkersLeader(t *testing.T) {
	t.Parallel()
	_, leader, worker := pgtest.Parallel(t)
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	r := run(t, false, "terminate", strconv.Itoa(int(v.PID)), "--dry-run", "-o", "json")
	r.wantCode(t, 0)
	var start time.Time
	if err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT backend_start FROM pg_catalog.pg_stat_activity WHERE pid = $1", worker).Scan(&start); err != nil {
		t.Fatal(err)
	}
	plan := regexp.MustCompile(`"pid":[0-9]+`).ReplaceAllString(r.out, `"pid":`+strconv.Itoa(int(worker)))
	plan = regexp.MustCompile(`"backend_start":"[^"]+"`).ReplaceAllString(plan, `"backend_start":"`+start.UTC().Format(time.RFC3339Nano)+`"`)
	r = run(t, false, "apply", writePlan(t, "plan.json", plan), "-o", "json")
	rows := jsonRows(t, r.out)
	if len(rows) != 1 || rows[0]["outcome"] != "protected" {
		t.Fatalf("want the worker protected:\n%s", r.out)
	}
	got := rows[0]["leader_pid"]
	if pgtest.Shared(t).Major < 13 {
		if got != nil {
			t.Errorf("leader_pid %v on 12", got)
		}
	} else if got != float64(leader.PID) {
		t.Errorf("leader_pid %v, want %d:\n%s", got, leader.PID, r.out)
	}
}
