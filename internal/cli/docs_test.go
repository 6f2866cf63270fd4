package cli_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgreap/pgreap/internal/cli"
)

// example is a pgreap command line shown in the docs.
type example struct {
	where string // file:line, or the command whose --help shows it
	line  string
}

// docExamples are the pgreap command lines of the README, docs/*.md and
// every command's --help examples: in ```sh blocks, lines that start with
// pgreap (after environment settings); in ```console blocks, lines that
// start with "$ pgreap".
func docExamples(t *testing.T) []example {
	t.Helper()
	files, _ := filepath.Glob("../../docs/*.md")
	files = append(files, "../../README.md", "../../deploy/README.md")
	var out []example
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		fence := ""
		sc := bufio.NewScanner(bytes.NewReader(b))
		for n := 1; sc.Scan(); n++ {
			line := strings.TrimSpace(sc.Text())
			switch {
			case strings.HasPrefix(line, "```") && fence == "":
				fence = strings.TrimPrefix(line, "```")
			case strings.HasPrefix(line, "```"):
				fence = ""
			case fence == "sh" || fence == "console":
				if fence == "console" {
					if !strings.HasPrefix(line, "$ ") {
						continue
					}
					line = strings.TrimPrefix(line, "$ ")
				}
				if cmd := pgreapCommand(line); cmd != "" {
					out = append(out, example{where: filepath.Base(file) + ":" + strconv.Itoa(n), line: cmd})
				}
			}
		}
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, l := range strings.Split(c.Example, "\n") {
			if cmd := pgreapCommand(strings.TrimSpace(l)); cmd != "" {
				out = append(out, example{where: c.CommandPath() + " --help", line: cmd})
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(cli.NewCmdRoot(&cli.Factory{IO: cli.System()}))
	return out
}

var envAssign = regexp.MustCompile(`^[A-Z_]+=\S*\s+`)

// pgreapCommand is the first pgreap command of a shell line: after
// environment settings, before a comment, a redirection or another
// command.
func pgreapCommand(line string) string {
	for envAssign.MatchString(line) {
		line = envAssign.ReplaceAllString(line, "")
	}
	if !strings.HasPrefix(line, "pgreap ") {
		return ""
	}
	for _, end := range []string{" # ", " > ", " && ", "; ", " | "} {
		if i := strings.Index(line, end); i >= 0 {
			line = line[:i]
		}
	}
	return strings.TrimSpace(line)
}

// shellWords splits a command line as sh would, for the quoting the docs
// use: single and double quotes, no expansions.
func shellWords(t *testing.T, line string) []string {
	t.Helper()
	var words []string
	var cur strings.Builder
	in, quote := false, rune(0)
	for _, r := range line {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '\'' || r == '"':
			quote, in = r, true
		case r == ' ' || r == '\t':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if quote != 0 {
		t.Fatalf("unbalanced quote in %q", line)
	}
	if in {
		words = append(words, cur.String())
	}
	return words
}

// Every pgreap command line in the docs and the --help examples is one
// pgreap accepts: its flags, selectors, durations, regular expressions and
// formats pass, so that it gets as far as connecting (to a server that is
// not there), or needing a terminal, or reading its file. A renamed flag
// or a bad example fails here.
func TestDocExamplesAreValid(t *testing.T) {
	t.Parallel()
	examples := docExamples(t)
	if len(examples) < 60 {
		t.Fatalf("only %d examples found: is the extraction broken?", len(examples))
	}
	accepted := regexp.MustCompile(`^pgreap: (cannot connect as user|top needs a terminal|\S+: no such file or directory$|no drain record for)`)
	for _, ex := range examples {
		args := shellWords(t, ex.line)[1:]
		if len(args) > 0 && args[0] == "demo" {
			continue // it starts a server: TestDemoScript runs the tour
		}
		streams, out, errOut := cli.Test()
		// A file redirected to standard input (exec -f - < migrate.sql):
		// some SQL, as the shell would give it.
		if i := slices.Index(args, "<"); i >= 0 && i+1 < len(args) {
			args = slices.Delete(args, i, i+2)
			streams.In = strings.NewReader("SELECT 1")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		code := cli.Run(ctx, append(args, "-d", "host=/nonexistent port=1 connect_timeout=1"), streams)
		cancel()
		msg := strings.TrimSpace(errOut.String())
		if code == 0 || code == 1 || (code == 2 && accepted.MatchString(msg)) {
			continue
		}
		t.Errorf("%s: %s\nexit %d: %s%s", ex.where, ex.line, code, msg, out.String())
	}
	t.Logf("%d examples", len(examples))
}
