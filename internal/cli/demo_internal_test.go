package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgreap/pgreap/internal/cluster"
)

// Without server binaries anywhere (its cache empty too), demo says how
// to install them, on one line, exit 2, and starts nothing.
func TestDemoWithoutBinaries(t *testing.T) {
	opts := noBinaries(t)
	out, errOut := opts.IO.Out.(*bytes.Buffer), opts.IO.ErrOut.(*bytes.Buffer)
	err := demoRun(context.Background(), opts)
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

// noBinaries makes the machine look bare to demo: nothing on PATH, no
// system directories, an empty cache.
func noBinaries(t *testing.T) *DemoOptions {
	t.Helper()
	t.Setenv("PATH", t.TempDir()) // no initdb, no pg_config
	streams, _, _ := Test()
	return &DemoOptions{IO: streams, Getenv: func(string) string { return "" }, Globs: []string{t.TempDir() + "/*/bin"}, Cache: t.TempDir(),
		FindPgBouncer: func() (string, error) { return "", cluster.ErrNoPgBouncer }}
}

// Without PgBouncer on the machine the demo runs without it and says, on
// one line, how to get it; with --no-pgbouncer it says nothing of it.
func TestDemoWithoutPgBouncer(t *testing.T) {
	for _, tc := range []struct {
		name string
		no   bool
		want string
	}{
		{name: "none found", want: "no PgBouncer on this machine: the shop's pool connects directly (to see pgreap with a pooler, install it: sudo apt-get install pgbouncer; dnf or brew install pgbouncer)\n"},
		{name: "--no-pgbouncer", no: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := noBinaries(t)
			opts.PGBin = fakeBin(t, t.TempDir())
			opts.NoPgBouncer = tc.no
			out := opts.IO.Out.(*bytes.Buffer)
			// The fake binaries do not start: the demo ends there.
			if err := demoRun(context.Background(), opts); err == nil {
				t.Fatal("the demo ran on fake binaries")
			}
			if want := tc.want + "starting a throwaway PostgreSQL from " + opts.PGBin + " ...\n"; !strings.HasPrefix(out.String(), want) {
				t.Fatalf("output:\n%s\nwant it to begin with:\n%s", out, want)
			}
		})
	}
}

// The cache scripts/pg-fetch fills (what make demo fetches on a bare
// machine) is where demo looks last: its newest major with binaries.
func TestDemoFindsTheCache(t *testing.T) {
	opts := noBinaries(t)
	if dir, err := opts.foundBinDir(); dir != "" || err != nil {
		t.Fatalf("an empty cache: %q, %v; want none found (make demo fetches them)", dir, err)
	}
	opts.Cache = filepath.Join(t.TempDir(), "a [cache]*") // a glob's characters in its name
	fakeBin(t, filepath.Join(opts.Cache, "12", "bin"))
	want := fakeBin(t, filepath.Join(opts.Cache, "16", "bin"))
	if err := os.MkdirAll(filepath.Join(opts.Cache, "18", "bin"), 0o755); err != nil { // fetch interrupted: no binaries
		t.Fatal(err)
	}
	if dir, err := opts.foundBinDir(); dir != want || err != nil {
		t.Fatalf("found %q, %v; want %q", dir, err, want)
	}
	// demo runs them (these, fakes, fail to start).
	out := opts.IO.Out.(*bytes.Buffer)
	if err := demoRun(context.Background(), opts); err == nil || !strings.Contains(out.String(), "starting a throwaway PostgreSQL from "+want+" ...") {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	// The command's default: the cache the tests use.
	t.Setenv("PGREAP_PG_CACHE", opts.Cache)
	if got := newDemoOptions(nil).Cache; got != opts.Cache {
		t.Fatalf("default cache %q, want %q", got, opts.Cache)
	}
}

// fakeBin makes dir/initdb, pg_ctl and postgres (empty files: the search
// only looks for them).
func fakeBin(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"initdb", "pg_ctl", "postgres"} {
		if err := os.WriteFile(filepath.Join(dir, b), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
