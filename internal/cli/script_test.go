package cli_test

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// TestScripts runs testdata/script/*.txtar: pgreap as a real process, with
// the package cluster in its environment. $TAG is the script's own tag for
// application_name. Extra commands:
//
//	session APP [SQL]     open a session named APP, run SQL on it, keep it
//	                      open until the script ends
//	exits CODE CMD ARG... run CMD and check its exit code
func TestScripts(t *testing.T) {
	t.Parallel()
	c := pgtest.Shared(t)
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		Setup: func(env *testscript.Env) error {
			env.Vars = append(env.Vars, c.Env()...)
			env.Setenv("TAG", "ts-"+strings.TrimPrefix(filepath.Base(env.WorkDir), "script-"))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"session": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) < 1 || len(args) > 2 || neg {
					ts.Fatalf("usage: session APP [SQL]")
				}
				cn, err := pgx.Connect(context.Background(), c.DSN("postgres", pgtest.Superuser)+" application_name="+args[0])
				ts.Check(err)
				ts.Defer(func() { cn.Close(context.Background()) })
				if len(args) == 2 {
					_, err := cn.Exec(context.Background(), args[1])
					ts.Check(err)
				}
			},
			"exits": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) < 2 || neg {
					ts.Fatalf("usage: exits CODE CMD [ARG...]")
				}
				want, err := strconv.Atoi(args[0])
				ts.Check(err)
				got := 0
				var ee *exec.ExitError
				if err := ts.Exec(args[1], args[2:]...); errors.As(err, &ee) {
					got = ee.ExitCode()
				} else if err != nil {
					ts.Fatalf("%v", err)
				}
				if got != want {
					ts.Fatalf("exit code %d, want %d", got, want)
				}
			},
		},
	})
}
