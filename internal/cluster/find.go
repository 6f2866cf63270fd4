package cluster

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Search says where Find looks for server binaries, in order.
type Search struct {
	// Dir is given by the user (--pg-bin): it is used, or Find fails.
	Dir string
	// Env is the value of the environment variable that names one
	// (PGREAP_PGBIN), used the same way.
	Env string
	// Path: the directory of initdb on $PATH; pg_config --bindir.
	Path bool
	// Globs of directories, each tried newest major version first.
	Globs []string
	// Cache is the directory scripts/pg-fetch fills (CacheDir): its
	// MAJOR/bin directories are tried last, newest first.
	Cache string
}

// SystemGlobs are where packages put server binaries: Debian and Ubuntu,
// the PGDG RPMs (Fedora, RHEL), Homebrew on Apple silicon and on Intel.
var SystemGlobs = []string{
	"/usr/lib/postgresql/*/bin",
	"/usr/pgsql-*/bin",
	"/opt/homebrew/opt/postgresql@*/bin",
	"/usr/local/opt/postgresql@*/bin",
	"/opt/homebrew/opt/postgresql/bin",
	"/usr/local/opt/postgresql/bin",
}

// ErrNoBinaries: no directory with initdb, pg_ctl and postgres was found.
// Its text says how to install them, on one line.
var ErrNoBinaries = errors.New("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found: " +
	"install them (Debian/Ubuntu: sudo apt-get install postgresql; " +
	"Fedora/RHEL: sudo dnf install postgresql-server; macOS: brew install postgresql@17) " +
	"or name their directory with --pg-bin DIR or PGREAP_PGBIN")

// Find finds a directory of server binaries as s says.
func Find(s Search) (string, error) {
	if s.Dir != "" {
		return CheckBinDir(s.Dir)
	}
	if s.Env != "" {
		return CheckBinDir(s.Env)
	}
	if s.Path {
		if initdb, err := exec.LookPath("initdb"); err == nil {
			// A link on PATH (/usr/local/bin/initdb): the directory it
			// points into has pg_ctl and postgres too.
			if real, err := filepath.EvalSymlinks(initdb); err == nil {
				initdb = real
			}
			if dir, err := CheckBinDir(filepath.Dir(initdb)); err == nil {
				return dir, nil
			}
		}
		if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
			if dir, err := CheckBinDir(strings.TrimSpace(string(out))); err == nil {
				return dir, nil
			}
		}
	}
	globs := s.Globs
	if s.Cache != "" {
		globs = append(globs[:len(globs):len(globs)], filepath.Join(globQuote(s.Cache), "*", "bin"))
	}
	for _, g := range globs {
		dirs, _ := filepath.Glob(g)
		// The newest major version first: 17 before 9.6, 17 before 16.
		sort.SliceStable(dirs, func(i, j int) bool { return majorOf(dirs[i]) > majorOf(dirs[j]) })
		for _, d := range dirs {
			if dir, err := CheckBinDir(d); err == nil {
				return dir, nil
			}
		}
	}
	return "", ErrNoBinaries
}

// CacheDir is where scripts/pg-fetch keeps server binaries, one MAJOR/bin
// per major version: $PGREAP_PG_CACHE, else /var/cache/pgreap/pg for root
// (readable by the unprivileged user that runs the servers), else
// ~/.cache/pgreap/pg. The tests take them from there, and so does the demo.
func CacheDir() string {
	if d := os.Getenv("PGREAP_PG_CACHE"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/cache/pgreap/pg"
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "pgreap", "pg")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "pgreap", "pg")
}

// globQuote makes dir match itself in a glob, whatever it holds.
func globQuote(dir string) string {
	var b strings.Builder
	for _, r := range dir {
		if strings.ContainsRune(`*?[\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// majorOf reads the major version in a path such as
// /usr/lib/postgresql/17/bin or /usr/pgsql-16/bin (0 when there is none).
func majorOf(dir string) float64 {
	parts := strings.FieldsFunc(dir, func(r rune) bool { return r == '/' || r == '-' || r == '@' })
	for i := len(parts) - 1; i >= 0; i-- { // the last number: the version
		if v, err := strconv.ParseFloat(parts[i], 64); err == nil {
			return v
		}
	}
	return 0
}
