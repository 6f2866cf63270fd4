package cli_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// A release build says the version, commit and date that the Makefile's
// LDFLAGS set.
func TestVersionFromBuildFlags(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "pgreap")
	// The Makefile's own flags, so that a wrong package path there fails.
	flags, err := exec.Command("make", "-s", "-C", "../..", "ldflags",
		"VERSION=v1.2.3", "COMMIT=0123456789abcdef", "DATE=2026-11-26T10:00:00Z").Output()
	if err != nil {
		t.Fatalf("make ldflags: %v", err)
	}
	build := exec.Command("go", "build", "-o", bin, "-ldflags", strings.TrimSpace(string(flags)),
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
