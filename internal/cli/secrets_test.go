package cli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A connection string that pgreap refuses is never printed with its
// password, whichever shape it has (docs/security.md).
func TestErrorsHideThePassword(t *testing.T) {
	t.Parallel()
	for _, dsn := range []string{
		"postgres://u:secret@h:5x/db",
		"postgresql://u:s%65cret@[::1/db",
		"password='a secret' port=5x",
		`password=a\ secret port=5x`,
		"password=secret connect_timeout=secret",
		"password=secret options='-c statement_timeout=secret'",
	} {
		r := run(t, false, "ls", "-d", dsn)
		if r.code != 2 || strings.Count(r.errOut, "\n") != 1 || strings.Contains(r.errOut, "secret") || strings.Contains(r.errOut, "s%65cret") {
			t.Errorf("ls -d %q: exit %d, stderr %q; want exit 2 and one line without the password", dsn, r.code, r.errOut)
		}
	}
}

// watch --check refuses the DSN the daemon would refuse (it said ok, then
// watch exited 2), with FILE:LINE and without the password.
func TestWatchCheckRefusesWhatWatchRefuses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, dsn := range []string{
		`host=/tmp password=secret connect_timeout=soon`,
		`password=a\ secret port=5x`,
		`postgres://u:secret@h:5x/db`,
	} {
		path := filepath.Join(dir, "policy.yaml")
		writePolicy(t, path, strings.Replace(strings.Replace(watchPolicy, `"DSN"`, "'"+strings.ReplaceAll(dsn, "'", "''")+"'", 1), "audit_log: AUDIT\n", "", 1))
		for _, args := range [][]string{{"watch", "-c", path, "--check"}, {"watch", "-c", path}} {
			r := run(t, false, args...)
			if r.code != 2 || !strings.HasPrefix(r.errOut, "pgreap: "+path+":1: target ") || strings.Count(r.errOut, "\n") != 1 ||
				strings.Contains(r.errOut, "secret") || r.out != "" {
				t.Errorf("%q, %v: exit %d, stdout %q, stderr %q; want exit 2 and %s:1 without the password", dsn, args, r.code, r.out, r.errOut, path)
			}
		}
	}
}

// watch --check refuses an audit log the daemon would refuse (a symbolic
// link planted where it goes), and takes one not there yet.
func TestWatchCheckRefusesAnAuditLogTheDaemonWould(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	audit := filepath.Join(dir, "audit.jsonl")
	writePolicy(t, path, strings.Replace(strings.Replace(watchPolicy, `"DSN"`, `"host=/tmp"`, 1), "AUDIT", audit, 1))
	run(t, false, "watch", "-c", path, "--check").wantCode(t, 0)
	if err := os.Symlink(filepath.Join(dir, "elsewhere"), audit); err != nil {
		t.Fatal(err)
	}
	r := run(t, false, "watch", "-c", path, "--check")
	r.wantCode(t, 2)
	if !strings.Contains(r.errOut, "audit_log: ") || !strings.Contains(r.errOut, "symbolic link") || strings.Count(r.errOut, "\n") != 1 {
		t.Fatalf("stderr %q", r.errOut)
	}
}
