package cli_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// termQuery is what a program writes to ask the terminal something and
// wait for the answer: its colours (OSC 10, 11, 12), the cursor position
// (DSR 6), its attributes or version (DA1, DA2, XTVERSION), a mode
// (DECRQM) or the keyboard protocol (kitty).
var termQuery = regexp.MustCompile(`\x1b\]1[0-2];\?|\x1b\[\??6n|\x1b\[[>=]?0?c|\x1b\[>0?q|\x1b\[\??[0-9]+\$p|\x1b\[\?u`)

// waitedQuery are the questions a program cannot draw without an answer
// to: its colours (lipgloss v1 asked for the background), the cursor
// position, its attributes or version. Top's bubbletea v2 asks for modes
// (DECRQM) and the keyboard protocol too, and goes on without an answer.
var waitedQuery = regexp.MustCompile(`\x1b\]1[0-2];\?|\x1b\[\??6n|\x1b\[[>=]?0?c|\x1b\[>0?q`)

// Commands other than top write nothing to the terminal but their output
// and never wait for it: on a pseudo-terminal nobody answers (script(1)
// relays what the command writes and answers nothing), bubbletea v1's
// init asked for the background colour and every command stalled 5 s.
// Top (bubbletea v2) asks neither, and draws without an answer.
func TestTerminalNotQueried(t *testing.T) {
	t.Parallel()
	script, err := exec.LookPath("script")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("script (util-linux) is not installed")
		}
		t.Skip("script (util-linux) is not installed")
	}
	bin := pgreapBin(t)
	// termenv does not query with CI set or a TERM of dumb, screen or
	// tmux: a terminal emulator's environment, as a person has it.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CI=") && !strings.HasPrefix(kv, "TERM=") {
			env = append(env, kv)
		}
	}
	env = append(env, "TERM=xterm-256color")
	t.Run("top", func(t *testing.T) {
		t.Parallel()
		db := pgtest.NewDB(t)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second) // a hang check
		defer cancel()
		cmd := exec.CommandContext(ctx, script, "-qec", "'"+bin+"' top --db "+db, "/dev/null")
		cmd.Env = env
		cmd.WaitDelay = time.Second
		keys, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		var out syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The screen is drawn with nobody answering: then q quits.
		pgtest.Eventually(t, "top's screen", func() (bool, error) {
			if ctx.Err() != nil {
				return false, fmt.Errorf("%w: %q", ctx.Err(), out.String())
			}
			return strings.Contains(out.String(), "(no session to show)"), nil
		})
		if _, err := keys.Write([]byte("q")); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("pgreap top: %v: %q", err, out.String())
		}
		if q := waitedQuery.FindString(out.String()); q != "" {
			t.Errorf("pgreap top wrote %q to the terminal: %q", q, out.String())
		}
	})
	for _, args := range []string{"version", "ls --help"} {
		t.Run(args, func(t *testing.T) {
			t.Parallel()
			// The query written to the terminal is the failure (it is
			// written before the wait for an answer); the deadline only
			// stops a hang.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, script, "-qec", "'"+bin+"' "+args, "/dev/null")
			cmd.Env = env
			cmd.WaitDelay = time.Second
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			if q := termQuery.Find(out.Bytes()); q != nil {
				t.Errorf("pgreap %s wrote %q to the terminal: %q", args, q, out.Bytes())
			}
			if ctx.Err() != nil {
				t.Fatalf("pgreap %s did not end within 30 s on a terminal that does not answer: %q", args, out.Bytes())
			}
			if err != nil {
				t.Fatalf("pgreap %s: %v: %q", args, err, out.Bytes())
			}
			if !strings.Contains(out.String(), "pgreap") {
				t.Fatalf("pgreap %s wrote %q", args, out.Bytes())
			}
		})
	}
}

// syncBuffer is a buffer a command writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
