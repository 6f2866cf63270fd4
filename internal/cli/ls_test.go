package cli_test

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/pgreap/pgreap/internal/cli"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// passwordGroup: members of this role must give a password (scram), so a
// test can fail authentication.
const passwordGroup = "pgreap_password_required"

func TestMain(m *testing.M) {
	// The test binary is also the pgreap of testscript's scripts.
	testscript.Main(clusterM{m}, map[string]func(){
		"pgreap":           func() { os.Exit(cli.Main()) },
		"pgreap-top-panic": func() { os.Exit(topPanic()) },
	})
}

type clusterM struct{ m *testing.M }

func (c clusterM) Run() int {
	// Drain records of in-process runs go to a directory of their own.
	state, err := os.MkdirTemp("", "pgreap-state-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(state)
	os.Setenv("PGREAP_STATE_DIR", state)
	return pgtest.Run(c.m, pgtest.Options{
		HBA: []string{
			"local all +" + passwordGroup + " scram-sha-256",
			"host all +" + passwordGroup + " 127.0.0.1/32 scram-sha-256",
		},
	})
}

type result struct {
	code        int
	out, errOut string
}

// run runs pgreap in-process with the package cluster in the environment.
func run(t *testing.T, tty bool, args ...string) result {
	t.Helper()
	streams, out, errOut := cli.Test()
	if tty {
		streams.OutTTY, streams.Width = true, 200
	}
	code := cli.Run(pgtest.Context(t), args, streams)
	return result{code, out.String(), errOut.String()}
}

func (r result) wantCode(t *testing.T, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.out, r.errOut)
	}
}

func TestLsJSON(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Exec("SELECT 'json victim'")
	r := run(t, false, "ls", "--app", pgtest.Tag(t), "-o", "json")
	r.wantCode(t, 0)
	var rows []map[string]any
	if err := json.Unmarshal([]byte(r.out), &rows); err != nil {
		t.Fatalf("not a JSON array: %v\n%s", err, r.out)
	}
	if len(rows) != 1 {
		t.Fatalf("%d rows, want 1: %s", len(rows), r.out)
	}
	row := rows[0]
	if row["pid"] != float64(v.PID) || row["query"] != "SELECT 'json victim'" || row["state"] != "idle" ||
		row["application_name"] != pgtest.Tag(t) || row["backend_type"] != "client backend" {
		t.Errorf("row: %v", row)
	}
	bs, err := time.Parse(time.RFC3339Nano, row["backend_start"].(string))
	if err != nil || !bs.Equal(v.BackendStart) {
		t.Errorf("backend_start %v, want %v (%v)", row["backend_start"], v.BackendStart, err)
	}
	if _, ok := row["query_id"]; ok != (pgtest.Shared(t).Major >= 14) {
		t.Errorf("query_id present: %v on PostgreSQL %d", ok, pgtest.Shared(t).Major)
	}
	// pg_stat_activity's names, and nothing else but blocked_by.
	for _, k := range []string{"pid", "leader_pid", "datname", "usename", "application_name", "client_addr",
		"backend_type", "state", "backend_start", "xact_start", "query_start", "state_change",
		"wait_event_type", "wait_event", "query", "blocked_by"} {
		if _, ok := row[k]; !ok {
			t.Errorf("field %s missing", k)
		}
	}
	if r.errOut != "" {
		t.Errorf("stderr: %q", r.errOut)
	}
}

func TestLsCSV(t *testing.T) {
	t.Parallel()
	a := pgtest.NewVictim(t, pgtest.VictimOptions{})
	a.Exec("SELECT 'a,\"b\"\nc'")
	b := pgtest.NewVictim(t, pgtest.VictimOptions{})
	r := run(t, false, "ls", "--app", pgtest.Tag(t), "-o", "csv")
	r.wantCode(t, 0)
	recs, err := csv.NewReader(strings.NewReader(r.out)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 || recs[0][0] != "pid" {
		t.Fatalf("want a header with pid first and 2 rows: %q", recs)
	}
	got := map[string]bool{recs[1][0]: true, recs[2][0]: true}
	if !got[strconv.Itoa(int(a.PID))] || !got[strconv.Itoa(int(b.PID))] {
		t.Errorf("pids %v, want %d and %d", got, a.PID, b.PID)
	}
	q := -1
	for i, h := range recs[0] {
		if h == "query" {
			q = i
		}
	}
	if recs[1][q] != "SELECT 'a,\"b\"\nc'" {
		t.Errorf("query %q did not survive CSV quoting", recs[1][q])
	}
}

func TestLsTable(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	holder.Exec("CREATE TABLE t (id int)")
	holder.Exec("BEGIN")
	holder.Exec("LOCK TABLE t")
	waiter := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	waiter.Start("SELECT\n\tcount(*)   FROM t")
	waiter.WaitState("active", "Lock")

	r := run(t, true, "ls", "--app", pgtest.Tag(t))
	r.wantCode(t, 0)
	lines := strings.Split(strings.TrimRight(r.out, "\n"), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "PID") || !strings.Contains(lines[0], "BLOCKED BY") {
		t.Fatalf("want a header and 2 rows:\n%s", r.out)
	}
	if !strings.Contains(r.out, "\x1b[") {
		t.Errorf("no colour on a terminal:\n%s", r.out)
	}
	var waiterLine string
	for _, l := range lines {
		if strings.HasPrefix(l, strconv.Itoa(int(waiter.PID))+" ") {
			waiterLine = l
		}
	}
	if !strings.Contains(waiterLine, "Lock:relation") || !strings.Contains(waiterLine, strconv.Itoa(int(holder.PID))) ||
		!strings.Contains(waiterLine, "SELECT count(*) FROM t") {
		t.Errorf("waiter's line lacks its wait, blocker or query: %q", waiterLine)
	}

	for _, args := range [][]string{{"--no-color"}, {}} {
		tty := len(args) > 0
		r := run(t, tty, append([]string{"ls", "--app", pgtest.Tag(t)}, args...)...)
		r.wantCode(t, 0)
		if strings.Contains(r.out, "\x1b") {
			t.Errorf("colour with tty=%v %v:\n%s", tty, args, r.out)
		}
	}
}

func TestLsNoColorEnv(t *testing.T) {
	t.Parallel()
	pgtest.NewVictim(t, pgtest.VictimOptions{})
	streams, out, _ := cli.Test()
	streams.OutTTY, streams.Width, streams.NoColor = true, 100, true
	if code := cli.Run(pgtest.Context(t), []string{"ls", "--app", pgtest.Tag(t)}, streams); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if strings.Contains(out.String(), "\x1b") || !strings.Contains(out.String(), "PID") {
		t.Errorf("NO_COLOR: %q", out.String())
	}
}

func TestLsNothingMatched(t *testing.T) {
	t.Parallel()
	for _, format := range []string{"table", "json", "csv"} {
		r := run(t, false, "ls", "--app", pgtest.Tag(t)+"-nobody", "-o", format)
		r.wantCode(t, 1)
		if format == "json" && strings.TrimSpace(r.out) != "[]" {
			t.Errorf("json: %q, want []", r.out)
		}
		if !strings.Contains(r.errOut, "no sessions matched") || strings.Count(r.errOut, "\n") != 1 {
			t.Errorf("%s: stderr %q", format, r.errOut)
		}
	}
}

func TestLsSelectorsReachTheServer(t *testing.T) {
	t.Parallel()
	idle := pgtest.NewVictim(t, pgtest.VictimOptions{})
	idle.Exec("SELECT 'needle'")
	busy := pgtest.NewVictim(t, pgtest.VictimOptions{})
	busy.Start("SELECT pg_catalog.pg_sleep(60)")
	busy.WaitState("active", "")
	tests := []struct {
		name string
		args []string
		want int32
	}{
		{"state", []string{"--state", "active"}, busy.PID},
		{"query", []string{"--query", "need.e"}, idle.PID},
		{"exclude", []string{"--state", "idle*", "--exclude-db", "template*"}, idle.PID},
	}
	for _, tt := range tests {
		r := run(t, false, append([]string{"ls", "--app", pgtest.Tag(t), "-o", "json"}, tt.args...)...)
		r.wantCode(t, 0)
		var rows []struct{ PID int32 }
		if err := json.Unmarshal([]byte(r.out), &rows); err != nil {
			t.Fatal(err)
		}
		if len(rows) != 1 || rows[0].PID != tt.want {
			t.Errorf("%s: got %v, want [%d]", tt.name, rows, tt.want)
		}
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"duration", []string{"ls", "--longer-than", "5x"}, `--longer-than "5x": not a duration`},
		{"duration without unit", []string{"ls", "--xact-longer-than", "300"}, `--xact-longer-than "300": not a duration`},
		{"negative duration", []string{"ls", "--longer-than", "-1m"}, `--longer-than "-1m": must be more than zero`},
		{"regex", []string{"ls", "--query", "a(b"}, `--query "a(b": not a regular expression`},
		{"CIDR", []string{"ls", "--client", "10.0.0.0/40"}, `--client "10.0.0.0/40": not an address or CIDR`},
		{"state", []string{"ls", "--state", "sleeping"}, `--state "sleeping": not a pg_stat_activity state`},
		{"output", []string{"ls", "-o", "yaml"}, `--output "yaml": not an output format`},
		{"port", []string{"ls", "-p", "http"}, `--port "http": not a port number`},
		{"unknown flag", []string{"ls", "--frobnicate"}, "unknown flag: --frobnicate"},
		{"unknown command", []string{"lss"}, `unknown command "lss"`},
		{"argument", []string{"ls", "extra"}, `unknown command "extra"`},
		{"connection string", []string{"ls", "-d", "host=/tmp port=notaport"}, "connection string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A server that would log a connection: bad input must stop
			// before connecting.
			r := run(t, false, append(tt.args, "-d", "host=/nonexistent-"+pgtest.Tag(t))...)
			if tt.name == "connection string" {
				r = run(t, false, tt.args...)
			}
			r.wantCode(t, 2)
			if r.out != "" {
				t.Errorf("stdout: %q", r.out)
			}
			if strings.Count(r.errOut, "\n") != 1 || !strings.HasPrefix(r.errOut, "pgreap: ") || !strings.Contains(r.errOut, tt.want) {
				t.Errorf("stderr %q, want one line with %q", r.errOut, tt.want)
			}
			if strings.Contains(r.errOut, "cannot connect") {
				t.Errorf("connected before checking the input: %q", r.errOut)
			}
		})
	}
}

func TestConnectionFailure(t *testing.T) {
	t.Parallel()
	c := pgtest.Shared(t)
	role := pgtest.NewRole(t, "PASSWORD 'right-horse-battery'")
	pgtest.Exec(t, "DO $$BEGIN CREATE ROLE "+passwordGroup+"; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
	pgtest.Exec(t, "GRANT "+passwordGroup+" TO "+pgx.Identifier{role}.Sanitize())
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"no server", []string{"-h", "/nonexistent", "-p", "5999", "ls"},
			[]string{`cannot connect as user "postgres"`, "/nonexistent/.s.PGSQL.5999", "no such file or directory"}},
		{"closed port", []string{"-h", "127.0.0.1", "-p", "1", "ls"},
			[]string{"127.0.0.1:1", "connection refused"}},
		{"wrong password", []string{"-d", fmt.Sprintf("host=%s port=%d user=%s password=wrong-secret", c.SocketDir(), c.Port, role), "ls"},
			[]string{`cannot connect as user "` + role + `"`, c.SocketDir(), strconv.Itoa(c.Port), "password authentication failed", "28P01"}},
		{"wrong password URL", []string{"-d", fmt.Sprintf("postgresql://%s:wrong-secret@127.0.0.1:%d/postgres", role, c.Port), "ls"},
			[]string{"127.0.0.1:" + strconv.Itoa(c.Port), "password authentication failed"}},
		{"no such database", []string{"-d", "dbname=nope_" + pgtest.Name(t, ""), "ls"},
			[]string{"does not exist", "3D000"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, false, tt.args...)
			r.wantCode(t, 2)
			if strings.Count(r.errOut, "\n") != 1 {
				t.Errorf("stderr is not one line: %q", r.errOut)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.errOut, w) {
					t.Errorf("stderr %q lacks %q", r.errOut, w)
				}
			}
			if strings.Contains(r.errOut, "wrong-secret") {
				t.Errorf("password printed: %q", r.errOut)
			}
		})
	}
	// The right password works, and flags override the string.
	r := run(t, false, "-d", fmt.Sprintf("host=%s port=%d user=nobody password=right-horse-battery", c.SocketDir(), c.Port),
		"-U", role, "ls", "-o", "json", "--app", "no-such-app-"+pgtest.Tag(t))
	r.wantCode(t, 1)
}

func TestLsParallelWorkers(t *testing.T) {
	t.Parallel()
	db, leader, _ := pgtest.Parallel(t)
	var rows []struct {
		PID         int32
		LeaderPID   *int32 `json:"leader_pid"`
		BackendType string `json:"backend_type"`
	}
	var r result
	pgtest.Eventually(t, "parallel workers in ls", func() (bool, error) {
		r = run(t, false, "ls", "--db", db, "-o", "json")
		if r.code != 0 {
			return false, nil
		}
		rows = rows[:0]
		if err := json.Unmarshal([]byte(r.out), &rows); err != nil {
			return false, err
		}
		return len(rows) > 1, nil
	})
	if rows[0].PID != leader.PID {
		t.Fatalf("first row %d, want the leader %d: %s", rows[0].PID, leader.PID, r.out)
	}
	for _, w := range rows[1:] {
		if w.BackendType == "" {
			// A worker that is exiting has no backend_type any more
			// (pg_stat_activity finds no background worker of that pid).
			continue
		}
		if w.BackendType != "parallel worker" {
			t.Fatalf("row %d after the leader is a %s", w.PID, w.BackendType)
		}
		if pgtest.Shared(t).Major >= 13 && (w.LeaderPID == nil || *w.LeaderPID != leader.PID) {
			t.Errorf("worker %d: leader_pid %v, want %d", w.PID, w.LeaderPID, leader.PID)
		}
		if pgtest.Shared(t).Major == 12 && w.LeaderPID != nil {
			t.Errorf("worker %d: leader_pid %v on 12", w.PID, *w.LeaderPID)
		}
	}
	note := strings.Count(r.errOut, "does not say which leader a parallel worker serves")
	if want := map[bool]int{true: 1, false: 0}[pgtest.Shared(t).Major == 12]; note != want {
		t.Errorf("PostgreSQL %d: the note appears %d times, want %d: %q", pgtest.Shared(t).Major, note, want, r.errOut)
	}
}

// The server's text in an error (here a database's name, which anyone who
// writes a connection string chooses) reaches stderr with nothing a
// terminal would act on: no escape sequence retitles the window.
func TestErrorsDriveNoTerminal(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).DSN("\x1b]2;owned\x07x\u202e", pgtest.Superuser)
	r := run(t, false, "ls", "-d", dsn)
	r.wantCode(t, 2)
	if !strings.Contains(r.errOut, "owned") || strings.ContainsAny(r.errOut, "\x1b\x07\u202e") {
		t.Fatalf("stderr %q: want the server's message without control characters", r.errOut)
	}
}
