package cli_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

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
	t.Cleanup(func() { os.RemoveAll(dir) })
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
// cluster is gone afterwards.
func TestDemoScript(t *testing.T) {
	t.Parallel()
	tmp := demoTmp(t)
	p := startPgreap(t, []string{"TMPDIR=" + tmp, "PGREAP_PGBIN=" + pgtest.Shared(t).BinDir}, "demo", "--script")
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
}

// Interactive, the demo prints what to try and waits; Ctrl-C (SIGINT)
// stops it, exit 0, the cluster removed.
func TestDemoInterrupted(t *testing.T) {
	t.Parallel()
	tmp := demoTmp(t)
	p := startPgreap(t, []string{"TMPDIR=" + tmp, "PGREAP_PGBIN=" + pgtest.Shared(t).BinDir}, "demo")
	pgtest.Eventually(t, "the demo's guide", func() (bool, error) {
		select {
		case <-p.done:
			return false, errors.New("demo exited: " + p.errOut.String())
		default:
		}
		return strings.Contains(p.out.String(), "Ctrl-C here stops everything"), nil
	})
	out := p.out.String()
	if !strings.Contains(out, "export PGHOST="+tmp+"/pgreap-demo-") || len(leftovers(t, tmp)) != 1 {
		t.Fatalf("guide:\n%s", out)
	}
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	p.wait(t)
	if p.code() != 0 || p.errOut.String() != "" {
		t.Fatalf("exit %d, stderr %q", p.code(), p.errOut.String())
	}
	if left := leftovers(t, tmp); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
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
