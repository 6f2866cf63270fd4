package cli_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// A database's name is the server's text: whoever named it may have put
// escape sequences in it. drain and undrain show it as a table does, and
// the hint to undrain it is one shell word to paste, safe to print.
func TestDrainShowsTheNameCleanedAndTheHintQuoted(t *testing.T) {
	t.Parallel()
	name := "shop\x1b]0;owned\x07 'x' " + strings.ToLower(t.Name()[:8])
	shown := "shop\uFFFD]0;owned\uFFFD 'x' testdrai"
	hint := `pgreap undrain $'shop\x1b]0;owned\x07 \'x\' testdrai'`
	pgtest.Exec(t, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	t.Cleanup(func() {
		_, _ = pgtest.Admin(t).Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize())
	})
	reopen(t, name)
	for _, args := range [][]string{{"drain", name, "--dry-run"}, {"drain", name}, {"undrain", name}} {
		r := run(t, false, args...)
		r.wantCode(t, 0)
		both := r.out + r.errOut
		if strings.ContainsAny(both, "\x1b\x07") || !strings.Contains(both, shown) {
			t.Errorf("%s: raw escape, or not %q, in\nstdout %q\nstderr %q", args[0], shown, r.out, r.errOut)
		}
		if args[0] == "drain" && !strings.Contains(r.errOut, hint) {
			t.Errorf("%s: no %q in stderr %q", strings.Join(args[:1], " "), hint, r.errOut)
		}
	}
}
