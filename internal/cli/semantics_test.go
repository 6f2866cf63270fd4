package cli_test

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/cli"
)

// docExample is one example of docs/watch.md's rule semantics: the files
// its fenced blocks name (```yaml policy.yaml), and its console block's
// command and output.
type docExample struct {
	where string
	files map[string]string
	cmd   string
	want  string
}

// semanticsExamples reads the examples of a section of docs/watch.md: an
// example starts at each ### heading; a fenced block whose info string
// names a file after the language is that file (until a later block names
// it again); a console block is the command ($ pgreap ...) and what it
// prints.
func semanticsExamples(t *testing.T, section string) []docExample {
	t.Helper()
	f, err := os.Open("../../docs/watch.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []docExample
	in, fence, name, heading := false, "", "", ""
	var body []string
	files := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case fence == "" && strings.HasPrefix(line, "## "):
			in = line == "## "+section
		case !in:
		case fence == "" && strings.HasPrefix(line, "### "):
			heading = strings.TrimPrefix(line, "### ")
		case fence == "" && strings.HasPrefix(line, "```"):
			words := strings.Fields(strings.TrimPrefix(line, "```"))
			fence, name, body = "?", "", nil
			if len(words) > 0 {
				fence = words[0]
			}
			if len(words) > 1 {
				name = words[1]
			}
		case fence != "" && line == "```":
			switch {
			case name != "":
				files[name] = strings.Join(body, "\n") + "\n"
			case fence == "console" && len(body) > 0 && strings.HasPrefix(body[0], "$ pgreap "):
				copied := map[string]string{}
				for k, v := range files {
					copied[k] = v
				}
				out = append(out, docExample{where: heading, files: copied, cmd: strings.TrimPrefix(body[0], "$ "),
					want: strings.Join(body[1:], "\n") + "\n"})
			}
			fence = ""
		case fence != "":
			body = append(body, line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// Every example of docs/watch.md's rule semantics prints, with --test,
// exactly what the docs show: the docs say what the daemon's code does.
func TestRuleSemanticsExamples(t *testing.T) {
	t.Parallel()
	examples := semanticsExamples(t, "Rule semantics")
	if len(examples) < 5 {
		t.Fatalf("%d examples found in docs/watch.md's Rule semantics, want 5: is the extraction broken?", len(examples))
	}
	for _, ex := range examples {
		t.Run(ex.where, func(t *testing.T) {
			dir := t.TempDir()
			for name, text := range ex.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			args := shellWords(t, ex.cmd)[1:]
			for i, a := range args {
				if _, ok := ex.files[a]; ok {
					args[i] = filepath.Join(dir, a)
				}
			}
			streams, out, errOut := cli.Test()
			if code := cli.Run(t.Context(), args, streams); code != 0 {
				t.Fatalf("%s: exit %d: %s", ex.cmd, code, errOut.String())
			}
			if got := strings.ReplaceAll(out.String(), dir+"/", ""); got != ex.want {
				t.Errorf("%s prints:\n%s\nthe docs show:\n%s", ex.cmd, got, ex.want)
			}
		})
	}
}

// --test refuses, in one line and exit 2 with nothing on standard output,
// a file that is no snapshot, one that is missing, and files without
// --test; a plain array (ls -o json as it is) is taken at the file's
// modification time.
func TestWatchTestInput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pol := write("policy.yaml", `targets: [{name: main, dsn: "host=db1"}]
rules:
  - name: slow
    match: {state: [active], longer_than: 5m}
    action: cancel
`)
	good := write("ls.json", `[
{"pid":7,"leader_pid":null,"datname":"app","usename":"alice","application_name":"x","client_addr":null,"backend_type":"client backend","state":"active","backend_start":"2026-01-01T00:00:00Z","xact_start":null,"query_start":"2026-01-01T00:00:00Z","state_change":"2026-01-01T00:00:00Z","wait_event_type":null,"wait_event":null,"query":"SELECT 1","blocked_by":[],"blocked_by_prepared":[]}
]`)
	// Sparse: a size past the limit costs no disk.
	huge := write("huge.json", "[")
	if err := os.Truncate(huge, 256<<20+1); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2026, 1, 1, 0, 10, 0, 0, time.UTC)
	if err := os.Chtimes(good, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		err  string
	}{
		{"not JSON", []string{"--test", write("bad.json", "[{")}, "pgreap: --test: " + dir + "/bad.json: not an ls -o json output: unexpected end of JSON input (at byte 2)"},
		{"an object without sessions", []string{"--test", write("obj.json", `{"taken_at": "2026-01-01T00:00:00Z"}`)}, `pgreap: --test: ` + dir + `/obj.json: no "sessions": want {"taken_at": ..., "sessions": [ls -o json rows]}`},
		{"two snapshots in one file", []string{"--test", write("two.json", `{"taken_at": "2026-01-01T00:00:00Z", "sessions": []} {"taken_at": "2026-01-01T00:00:00Z", "sessions": []}`)}, "pgreap: --test: " + dir + "/two.json: more after the snapshot (at byte 53): one snapshot per file"},
		{"taken_at zero", []string{"--test", write("zero.json", `{"taken_at": "0001-01-01T00:00:00Z", "sessions": []}`)}, "pgreap: --test: " + dir + "/zero.json: taken_at 0001-01-01T00:00:00Z: no time a snapshot was taken"},
		{"missing", []string{"--test", filepath.Join(dir, "none.json")}, "pgreap: --test: " + dir + "/none.json: no such file or directory"},
		{"a device", []string{"--test", "/dev/zero"}, "pgreap: --test: /dev/zero: not a regular file (a snapshot is an ls -o json output saved to a file)"},
		{"a good file, then a device", []string{"--test", good, "/dev/zero"}, "pgreap: --test: /dev/zero: not a regular file (a snapshot is an ls -o json output saved to a file)"},
		{"a directory", []string{"--test", dir}, "pgreap: --test: " + dir + ": not a regular file (a snapshot is an ls -o json output saved to a file)"},
		{"too large", []string{"--test", huge}, "pgreap: --test: " + huge + ": more than 256 MiB: not a snapshot"},
		{"pid 0", []string{"--test", write("pid0.json", `[{"pid": 0, "backend_start": "2026-01-01T00:00:00Z"}]`)}, "pgreap: --test: " + dir + "/pid0.json: session 1: pid 0: not a backend's (a pid is positive)"},
		{"a negative pid", []string{"--test", write("neg.json", `[{"pid": 5, "backend_start": "2026-01-01T00:00:00Z"}, {"pid": -5, "backend_start": "2026-01-01T00:00:00Z"}]`)}, "pgreap: --test: " + dir + "/neg.json: session 2: pid -5: not a backend's (a pid is positive)"},
		{"a pid twice", []string{"--test", write("twice.json", `{"taken_at": "2026-01-01T00:00:00Z", "sessions": [{"pid": 5, "backend_start": "2026-01-01T00:00:00Z"}, {"pid": 6, "backend_start": "2026-01-01T00:00:00Z"}, {"pid": 5, "backend_start": "2026-01-01T00:00:01Z"}]}`)}, "pgreap: --test: " + dir + "/twice.json: session 3: pid 5 is listed twice (first as session 1)"},
		{"no file", []string{"--test"}, "pgreap: watch --test needs snapshots: --test SNAPSHOT.json... (each an ls -o json output)"},
		{"files without --test", []string{good}, `pgreap: watch takes no arguments ("` + good + `"): did you mean --test ` + good + `?`},
	} {
		streams, out, errOut := cli.Test()
		code := cli.Run(t.Context(), append([]string{"watch", "-c", pol}, tc.args...), streams)
		if code != 2 || strings.TrimSpace(errOut.String()) != tc.err || out.Len() > 0 {
			t.Errorf("%s: exit %d, stderr %q, stdout %q; want exit 2, %q", tc.name, code, errOut.String(), out.String(), tc.err)
		}
	}
	streams, out, errOut := cli.Test()
	if code := cli.Run(t.Context(), []string{"watch", "-c", pol, "--test", good}, streams); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	want := dir + `/ls.json: taken 2026-01-01T00:10:00Z (the file's modification time)
PID  APP  RULE  ACTION  WHEN  OUTCOME
7    x    slow  cancel  now   acts
`
	if out.String() != want {
		t.Errorf("prints:\n%s\nwant:\n%s", out.String(), want)
	}
}
