package cli_test

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// TestScripts runs testdata/script/*.txtar: pgreap as a real process, with
// the package cluster in its environment. $TAG is the script's own tag for
// application_name. Extra commands:
//
//	session [-db=NAME] APP [SQL]
//	                      open a session named APP, run SQL on it, keep it
//	                      open until the script ends
//	sql SQL               run SQL as the superuser
//	waitsql SQL           wait until SQL (as the superuser) returns true
//	dropdb NAME           drop the database when the script ends
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
			env.Setenv("PGREAP_STATE_DIR", filepath.Join(env.WorkDir, "state"))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"session": func(ts *testscript.TestScript, neg bool, args []string) {
				db := "postgres"
				if len(args) > 1 && strings.HasPrefix(args[0], "-db=") {
					db, args = strings.TrimPrefix(args[0], "-db="), args[1:]
				}
				if len(args) < 1 || len(args) > 2 || neg {
					ts.Fatalf("usage: session [-db=NAME] APP [SQL]")
				}
				cn, err := pgx.Connect(context.Background(), c.DSN(db, pgtest.Superuser)+" application_name="+args[0])
				ts.Check(err)
				ts.Defer(func() { cn.Close(context.Background()) })
				if len(args) == 2 {
					_, err := cn.Exec(context.Background(), args[1])
					ts.Check(err)
				}
			},
			"sql": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) != 1 || neg {
					ts.Fatalf("usage: sql SQL")
				}
				_, err := pgtest.Admin(t).Exec(context.Background(), args[0])
				ts.Check(err)
			},
			"waitsql": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) != 1 || neg {
					ts.Fatalf("usage: waitsql SQL")
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				for {
					var ok bool
					err := pgtest.Admin(t).QueryRow(ctx, args[0]).Scan(&ok)
					if err == nil && ok {
						return
					}
					if ctx.Err() != nil {
						ts.Fatalf("waitsql: %s: still not true (%v)", args[0], err)
					}
					time.Sleep(20 * time.Millisecond)
				}
			},
			"dropdb": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) != 1 || neg {
					ts.Fatalf("usage: dropdb NAME (at the end of the script)")
				}
				ts.Defer(func() {
					ctx := context.Background()
					id := pgx.Identifier{args[0]}.Sanitize()
					_, _ = pgtest.Admin(t).Exec(ctx, "ALTER DATABASE "+id+" WITH ALLOW_CONNECTIONS true")
					for i := 0; i < 100; i++ {
						_, _ = pgtest.Admin(t).Exec(ctx, "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE datname = $1", args[0])
						if _, err := pgtest.Admin(t).Exec(ctx, "DROP DATABASE IF EXISTS "+id); err == nil {
							return
						}
						time.Sleep(50 * time.Millisecond)
					}
				})
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
