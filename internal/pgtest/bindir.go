package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pgreap/pgreap/internal/cluster"
)

// Superuser is the bootstrap superuser of every cluster pgtest starts.
const Superuser = cluster.Superuser

// Cluster is a throwaway PostgreSQL server (internal/cluster).
type Cluster = cluster.Cluster

// Options tune a cluster before it starts; BinDir and Prefix are pgtest's.
type Options = cluster.Options

// Start starts a cluster from the binaries FindBinDir finds, in a
// directory named pgreap-test-*.
func Start(ctx context.Context, opt Options) (*Cluster, error) {
	if opt.BinDir == "" {
		dir, err := FindBinDir()
		if err != nil {
			return nil, err
		}
		opt.BinDir = dir
	}
	if opt.Prefix == "" {
		opt.Prefix = "pgreap-test-"
	}
	return cluster.Start(ctx, opt)
}

// FindBinDir finds PostgreSQL server binaries: $PGREAP_TEST_PGBIN; else,
// with $PGREAP_TEST_PG=MAJOR, the cache that scripts/pg-fetch fills; else
// `pg_config --bindir`; else the newest /usr/lib/postgresql/*/bin.
func FindBinDir() (string, error) {
	if dir := os.Getenv("PGREAP_TEST_PGBIN"); dir != "" {
		d, err := cluster.CheckBinDir(dir)
		if err != nil {
			return "", fmt.Errorf("PGREAP_TEST_PGBIN=%w", err)
		}
		return d, nil
	}
	if major := os.Getenv("PGREAP_TEST_PG"); major != "" {
		dir := filepath.Join(cluster.CacheDir(), major, "bin")
		if _, err := os.Stat(filepath.Join(dir, "postgres")); err != nil {
			return "", fmt.Errorf("PGREAP_TEST_PG=%s: no server binaries in %s (run scripts/pg-fetch %s)", major, dir, major)
		}
		return dir, nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dir := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	best, bestMajor := "", 0
	for _, d := range dirs {
		m, err := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		if err != nil || m <= bestMajor {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			best, bestMajor = d, m
		}
	}
	if best == "" {
		return "", errors.New("no PostgreSQL server binaries: install postgresql (apt-get install -y postgresql), or set PGREAP_TEST_PGBIN, or PGREAP_TEST_PG=MAJOR after scripts/pg-fetch MAJOR")
	}
	return best, nil
}

// Own starts a cluster of the test's own (for what would disturb the
// package's: a crash, a restart, used-up connection slots), stopped and
// removed when the test ends.
func Own(t testing.TB, opt Options) *Cluster {
	t.Helper()
	c, err := Start(Context(t), opt)
	if err != nil {
		t.Fatalf("pgtest: own cluster: %v", err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	return c
}
