package cluster

import (
	"os"
	"path/filepath"
	"testing"
)

// fakeBin makes dir/initdb, pg_ctl and postgres (empty files: Find only
// looks for them).
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

func TestFindOrder(t *testing.T) {
	root := t.TempDir()
	t.Setenv("PATH", t.TempDir()) // nothing on PATH
	deb := filepath.Join(root, "usr/lib/postgresql")
	fakeBin(t, filepath.Join(deb, "9.6/bin"))
	fakeBin(t, filepath.Join(deb, "16/bin"))
	newest := fakeBin(t, filepath.Join(deb, "17/bin"))
	if err := os.MkdirAll(filepath.Join(deb, "18/bin"), 0o755); err != nil { // no binaries in it
		t.Fatal(err)
	}
	given := fakeBin(t, filepath.Join(root, "given"))
	env := fakeBin(t, filepath.Join(root, "env"))
	globs := []string{filepath.Join(deb, "*/bin")}
	cache := filepath.Join(root, "cache")
	fakeBin(t, filepath.Join(cache, "12/bin"))
	cached := fakeBin(t, filepath.Join(cache, "16/bin"))
	tests := []struct {
		name string
		s    Search
		want string
		err  bool
	}{
		{"newest major with binaries", Search{Path: true, Globs: globs}, newest, false},
		{"the environment first", Search{Env: env, Path: true, Globs: globs}, env, false},
		{"the flag before all", Search{Dir: given, Env: env, Globs: globs}, given, false},
		{"a flag without binaries fails", Search{Dir: root, Globs: globs}, "", true},
		{"nothing", Search{Path: true}, "", true},
		{"the cache: its newest major", Search{Path: true, Cache: cache}, cached, false},
		{"packages before the cache", Search{Path: true, Globs: globs, Cache: cache}, newest, false},
		{"an empty cache", Search{Path: true, Cache: filepath.Join(root, "given")}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Find(tt.s)
			if got != tt.want || (err != nil) != tt.err {
				t.Fatalf("Find = %q, %v; want %q (error %v)", got, err, tt.want, tt.err)
			}
		})
	}
	// A relative directory is made absolute: the binaries run in the
	// cluster's directory.
	t.Chdir(root)
	if got, err := Find(Search{Dir: "given"}); got != given || err != nil {
		t.Fatalf("relative: %q, %v", got, err)
	}
	// initdb linked onto PATH: the directory it points into, before the
	// globs.
	onPath := t.TempDir()
	onPathBin := fakeBin(t, filepath.Join(root, "opt/pg/bin"))
	if err := os.Symlink(filepath.Join(onPathBin, "initdb"), filepath.Join(onPath, "initdb")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", onPath)
	if got, err := Find(Search{Path: true, Globs: globs}); got != onPathBin || err != nil {
		t.Fatalf("through a link on PATH: %q, %v; want %q before the globs", got, err, onPathBin)
	}
}
