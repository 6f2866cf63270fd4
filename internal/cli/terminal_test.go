package cli_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// termQuery is what a program writes to ask the terminal something and
// wait for the answer: its colours (OSC 10, 11, 12), the cursor position
// (DSR 6), its attributes or version (DA1, DA2, XTVERSION), a mode
// (DECRQM) or the keyboard protocol (kitty).
var termQuery = regexp.MustCompile(`\x1b\]1[0-2];\?|\x1b\[\??6n|\x1b\[[>=]?0?c|\x1b\[>0?q|\x1b\[\??[0-9]+\$p|\x1b\[\?u`)

// Commands other than top write nothing to the terminal but their output
// and never wait for it: on a pseudo-terminal nobody answers (script(1)
// relays what the command writes and answers nothing), bubbletea v1's
// init asked for the background colour and every command stalled 5 s.
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
