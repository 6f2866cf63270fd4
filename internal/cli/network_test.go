package cli_test

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// Faults of the network between pgreap and the server, made by a proxy in
// front of the package's cluster. Each must end with one clear line and
// the right exit code, never hang, never report done what it could not
// see done, and never act twice.

// through is a connection string to the package's cluster through a new
// proxy, with a short statement_timeout so that the client's deadline
// (statement_timeout + 2s) comes soon.
func through(t *testing.T) (*pgtest.Proxy, string) {
	p := pgtest.ProxyTo(t, pgtest.Shared(t))
	return p, p.DSN("postgres", pgtest.Superuser) + " statement_timeout=500ms"
}

// oneLine fails unless stderr is one line that contains each of want.
func oneLine(t *testing.T, r result, want ...string) {
	t.Helper()
	if strings.Count(r.errOut, "\n") != 1 {
		t.Errorf("stderr is not one line: %q", r.errOut)
	}
	for _, w := range want {
		if !strings.Contains(r.errOut, w) {
			t.Errorf("stderr %q lacks %q", r.errOut, w)
		}
	}
}

// The network stalls (nothing forwarded, nothing closed) once ls has sent
// its statement: the server's statement_timeout cannot help, pgreap's own
// deadline ends it.
func TestStalledNetworkEndsLs(t *testing.T) {
	t.Parallel()
	p, dsn := through(t)
	fired := p.On("pg_stat_activity", pgtest.Stall, pgtest.After)
	start := time.Now()
	r := run(t, false, "ls", "-d", dsn)
	took := time.Since(start)
	select {
	case <-fired:
	default:
		t.Fatal("the stall never fired")
	}
	r.wantCode(t, 2)
	oneLine(t, r, "no answer from the server within its statement_timeout plus 2s")
	if took < 2500*time.Millisecond {
		t.Errorf("gave up after %v, before statement_timeout + 2s", took)
	}
	t.Logf("ls gave up after %v: %s", took.Round(time.Millisecond), r.errOut)
}

// A server that stalls before it answers the startup: the connect timeout
// ends it, one line, exit 2.
func TestStalledNetworkAtConnect(t *testing.T) {
	t.Parallel()
	p, dsn := through(t)
	p.Stall()
	r := run(t, false, "ls", "-d", dsn+" connect_timeout=1")
	r.wantCode(t, 2)
	oneLine(t, r, "cannot connect as user", "timeout")
}

// The connection is cut while the signalling statement runs: before it
// reaches the server, or after (the server signalled; its answer never
// came). pgreap cannot know which: the session is reported survived, "may
// have been signalled, not verified", exit 3, and never signalled twice.
func TestCutWhileSignalling(t *testing.T) {
	for _, tc := range []struct {
		name string
		when pgtest.When
		args []string
	}{
		{"terminate, cut before the statement arrives", pgtest.Before, []string{"terminate"}},
		{"terminate, cut before the answer", pgtest.After, []string{"terminate"}},
		{"cancel, cut before the answer", pgtest.After, []string{"cancel"}},
		{"kick, cut before the answer", pgtest.After, []string{"kick", "--yes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := pgtest.NewDB(t)
			v := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
			v.Start("SELECT pg_catalog.pg_sleep(60)")
			v.WaitState("active", "")
			p, dsn := through(t)
			mark := logMark(t)
			fired := p.On("pgreap action:", pgtest.Cut, tc.when)
			args := append(tc.args, "-o", "json", "-d", dsn)
			if tc.args[0] == "kick" {
				args = append(args, "--db", db)
			} else {
				args = append(args, strconv.Itoa(int(v.PID)))
			}
			r := run(t, false, args...)
			select {
			case <-fired:
			default:
				t.Fatalf("the cut never fired (the statement's text changed?): exit %d, %s", r.code, r.errOut)
			}
			r.wantCode(t, 3)
			rows := jsonRows(t, r.out)
			if len(rows) != 1 || rows[0]["outcome"] != "survived" ||
				!strings.HasPrefix(rows[0]["detail"].(string), "may have been signalled, not verified: signal: ") {
				t.Fatalf("stdout %s", r.out)
			}
			oneLine(t, r, "signals were sent and not all verified", "the connection to the server was lost")

			// What the server did: after the statement arrived, the victim
			// was signalled once; before, never.
			if tc.when == pgtest.Before {
				v.WaitState("active", "")
				if n := signalsLogged(t, mark, v.PID); n != 0 {
					t.Fatalf("signalled though the statement never arrived: %d in the log", n)
				}
				return
			}
			err := v.Wait()
			if logged := signalsLogged(t, mark, v.PID); err == nil || logged != 1 {
				t.Fatalf("the server did not signal it exactly once: %v, %d in the log", err, logged)
			}
			t.Logf("%s: %s", rows[0]["detail"], strings.TrimSpace(r.errOut))
		})
	}
}

// The network stalls while terminate waits for the backend to go: the
// signal was sent, the wait cannot tell; survived, not verified, exit 3.
func TestStallWhileWaiting(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	p, dsn := through(t)
	mark := logMark(t)
	p.On("pgreap wait:", pgtest.Stall, pgtest.Before)
	r := run(t, false, "terminate", strconv.Itoa(int(v.PID)), "-o", "json", "-d", dsn)
	r.wantCode(t, 3)
	rows := jsonRows(t, r.out)
	if len(rows) != 1 || rows[0]["outcome"] != "survived" ||
		!strings.HasPrefix(rows[0]["detail"].(string), "signalled, not verified: wait: ") {
		t.Fatalf("stdout %s", r.out)
	}
	oneLine(t, r, "signals were sent and not all verified", "no answer from the server")
	pgtest.Eventually(t, "the victim gone", func() (bool, error) { return !v.Alive(), nil })
	if n := signalsLogged(t, mark, v.PID); n != 1 {
		t.Fatalf("%d terminations logged, want 1", n)
	}
}

// logMark is where the package's server log ends now: signalsLogged reads
// what comes after it.
func logMark(t *testing.T) int64 {
	t.Helper()
	fi, err := os.Stat(pgtest.Shared(t).LogFile())
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// signalsLogged counts the cancels and terminations the package's server
// logged, since mark, for the backend pid.
func signalsLogged(t *testing.T, mark int64, pid int32) int {
	t.Helper()
	b, err := os.ReadFile(pgtest.Shared(t).LogFile())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b[mark:]), "\n") {
		if strings.Contains(l, " ["+strconv.Itoa(int(pid))+"] ") &&
			(strings.Contains(l, "terminating connection due to administrator command") ||
				strings.Contains(l, "canceling statement due to user request")) {
			n++
		}
	}
	return n
}
