package policy_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgreap/pgreap/internal/notify"
	"github.com/pgreap/pgreap/internal/policy"
)

const withNotify = good + `notify:
  - webhook: https://hooks.example/services/T0/B0/url-secret
    format: slack
    on: [acted, error]
  - name: pager
    webhook: "http://user:pw-secret@pager.example:8080/in?token=q-secret"
    headers:
      Authorization: "Bearer ${PGREAP_TEST_TOKEN}"
      X-Static: literal-secret
    headers_file: HEADERS
`

// A notify block: each webhook named by its name: or its host, on: all
// events by default, JSON by default; header values from the environment
// and from a headers_file; --check's summary names the headers, never
// their values nor the URL.
func TestNotify(t *testing.T) {
	t.Setenv("PGREAP_TEST_TOKEN", "env-secret")
	dir := t.TempDir()
	headers := filepath.Join(dir, "headers")
	if err := os.WriteFile(headers, []byte("# comment\n\nX-Api-Key:  file-secret \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "p.yaml")
	p, err := policy.Parse(path, []byte(strings.Replace(withNotify, "HEADERS", "headers", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Notify) != 2 {
		t.Fatalf("notify %+v", p.Notify)
	}
	slack, pager := p.Notify[0], p.Notify[1]
	if slack.Name != "hooks.example" || slack.Format != notify.Slack || len(slack.On) != 2 || !slack.Wants(notify.Error) || slack.Wants(notify.Leader) {
		t.Fatalf("slack sink %+v", slack)
	}
	if pager.Name != "pager" || pager.Format != notify.JSON || len(pager.On) != 4 ||
		pager.Header.Get("Authorization") != "Bearer env-secret" || pager.Header.Get("X-Static") != "literal-secret" || pager.Header.Get("X-Api-Key") != "file-secret" {
		t.Fatalf("pager sink %+v", pager)
	}
	var out bytes.Buffer
	p.Summary(&out)
	for _, want := range []string{"notify hooks.example: slack on acted error, headers -\n", "notify pager: json on acted suppressed leader error, headers Authorization X-Api-Key X-Static\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "secret") {
		t.Fatalf("the summary holds a secret:\n%s", out.String())
	}
}

func TestNotifyBad(t *testing.T) {
	t.Setenv("PGREAP_TEST_TOKEN", "env-secret")
	dir := t.TempDir()
	own := filepath.Join(dir, "headers")
	if err := os.WriteFile(own, []byte("X-Api-Key: file-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	shared := filepath.Join(dir, "shared")
	if err := os.WriteFile(shared, []byte("X-Api-Key: file-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o666); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(own, link); err != nil {
		t.Fatal(err)
	}
	malformed := filepath.Join(dir, "malformed")
	if err := os.WriteFile(malformed, []byte("X-Ok: 1\nfile-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	grouped := filepath.Join(dir, "grouped")
	if err := os.WriteFile(grouped, []byte("X-Api-Key: file-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(grouped, 0o640); err != nil {
		t.Fatal(err)
	}
	linked := filepath.Join(dir, "linked")
	if err := os.WriteFile(linked, []byte("X-Api-Key: file-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(linked, filepath.Join(dir, "linked2")); err != nil {
		t.Fatal(err)
	}
	cr := filepath.Join(dir, "cr")
	if err := os.WriteFile(cr, []byte("X-Evil: file\rsecret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := strings.Replace(withNotify, "HEADERS", own, 1)
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown key", strings.Replace(base, "    format: slack\n", "    fromat: slack\n", 1), "p.yaml:24: unknown key \"fromat\" (known here: name, webhook, headers, headers_file, on, format)"},
		{"bad scheme", strings.Replace(base, "https://hooks.example", "ftp://hooks.example", 1), "p.yaml:23: notify: webhook: not an http:// or https:// URL"},
		{"not a URL", strings.Replace(base, "https://hooks.example/services", "https://hooks example/%zz", 1), "p.yaml:23: notify: webhook: not a URL"},
		{"no host", strings.Replace(base, "https://hooks.example/services/T0/B0/url-secret", "https:///url-secret", 1), "p.yaml:23: notify: webhook: no host"},
		{"no webhook", strings.Replace(base, "  - webhook: https://hooks.example/services/T0/B0/url-secret\n    format", "  - format", 1), "p.yaml:23: notify: a webhook needs its URL"},
		{"unknown on", strings.Replace(base, "on: [acted, error]", "on: [acted, errors]", 1), "p.yaml:25: notify: on \"errors\": not one of acted, suppressed, leader, error"},
		{"empty on", strings.Replace(base, "on: [acted, error]", "on: []", 1), "p.yaml:25: notify: on is empty"},
		{"unknown format", strings.Replace(base, "format: slack", "format: teams", 1), "p.yaml:24: notify: format \"teams\": not json or slack"},
		{"unset variable", strings.Replace(base, "${PGREAP_TEST_TOKEN}", "${PGREAP_TEST_UNSET}", 1), "p.yaml:29: notify: header Authorization: environment variable PGREAP_TEST_UNSET is not set"},
		{"bad header name", strings.Replace(base, "X-Static:", "\"X Static\":", 1), "p.yaml:30: notify: header \"X Static\": not a header name"},
		{"headers_file missing", strings.Replace(base, own, filepath.Join(dir, "none"), 1), "p.yaml:31: notify: headers_file " + filepath.Join(dir, "none") + ": no such file or directory"},
		{"headers_file writable by others", strings.Replace(base, own, shared, 1), "p.yaml:31: notify: headers_file: " + shared + " is writable by its group or others"},
		{"headers_file readable by its group", strings.Replace(base, own, grouped, 1), "p.yaml:31: notify: headers_file: " + grouped + " is open to its group or others (mode 0640; chmod 600 it)"},
		{"headers_file with two names", strings.Replace(base, own, linked, 1), "p.yaml:31: notify: headers_file: " + linked + " has 2 names (hard links)"},
		{"headers_file with a CR", strings.Replace(base, own, cr, 1), "p.yaml:31: notify: headers_file " + cr + ": line 1: header X-Evil: the value holds a line break or NUL"},
		{"port out of range", strings.Replace(base, "https://hooks.example/", "https://hooks.example:99999/", 1), "p.yaml:23: notify: webhook: the port is not 1 to 65535"},
		{"headers_file a link", strings.Replace(base, own, link, 1), "p.yaml:31: notify: headers_file: " + link + " is a symbolic link"},
		{"headers_file malformed", strings.Replace(base, own, malformed, 1), "p.yaml:31: notify: headers_file " + malformed + ": line 2: not Name: value"},
		{"same name", strings.Replace(base, "name: pager", "name: hooks.example", 1), "p.yaml:26: notify: two webhooks named hooks.example (first at line 23)"},
		{"bad name", strings.Replace(base, "name: pager", "name: \"pa ger\"", 1), "p.yaml:26: notify: name \"pa ger\""},
		{"not a list", strings.Replace(base, "on: [acted, error]", "on: acted", 1), "p.yaml:25: cannot unmarshal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := policy.Parse(filepath.Join(dir, "p.yaml"), []byte(tt.yaml))
			want := filepath.Join(dir, "p.yaml") + strings.TrimPrefix(tt.want, "p.yaml")
			if err == nil || !strings.HasPrefix(err.Error(), want) || strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "secret") {
				t.Fatalf("err = %v\nwant one line starting %q, without a secret", err, want)
			}
		})
	}
}

// LoadOffline (watch --test) resolves no secret: an unset ${NAME} and a
// headers_file that is not there are not errors, and no header value is
// kept; what is not a secret is checked as Load checks it.
func TestNotifyOffline(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "p.yaml")
	text := strings.Replace(strings.Replace(withNotify, "HEADERS", filepath.Join(dir, "none"), 1), "${PGREAP_TEST_TOKEN}", "${PGREAP_TEST_UNSET}", 1)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := policy.Load(path); err == nil || !strings.Contains(err.Error(), "none: no such file or directory") {
		t.Fatalf("Load: %v, want the missing headers_file refused", err)
	}
	p, err := policy.LoadOffline(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Notify) != 2 || p.Notify[1].Name != "pager" || len(p.Notify[1].Header) != 0 {
		t.Fatalf("notify %+v", p.Notify)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(text, "X-Static:", "\"X Static\":", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := policy.LoadOffline(path); err == nil || !strings.HasSuffix(err.Error(), "p.yaml:30: notify: header \"X Static\": not a header name") {
		t.Fatalf("LoadOffline of a bad header name: %v", err)
	}
}
