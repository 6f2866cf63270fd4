package cli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// watch --check refuses a bad notify block with FILE:LINE (exit 2, one
// line), and its summary of a good one holds no secret: not the URL's
// token, nor a header's value from the policy, the environment or a
// headers_file.
func TestWatchCheckNotify(t *testing.T) {
	t.Setenv("PGREAP_TEST_NOTIFY", "env-secret")
	dir := t.TempDir()
	headers := filepath.Join(dir, "headers")
	if err := os.WriteFile(headers, []byte("X-Api-Key: file-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(watchPolicy, "audit_log: AUDIT\n", "", 1) + `notify:
  - webhook: "https://user:pw-secret@hooks.example/T0/url-secret?q=query-secret"
    headers: {Authorization: "Bearer ${PGREAP_TEST_NOTIFY}", X-Literal: literal-secret}
    headers_file: HEADERS
    on: [acted, error]
`
	text = strings.Replace(text, "HEADERS", headers, 1)
	good := filepath.Join(dir, "good.yaml")
	writePolicy(t, good, text)
	r := run(t, false, "watch", "-c", good, "--check")
	r.wantCode(t, 0)
	if !strings.Contains(r.out, "notify hooks.example: json on acted error, headers Authorization X-Api-Key X-Literal\n") {
		t.Fatalf("--check:\n%s", r.out)
	}
	if strings.Contains(r.out+r.errOut, "secret") {
		t.Fatalf("--check prints a secret:\n%s%s", r.out, r.errOut)
	}
	for _, tt := range []struct{ from, to, want string }{
		{"on: [acted, error]", "on: [acted, eror]", ":12: notify: on \"eror\": not one of acted, suppressed, leader, error"},
		{"on: [acted, error]", "on: [acted]\n    fromat: slack", ":13: unknown key \"fromat\""},
		{"https://user", "file://user", ":9: notify: webhook: not an http:// or https:// URL"},
		{"${PGREAP_TEST_NOTIFY}", "${PGREAP_TEST_NOTIFY_UNSET}", ":10: notify: header Authorization: environment variable PGREAP_TEST_NOTIFY_UNSET is not set"},
	} {
		bad := filepath.Join(dir, "bad.yaml")
		writePolicy(t, bad, strings.Replace(text, tt.from, tt.to, 1))
		r := run(t, false, "watch", "-c", bad, "--check")
		if r.code != 2 || !strings.HasPrefix(r.errOut, "pgreap: "+bad+tt.want) || strings.Count(r.errOut, "\n") != 1 || strings.Contains(r.errOut, "secret") {
			t.Errorf("%s: exit %d, stderr %q; want exit 2 and one line %q", tt.to, r.code, r.errOut, bad+tt.want)
		}
	}
}

// watch --test tells no webhook, so it needs none of their secrets: a
// header from an unset variable and a headers_file that is not there
// (a CI job has neither) do not stop it; --check still refuses them.
func TestWatchTestWithoutSecrets(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	text := strings.Replace(watchPolicy, "audit_log: AUDIT\n", "", 1) + `notify:
  - webhook: https://hooks.example/T0
    headers: {Authorization: "Bearer ${PGREAP_TEST_NOTIFY_UNSET}"}
    headers_file: ` + filepath.Join(dir, "none.headers") + "\n"
	pol := filepath.Join(dir, "policy.yaml")
	writePolicy(t, pol, text)
	snap := filepath.Join(dir, "snap.json")
	if err := os.WriteFile(snap, []byte(`{"taken_at": "2026-01-01T00:10:00Z", "sessions": [{"pid": 7, "application_name": "x", "backend_type": "client backend", "state": "active", "backend_start": "2026-01-01T00:00:00Z", "query_start": "2026-01-01T00:00:00Z", "query": "SELECT pg_sleep(1)"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	r := run(t, false, "watch", "-c", pol, "--test", snap)
	r.wantCode(t, 0)
	if !strings.Contains(r.out, "PID  APP  RULE  ACTION  WHEN  OUTCOME\n7    x    -     -       -     no rule\n") || r.errOut != "" {
		t.Fatalf("--test: stdout\n%s\nstderr\n%s", r.out, r.errOut)
	}
	r = run(t, false, "watch", "-c", pol, "--check")
	if r.code != 2 || !strings.Contains(r.errOut, pol+":11: notify: headers_file "+filepath.Join(dir, "none.headers")+": no such file or directory") {
		t.Fatalf("--check: exit %d, stderr %q", r.code, r.errOut)
	}
}
