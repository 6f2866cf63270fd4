package noprobe_test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	_ "github.com/pgreap/pgreap/internal/tui" // bubbletea's init, then Restore
)

// TERM is dumb for bubbletea's init only: the program sees the TERM it was
// started with (top's colours depend on it), and none when it had none.
func TestTermRestored(t *testing.T) {
	if os.Getenv("PGREAP_TEST_PRINT_TERM") != "" {
		term, ok := os.LookupEnv("TERM")
		fmt.Printf("%q %v\n", term, ok)
		return
	}
	t.Parallel()
	for _, tt := range []struct{ env, want string }{
		{"TERM=xterm-256color", `"xterm-256color" true`},
		{"TERM=", `"" true`},
		{"", `"" false`},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestTermRestored$")
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "TERM=") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, "PGREAP_TEST_PRINT_TERM=1")
		if tt.env != "" {
			cmd.Env = append(cmd.Env, tt.env)
		}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if got, _, _ := strings.Cut(string(out), "\n"); got != tt.want {
			t.Errorf("started with %q, the program saw TERM %s, want %s", tt.env, got, tt.want)
		}
	}
}
