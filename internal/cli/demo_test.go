package cli_test

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/pgreap/pgreap/internal/cluster"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// demoTmp is a TMPDIR for a demo: the server's user (when the tests run as
// root) must be able to reach the cluster's directory in it.
func demoTmp(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgreap-demotest-") // not t.TempDir: its parent is 0700
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A failed test may leave a demo's postmaster running: stop it
		// (ours, by its pid; SIGQUIT is its immediate shutdown).
		for _, pid := range serversIn(dir) {
			_ = syscall.Kill(pid, syscall.SIGQUIT)
		}
		os.RemoveAll(dir)
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// leftovers are the demo directories left in tmp.
func leftovers(t *testing.T, tmp string) []string {
	t.Helper()
	left, err := filepath.Glob(filepath.Join(tmp, "pgreap-demo-*"))
	if err != nil {
		t.Fatal(err)
	}
	return left
}

// The tour runs unattended to its end, every step as it should, and the
// cluster (and its PgBouncer) are gone afterwards: with the shop's web
// application through PgBouncer when it is installed, and directly.
func TestDemoScript(t *testing.T) {
	t.Parallel()
	t.Run("pgbouncer", func(t *testing.T) {
		t.Parallel()
		if _, err := cluster.FindPgBouncer(); err != nil {
			t.Skip(err)
		}
		out := demoScript(t)
		m := regexp.MustCompile(`\nPgBouncer [0-9.]+ \(transaction mode\) on 127\.0\.0\.1:(\d+), in `).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no PgBouncer started:\n%s", out)
		}
		if !regexp.MustCompile(`\nstopping PgBouncer and removing .*\nstopping the cluster and removing `).MatchString(out) {
			t.Fatalf("PgBouncer not stopped before the cluster:\n%s", out)
		}
		// ls names the pooled clients: the checkouts, queued on the lock,
		// hold their server connections.
		name := "127.0.0.1:" + m[1]
		first := tourSection(t, out, "$ pgreap ls --db shop\n")
		if n := len(regexp.MustCompile(`\n\d+ +shop +postgres +checkout +127\.0\.0\.1 via `+regexp.QuoteMeta(name)+` +active `).FindAllString(first, -1)); n != 2 {
			t.Fatalf("ls names %d of the 2 checkouts as clients via %s:\n%s", n, name, out)
		}
		// After kick the pool is back: PgBouncer's server connections are
		// new ones (as many as requests ran at once lately).
		poolBack(t, out, 1)
		// kick ends the pooled clients, and PgBouncer serves new ones.
		if !regexp.MustCompile(`\npgreap: pgbouncer ` + regexp.QuoteMeta(name) + `: KILL shop ended \d+ clients?, then RESUME`).MatchString(out) {
			t.Fatalf("kick did not end the pooled clients:\n%s", out)
		}
		// drain pauses PgBouncer first; while it holds, the pool's
		// requests wait, none fails; undrain resumes it and the requests
		// that waited go on, none failed.
		for _, want := range []string{"\npgreap: shop: paused on pgbouncer " + name + "\n", "\nshop: resumed on pgbouncer " + name + "\n"} {
			if !strings.Contains(out, want) {
				t.Fatalf("no %q in the tour:\n%s", want, out)
			}
		}
		if m := regexp.MustCompile(`\nshop-web: (\d+) requests? waiting \(the oldest for [0-9.]+m?s\), 0 failed since the drain began\n`).FindStringSubmatch(out); m == nil || m[1] == "0" {
			t.Fatalf("while the drain held, no request of the pool waited, or some failed:\n%s", out)
		}
		if !regexp.MustCompile(`\nshop-web: \d+ requests? done, the longest took [0-9.]+m?s; 0 failed during the drain\n`).MatchString(out) {
			t.Fatalf("requests of the pool failed during the drain:\n%s", out)
		}
	})
	t.Run("direct", func(t *testing.T) {
		t.Parallel()
		out := demoScript(t, "--no-pgbouncer")
		if strings.Contains(out, "PgBouncer 1.") || strings.Contains(out, "no PgBouncer on this machine") {
			t.Fatalf("--no-pgbouncer: a PgBouncer, or the hint to get one:\n%s", out)
		}
		// What the tour says after kick holds: the shop's pool connects
		// again (new sessions, ones kick did not end), and the drain ends
		// them.
		if m := regexp.MustCompile(`shop is drained \((\d+) sessions? ended\)`).FindStringSubmatch(out); m == nil || m[1] == "0" {
			t.Fatalf("the drain ended none of the pool's sessions:\n%s", out)
		}
		poolBack(t, out, 5)
		// Directly, the application sees the drain: the count says so.
		if m := regexp.MustCompile(`\nshop-web: \d+ requests? done, the longest took [0-9.]+m?s; (\d+) failed \([0-9A-Za-z, ]+\) during the drain\n`).FindStringSubmatch(out); m == nil || m[1] == "0" {
			t.Fatalf("no failed request counted during the drain:\n%s", out)
		}
	})
}

// demoScript runs the tour, checks what it prints in every mode, and
// returns its output.
func demoScript(t *testing.T, args ...string) string {
	t.Helper()
	tmp := demoTmp(t)
	home := t.TempDir() // the user's state directory must stay empty
	p := startPgreap(t, []string{"TMPDIR=" + tmp, "PGREAP_PGBIN=" + pgtest.Shared(t).BinDir,
		"HOME=" + home, "XDG_STATE_HOME=" + home, "PGREAP_STATE_DIR="}, append([]string{"demo", "--script"}, args...)...)
	p.wait(t)
	out := p.out.String()
	if p.code() != 0 {
		t.Fatalf("exit %d\n%s\nstderr:\n%s", p.code(), out, p.errOut.String())
	}
	for _, want := range []string{
		"$ pgreap ls --db shop\n",
		"$ pgreap unblock --longer-than 1s --dry-run\n",
		"$ pgreap unblock --longer-than 1s --yes\n",
		"$ pgreap cancel --app report --yes\n",
		"$ pgreap terminate --app etl --dry-run -o json > plan.json\n",
		"$ pgreap apply plan.json\n",
		"$ pgreap kick --db shop --yes\n",
		"$ pgreap drain shop --dry-run\n",
		"$ pgreap drain shop --timeout 20s\n",
		"$ pgreap undrain shop\n",
		"$ pgreap watch -c policy.yaml",
		`"rule":"runaway-reports"`,
		`"outcome":"cancelled"`,
		"The tour is over.",
		"stopping the cluster and removing " + tmp + "/pgreap-demo-",
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("no %q in the tour:\n%s", want, out)
		}
	}
	if left := leftovers(t, tmp); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
	if state, _ := os.ReadDir(home); len(state) > 0 {
		t.Fatalf("the tour wrote into the user's home: %v", state)
	}
	noServerIn(t, tmp)
	return out
}

// poolBack checks the tour's ls after kick: at least n of the pool's
// sessions, none of them one that kick ended.
func poolBack(t *testing.T, out string, n int) {
	t.Helper()
	kicked := tourSection(t, out, "$ pgreap kick --db shop --yes\n")
	back := tourSection(t, out, "$ pgreap ls --db shop\n", "# the pool is back")
	if got := strings.Count(back, " shop-web "); got < n {
		t.Fatalf("the pool is not back after kick (%d sessions, want %d):\n%s", got, n, out)
	}
	for _, line := range strings.Split(back, "\n") {
		if pid, _, ok := strings.Cut(line, " "); ok && strings.Contains(line, " shop-web ") && strings.Contains(kicked, "\n"+pid+" ") {
			t.Fatalf("pid %s, ended by kick, is listed as back:\n%s", pid, out)
		}
	}
}

// tourSection is the output of the tour's step whose command line is cmd
// (the first after the line starting with say, if given), up to the next
// step.
func tourSection(t *testing.T, out, cmd string, say ...string) string {
	t.Helper()
	for _, s := range say {
		_, after, ok := strings.Cut(out, "\n"+s)
		if !ok {
			t.Fatalf("no %q in the tour:\n%s", s, out)
		}
		out = after
	}
	_, after, ok := strings.Cut(out, cmd)
	if !ok {
		t.Fatalf("no %q in the tour:\n%s", cmd, out)
	}
	section, _, _ := strings.Cut(after, "\n# ")
	return section
}

// serversIn are the pids of the processes that run from a demo directory
// in tmp (a demo's postmaster).
func serversIn(tmp string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), tmp+"/pgreap-demo-") {
			if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// noServerIn fails if a demo's postmaster still runs from tmp.
func noServerIn(t *testing.T, tmp string) {
	t.Helper()
	if pids := serversIn(tmp); len(pids) > 0 {
		t.Fatalf("still running from %s: pids %v", tmp, pids)
	}
}

// startDemo starts an interactive demo with its directory in tmp.
func startDemo(t *testing.T, tmp string) *process {
	t.Helper()
	return startPgreap(t, []string{"TMPDIR=" + tmp, "PGREAP_PGBIN=" + pgtest.Shared(t).BinDir}, "demo")
}

// waitFor polls the demo's output until cond holds.
func (p *process) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	pgtest.Eventually(t, what, func() (bool, error) {
		select {
		case <-p.done:
			return false, errors.New("demo exited: " + p.errOut.String())
		default:
		}
		return cond(), nil
	})
}

// stopDemo sends sig to a demo and checks that it has cleaned up: exit
// 0, no directory, no server.
func stopDemo(t *testing.T, p *process, tmp string, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	p.wait(t)
	if p.code() != 0 || p.errOut.String() != "" {
		t.Fatalf("%v: exit %d, stderr %q", sig, p.code(), p.errOut.String())
	}
	if left := leftovers(t, tmp); len(left) > 0 {
		t.Fatalf("%v: left behind: %v", sig, left)
	}
	noServerIn(t, tmp)
}

// Interactive, the demo prints what to try and waits; Ctrl-C (SIGINT), a
// closed terminal (SIGHUP), SIGTERM or Ctrl-\ (SIGQUIT) stops it, exit 0,
// the cluster and its directory gone.
func TestDemoInterrupted(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGQUIT} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			tmp := demoTmp(t)
			p := startDemo(t, tmp)
			p.waitFor(t, "the demo's guide", func() bool { return strings.Contains(p.out.String(), "Ctrl-C here stops everything") })
			// The cluster's directory, the drain records', PgBouncer's;
			// the commands in the other terminal see the pooler, or none.
			dirs, pooler := 3, "PGREAP_PGBOUNCER=postgres://postgres@127.0.0.1:"
			if _, err := cluster.FindPgBouncer(); err != nil {
				dirs, pooler = 2, "PGREAP_PGBOUNCER= "
			}
			if out := p.out.String(); !strings.Contains(out, "export PGHOST="+tmp+"/pgreap-demo-") || !strings.Contains(out, pooler) || len(leftovers(t, tmp)) != dirs {
				t.Fatalf("guide (%d directories, want %d):\n%s", len(leftovers(t, tmp)), dirs, out)
			}
			stopDemo(t, p, tmp, sig)
		})
	}
}

// Ctrl-C while the cluster starts: pg_ctl is stopped, and the postmaster
// it started (in a session of its own) too.
func TestDemoInterruptedWhileStarting(t *testing.T) {
	t.Parallel()
	tmp := demoTmp(t)
	p := startDemo(t, tmp)
	// As soon as the server's log exists, pg_ctl start is running.
	p.waitFor(t, "pg_ctl start", func() bool {
		logs, _ := filepath.Glob(filepath.Join(tmp, "pgreap-demo-*", "server.log"))
		return len(logs) > 0
	})
	stopDemo(t, p, tmp, syscall.SIGINT)
}

func TestDemoBadPGBin(t *testing.T) {
	t.Parallel()
	empty := t.TempDir()
	r := run(t, false, "demo", "--pg-bin", empty)
	r.wantCode(t, 2)
	if r.errOut != "pgreap: --pg-bin "+empty+": no initdb there\n" || r.out != "" {
		t.Fatalf("stdout %q\nstderr %q", r.out, r.errOut)
	}
}
