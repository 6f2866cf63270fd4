package cli_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// A release build says the version, commit and date its flags set (the
// Makefile's LDFLAGS).
func TestVersionFromBuildFlags(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "pgreap")
	const pkg = "github.com/pgreap/pgreap/internal/cli"
	build := exec.Command("go", "build", "-o", bin, "-ldflags",
		"-X "+pkg+".buildVersion=v1.2.3 -X "+pkg+".buildCommit=0123456789abcdef -X "+pkg+".buildDate=2026-11-26T10:00:00Z",
		"github.com/pgreap/pgreap/cmd/pgreap")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	want := "pgreap v1.2.3\ncommit 0123456789abcdef\nbuilt 2026-11-26T10:00:00Z\n" + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + "\n"
	if string(out) != want {
		t.Fatalf("got\n%s\nwant\n%s", out, want)
	}
}
