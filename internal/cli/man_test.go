package cli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgreap/pgreap/internal/cli"
)

// make man: a page per command, with its examples; the date from
// SOURCE_DATE_EPOCH.
func TestManPages(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1795600000") // 2026-11-24
	dir := t.TempDir()
	if err := cli.WriteManPages(dir); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"", "-ls", "-cancel", "-terminate", "-apply", "-kick", "-drain", "-undrain", "-unblock", "-watch", "-top", "-demo", "-version", "-completion"} {
		b, err := os.ReadFile(filepath.Join(dir, "pgreap"+c+".1"))
		if err != nil {
			t.Fatal(err)
		}
		page := string(b)
		if !strings.Contains(page, `.TH "PGREAP" "1" "Nov 2026" "pgreap `) || !strings.Contains(page, ".SH NAME") {
			t.Fatalf("pgreap%s.1:\n%s", c, page)
		}
		if c != "" && c != "-completion" && c != "-version" && !strings.Contains(page, ".SH EXAMPLE") {
			t.Errorf("pgreap%s.1 has no examples", c)
		}
	}
	top, _ := os.ReadFile(filepath.Join(dir, "pgreap-top.1"))
	if !strings.Contains(string(top), "pgreap top --read-only --exclude-user replicator") {
		t.Fatalf("pgreap-top.1 does not have top's examples:\n%s", top)
	}
}

// docs/commands is what make docs writes from the commands' help: it is
// never out of date.
func TestDocsCommandsUpToDate(t *testing.T) {
	dir := t.TempDir()
	if err := cli.WriteMarkdown(dir); err != nil {
		t.Fatal(err)
	}
	want, _ := filepath.Glob(filepath.Join(dir, "*.md"))
	have, _ := filepath.Glob("../../docs/commands/*.md")
	if len(want) != len(have) {
		t.Fatalf("docs/commands has %d pages, the commands %d: run make docs", len(have), len(want))
	}
	for _, w := range want {
		got, err := os.ReadFile(filepath.Join("../../docs/commands", filepath.Base(w)))
		if err != nil {
			t.Fatalf("%v: run make docs", err)
		}
		if b, _ := os.ReadFile(w); string(b) != string(got) {
			t.Errorf("docs/commands/%s is out of date: run make docs", filepath.Base(w))
		}
	}
}
