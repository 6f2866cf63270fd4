package cli_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"

	"github.com/pgreap/pgreap/internal/cli"
	"github.com/pgreap/pgreap/internal/pgtest"
)

func TestTopBadInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no terminal", []string{"top"}, "pgreap: top needs a terminal on standard input and output; for a script, use ls\n"},
		{"interval", []string{"top", "--interval", "10ms"}, "pgreap: --interval 10ms: shorter than 100ms\n"},
		{"selector", []string{"top", "--client", "10.0.0.0/33"}, "pgreap: --client"},
		{"argument", []string{"top", "4242"}, "pgreap: unknown command \"4242\" for \"pgreap top\"\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := run(t, false, tt.args...)
			r.wantCode(t, 2)
			if !strings.HasPrefix(r.errOut, tt.want) || strings.Count(r.errOut, "\n") != 1 || r.out != "" {
				t.Fatalf("stderr %q, want %q (one line)", r.errOut, tt.want)
			}
		})
	}
}

// tmuxTerm is a terminal a person would use: pgreap top runs in a shell
// in a tmux session of its own (own server socket), driven by keys.
type tmuxTerm struct {
	t    *testing.T
	tmux string
	sock string
}

func newTmux(t *testing.T) *tmuxTerm {
	t.Helper()
	tmux, err := exec.LookPath("tmux")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("tmux is not installed: .ci/run installs it")
		}
		t.Skip("tmux is not installed (apt-get install tmux)")
	}
	tt := &tmuxTerm{t: t, tmux: tmux, sock: filepath.Join(t.TempDir(), "tmux")}
	// The server starts with this process's environment: PGHOST and the
	// rest point at the package's cluster.
	tt.run("-f", "/dev/null", "new-session", "-d", "-x", "160", "-y", "30", "bash --norc --noprofile")
	t.Cleanup(func() { _ = exec.Command(tmux, "-S", tt.sock, "kill-server").Run() })
	tt.keys("PS1='$ '", "Enter")
	return tt
}

func (tt *tmuxTerm) run(args ...string) string {
	tt.t.Helper()
	out, err := exec.Command(tt.tmux, append([]string{"-S", tt.sock}, args...)...).CombinedOutput()
	if err != nil {
		tt.t.Fatalf("tmux %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// keys types keys: tmux key names (Enter, Escape), or literal text with
// a "-l" before it.
func (tt *tmuxTerm) keys(keys ...string) {
	tt.run(append([]string{"send-keys", "-t", "0"}, keys...)...)
}

func (tt *tmuxTerm) screen() string { return tt.run("capture-pane", "-p", "-t", "0") }

// waitFor waits until the screen shows text; the test fails with the
// screen after 30s.
func (tt *tmuxTerm) waitFor(text string) string {
	tt.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		screen := tt.screen()
		if strings.Contains(screen, text) {
			return screen
		}
		if time.Now().After(deadline) {
			tt.t.Fatalf("the screen does not show %q after 30s:\n%s", text, screen)
		}
		time.Sleep(10 * time.Millisecond) // a poll, not a wait for time to pass
	}
}

// The end-to-end test: the built command in a real terminal
// against the real server shows the sessions, filters to one, asks before
// terminating, terminates exactly that one after y, and quits on q with
// the terminal as it was.
func TestTopInATerminal(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	a := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, App: "checkout-a"})
	b := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, App: "checkout-b"})
	a.Exec("SELECT 1")
	b.Exec("SELECT 1")
	term := newTmux(t)
	term.keys("-l", fmt.Sprintf("%s top --db %s --interval 200ms; echo EXIT=$?", pgreapBin(t), db))
	term.keys("Enter")
	screen := term.waitFor("2 sessions: ")
	for _, v := range []string{"checkout-a", "checkout-b"} {
		if !strings.Contains(screen, v) {
			t.Fatalf("%s not shown:\n%s", v, screen)
		}
	}
	term.keys("/")
	term.waitFor("enter apply")
	term.keys("-l", "checkout-a")
	term.keys("Enter")
	term.waitFor(`filter "checkout-a": 1 shown`)
	term.keys("t")
	screen = term.waitFor("terminate 1 session? y/n")
	if !strings.Contains(screen, fmt.Sprintf("%d postgres@%s checkout-a", a.PID, db)) {
		t.Fatalf("the question does not name the session:\n%s", screen)
	}
	if !a.Alive() || !b.Alive() {
		t.Fatal("a session ended before the answer")
	}
	term.keys("y")
	term.waitFor(fmt.Sprintf("terminate: 1 terminated — %d terminated", a.PID))
	if a.Alive() || !b.Alive() {
		t.Fatalf("checkout-a alive %v, checkout-b alive %v: want only checkout-a gone", a.Alive(), b.Alive())
	}
	term.keys("q")
	screen = term.waitFor("EXIT=0")
	if !strings.Contains(screen, fmt.Sprintf("pgreap top: terminate: 1 terminated — %d terminated", a.PID)) {
		t.Fatalf("the action is not in the scrollback:\n%s", screen)
	}
	// The terminal is usable: canonical mode and echo are back, and the
	// typed command line shows again (the alternate screen was left).
	if !strings.Contains(screen, "top --db "+db) {
		t.Fatalf("the alternate screen was not left:\n%s", screen)
	}
	term.sane()
}

// sane checks that the shell's terminal is as it was: canonical mode and
// echo on.
func (tt *tmuxTerm) sane() {
	tt.t.Helper()
	tt.keys("-l", `stty -a | grep -q -e '-icanon' -e '-echo ' && echo TTY=raw || echo TTY=sane`)
	tt.keys("Enter")
	if screen := tt.waitFor("TTY="); !strings.Contains(screen, "TTY=sane") {
		tt.t.Fatalf("terminal left broken:\n%s", screen)
	}
	tt.keys("clear", "Enter")
}

// child is the pid of the process the pane's shell runs in the
// foreground (a process this test started).
func (tt *tmuxTerm) child() int {
	tt.t.Helper()
	shell := strings.TrimSpace(tt.run("display-message", "-p", "-t", "0", "#{pane_pid}"))
	var pid int
	pgtest.Eventually(tt.t, "the shell's child", func() (bool, error) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%s/task/%s/children", shell, shell))
		if err != nil {
			return false, err
		}
		_, err = fmt.Sscan(string(b), &pid)
		return err == nil, nil
	})
	return pid
}

// Ctrl-C and SIGTERM stop top with the terminal restored and exit 0;
// --read-only refuses t.
func TestTopReadOnlyCtrlCAndSIGTERM(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	v := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	v.Exec("SELECT 1")
	term := newTmux(t)
	term.keys("-l", fmt.Sprintf("%s top --read-only --db %s; echo EXIT=$?", pgreapBin(t), db))
	term.keys("Enter")
	term.waitFor("1 session: ")
	term.keys("t")
	term.waitFor("read-only (--read-only): cancel and terminate are off")
	term.keys("y")
	term.keys("C-c")
	screen := term.waitFor("EXIT=0")
	if !v.Alive() {
		t.Fatal("read-only top ended a session")
	}
	if strings.Contains(screen, "pgreap top: ") {
		t.Fatalf("an action was reported:\n%s", screen)
	}
	term.sane()

	term.keys("-l", fmt.Sprintf("%s top --db %s; echo EXIT=$?", pgreapBin(t), db))
	term.keys("Enter")
	term.waitFor("1 session: ")
	if err := syscall.Kill(term.child(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	term.waitFor("EXIT=0")
	term.sane()
}

// A panic in top's program restores the terminal before the process
// ends (bubbletea catches it; topProgram must not turn that off).
func TestTopPanicRestoresTheTerminal(t *testing.T) {
	t.Parallel()
	term := newTmux(t)
	bin := filepath.Join(filepath.Dir(pgreapBin(t)), "pgreap-top-panic")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(exe, bin); err != nil {
		t.Fatal(err)
	}
	term.keys("-l", bin+"; echo EXIT=$?")
	term.keys("Enter")
	term.waitFor("press p to panic")
	term.keys("p")
	term.waitFor("EXIT=3")
	term.sane()
}

// panicky is a model that panics on p.
type panicky struct{}

func (panicky) Init() tea.Cmd { return nil }

func (panicky) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	if k, ok := msg.(tea.KeyPressMsg); ok && k.String() == "p" {
		panic("boom")
	}
	return panicky{}, nil
}

func (panicky) View() tea.View {
	v := tea.NewView("press p to panic")
	v.AltScreen = true
	return v
}

// topPanic runs panicky as top runs its model; exit 3 if Run reports
// the panic.
func topPanic() int {
	_, err := cli.TopProgram(panicky{}, cli.System()).Run()
	if errors.Is(err, tea.ErrProgramPanic) {
		return 3
	}
	return 1
}
