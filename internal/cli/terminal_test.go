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

// termQuery is what a program writes to ask the terminal of its
// background colour (OSC 11) or of the cursor position (DSR 6).
var termQuery = regexp.MustCompile(`\x1b\]11;\?|\x1b\[6n`)

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
			// A hang check, not a timing: the query waits 5 s for an
			// answer; without one, the command takes milliseconds, and
			// 4 s leaves a loaded machine room.
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
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
				t.Fatalf("pgreap %s did not end within 4 s on a terminal that does not answer: %q", args, out.Bytes())
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
