package cli

import (
	"context"
	"strings"
	"testing"

	"github.com/pgreap/pgreap/internal/cluster"
)

// Without server binaries anywhere, demo says how to install them, on
// one line, exit 2, and starts nothing.
func TestDemoWithoutBinaries(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no initdb, no pg_config
	streams, out, errOut := Test()
	err := demoRun(context.Background(), &DemoOptions{IO: streams, Getenv: func(string) string { return "" }, Globs: []string{t.TempDir() + "/*/bin"}})
	if ExitCode(err) != ExitUsage {
		t.Fatalf("exit %d (%v)", ExitCode(err), err)
	}
	msg := Message(err)
	if msg != cluster.ErrNoBinaries.Error() || strings.Contains(msg, "\n") || out.Len()+errOut.Len() != 0 {
		t.Fatalf("message %q, output %q %q", msg, out, errOut)
	}
	for _, want := range []string{"apt-get install postgresql", "dnf install postgresql-server", "brew install postgresql", "--pg-bin"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the message does not say %q: %s", want, msg)
		}
	}
}
