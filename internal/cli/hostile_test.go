package cli_test

import (
	"encoding/csv"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/cli"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// What a hostile query text, role or database name could do to a terminal:
// clear it, move the cursor, write the clipboard (OSC 52), ring, overwrite
// a line (CR, BS), reverse the text (bidi override), a C1 CSI. The query
// is as long as the server keeps (track_activity_query_size, 1 KB by
// default).
const hostile = "\x1b[2J\x1b[H\x1b]52;c;ZXZpbA==\x07\r\bgotcha\u202e\u0085\u009b31m"

// sgr is the only escape sequence pgreap itself writes: colour.
var sgr = regexp.MustCompile(`\x1b\[[0-9;]*m`)

// terminalSafe fails if out, minus pgreap's own colours, has anything a
// terminal acts on rather than shows.
func terminalSafe(t *testing.T, what, out string) {
	t.Helper()
	for i, r := range sgr.ReplaceAllString(out, "") {
		if r != '\n' && r != '\t' && (unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == '\u2028' || r == '\u2029') {
			t.Fatalf("%s: %U at byte %d:\n%q", what, r, i, out)
		}
	}
}

func TestHostileTextNeverReachesTheTerminal(t *testing.T) {
	t.Parallel()
	role := "r_" + pgtest.Tag(t) + "\x1b[31m"
	db := "d_" + pgtest.Tag(t) + "\x1b[5m"
	for _, sql := range []string{
		"CREATE ROLE " + pgx.Identifier{role}.Sanitize() + " LOGIN SUPERUSER",
		"CREATE DATABASE " + pgx.Identifier{db}.Sanitize(),
	} {
		pgtest.Exec(t, sql)
	}
	t.Cleanup(func() {
		pgtest.Exec(t, "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = $1", role)
		pgtest.Eventually(t, "the victims gone", func() (bool, error) {
			var n int
			err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE usename = $1", role).Scan(&n)
			return n == 0, err
		})
		pgtest.Exec(t, "DROP DATABASE "+pgx.Identifier{db}.Sanitize())
		pgtest.Exec(t, "DROP ROLE "+pgx.Identifier{role}.Sanitize())
	})
	var victims []*pgtest.Victim
	for i := 0; i < 2; i++ {
		v := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, User: role})
		query := "SELECT pg_catalog.pg_sleep(60) /* " + strings.Repeat(hostile, 40) + " */"
		v.Start(query)
		v.WaitState("active", "")
		victims = append(victims, v)
	}
	var want string // the query as the server keeps it
	if err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT query FROM pg_catalog.pg_stat_activity WHERE pid = $1", victims[0].PID).Scan(&want); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(want, "\x1b]52") || len(want) < 1000 {
		t.Fatalf("the server kept %d bytes: %q", len(want), want)
	}

	// People: tables, on a terminal (colour, width 200) and not.
	for _, tty := range []bool{true, false} {
		r := run(t, tty, "ls", "--app", pgtest.Tag(t))
		r.wantCode(t, 0)
		terminalSafe(t, "ls table tty="+strconv.FormatBool(tty), r.out)
		lines := strings.Split(strings.TrimSuffix(r.out, "\n"), "\n")
		if len(lines) != 3 {
			t.Fatalf("tty=%v: %d lines, want a header and 2 rows:\n%s", tty, len(lines), r.out)
		}
		for _, l := range lines {
			if w := utf8.RuneCountInString(sgr.ReplaceAllString(l, "")); tty && w > 200 {
				t.Fatalf("a line of %d columns on a terminal of 200: %q", w, l)
			}
		}
	}
	// A CSV on a terminal is shown, so it is made safe too.
	streams, out, _ := cli.Test()
	streams.OutTTY = true
	if code := cli.Run(pgtest.Context(t), []string{"ls", "--app", pgtest.Tag(t), "-o", "csv"}, streams); code != 0 {
		t.Fatalf("csv on a terminal: exit %d", code)
	}
	terminalSafe(t, "ls csv on a terminal", out.String())

	// Programs: JSON and CSV carry the exact text.
	r := run(t, false, "ls", "--app", pgtest.Tag(t), "-o", "json")
	r.wantCode(t, 0)
	terminalSafe(t, "ls json", r.out) // JSON escapes control characters
	var rows []map[string]any
	if err := json.Unmarshal([]byte(r.out), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0]["query"] != want || rows[0]["usename"] != role || rows[0]["datname"] != db {
		t.Fatalf("json does not carry the exact text: %v", rows)
	}
	r = run(t, false, "ls", "--app", pgtest.Tag(t), "-o", "csv")
	r.wantCode(t, 0)
	recs, err := csv.NewReader(strings.NewReader(r.out)).ReadAll()
	if err != nil || len(recs) != 3 {
		t.Fatalf("csv: %v, %d records", err, len(recs))
	}
	if !contains(recs[1], want) || !contains(recs[1], role) || !contains(recs[1], db) {
		t.Fatalf("csv does not carry the exact text: %q", recs[1])
	}

	// An action's results, on a terminal.
	r = run(t, true, "cancel", "--app", pgtest.Tag(t), "--yes")
	r.wantCode(t, 0)
	terminalSafe(t, "cancel table", r.out)
	terminalSafe(t, "cancel stderr", r.errOut)
	if n := strings.Count(r.out, "cancelled"); n != 2 {
		t.Fatalf("%d cancelled rows:\n%s", n, r.out)
	}
}

func contains(rec []string, s string) bool {
	for _, c := range rec {
		if c == s {
			return true
		}
	}
	return false
}
