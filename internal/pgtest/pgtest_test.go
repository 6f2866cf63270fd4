package pgtest

import (
	"strings"
	"testing"
)

func TestFit(t *testing.T) {
	long := strings.Repeat("TestSomething/with_a_long_subtest_name_", 4)
	a, b := fit(long+"a", 63), fit(long+"b", 63)
	if len(a) != 63 || len(b) != 63 || a == b {
		t.Fatalf("fit must cut to 63 bytes and stay unique: %q %q", a, b)
	}
	if fit("short", 63) != "short" {
		t.Fatal("short names are kept")
	}
}

func TestFindBinDirFromEnv(t *testing.T) {
	t.Setenv("PGREAP_TEST_PGBIN", t.TempDir())
	if _, err := FindBinDir(); err == nil || !strings.Contains(err.Error(), "PGREAP_TEST_PGBIN") {
		t.Fatalf("an empty PGREAP_TEST_PGBIN must be refused, naming it: %v", err)
	}
	t.Setenv("PGREAP_TEST_PGBIN", "")
	t.Setenv("PGREAP_TEST_PG", "11")
	t.Setenv("PGREAP_PG_CACHE", t.TempDir())
	if _, err := FindBinDir(); err == nil || !strings.Contains(err.Error(), "scripts/pg-fetch 11") {
		t.Fatalf("a major not in the cache must say how to fetch it: %v", err)
	}
}
