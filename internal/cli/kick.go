package cli

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/pooler"
	"github.com/pgreap/pgreap/internal/selector"
)

// NewCmdKick builds `pgreap kick`; runF replaces the run in tests.
func NewCmdKick(f *Factory, runF func(context.Context, *ActOptions) error) *cobra.Command {
	return newActCmd(f, action.Terminate, &cobra.Command{
		Use:   "kick --db NAME... | --all-databases [SELECTORS]",
		Short: "End every client connection of databases",
		Long: `End every client connection of the databases given with --db (repeatable,
globs with *) or of all of them (--all-databases), as terminate does: one
statement signals the whole set through the identity guard, then pgreap
waits until each is gone. Other selectors narrow the set (e.g.
--exclude-user). pgreap's own session and the protected ones (parallel
workers, walsenders, autovacuum workers, non-client backends) are left
alone.

A kick does not keep anyone out: sessions that connect while it works are
counted on standard error; 'pgreap drain NAME' keeps them out.

With --pgbouncer (each PgBouncer's admin console), kick also ends the
pooled clients: after the server's sessions, it sends each pooler KILL for
every name under which it serves the databases (the pooler drops their
clients and server connections), names each client ended on standard
error, then RESUME, so that new clients are served again. A database the
pooler had paused before (someone else's pause) is killed and left paused,
and kick says so. KILL ends every client of a database: with --pgbouncer,
kick takes --db, --all-databases and --exclude-db, no other selector.

The sessions are listed and confirmed on a terminal; without one, --yes is
needed. Exit status as terminate: 0 all terminated, 1 nothing matched, 2
usage or connection error, 3 some denied, survived or changed.`,
		Example: `  pgreap kick --db shop
  pgreap kick --db shop --db 'shop_*' --exclude-user admin --yes
  pgreap kick --all-databases --exclude-db postgres --dry-run
  pgreap kick --db shop --pgbouncer 'host=pgb1 port=6432 user=pgbouncer' --yes`,
	}, runF)
}

// kickPoolers is kick with --pgbouncer: the server's sessions are
// terminated as by kick, then each pooler's clients of the databases are
// ended (KILL) and the database resumed (RESUME), unless it was paused
// before, by someone else.
func kickPoolers(ctx context.Context, opts *ActOptions, conn *pgx.Conn, sel *selector.Selector) error {
	narrowed := *sel
	narrowed.DB, narrowed.ExcludeDB = nil, nil
	if !reflect.ValueOf(narrowed).IsZero() {
		// KILL ends every client of a database, whoever it is.
		return usageError(errors.New("kick --pgbouncer ends every pooled client of the databases (KILL): it takes --db, --all-databases and --exclude-db, no other selector"))
	}
	admins, err := pooler.ConnectAll(ctx, opts.Poolers)
	if err != nil {
		return err
	}
	defer pooler.CloseAll(admins)
	if !opts.DryRun {
		// Before any session is ended: a KILL refused afterwards would
		// leave the kick half done.
		if err := pooler.CheckAdminAll(ctx, admins); err != nil {
			return usageError(fmt.Errorf("%w; nothing done", err))
		}
	}
	dbs, err := maintenance.Databases(ctx, conn, sel.DB, sel.ExcludeDB)
	if err != nil {
		return err
	}
	here, err := maintenance.LookHere(ctx, conn, admins)
	if err != nil {
		return err
	}
	kills, err := maintenance.PlanKill(ctx, admins, dbs, here)
	if err != nil {
		return err
	}
	// The server's sessions are shown with the clients the poolers say
	// they serve (a selection by database only: nothing is judged by them).
	sel = sel.WithPooled(here.Pooled)
	pooled := 0
	for _, k := range kills {
		pooled += len(k.Clients)
	}
	plan, err := choose(ctx, opts, conn, sel)
	if err != nil {
		return err
	}
	if len(plan.Results) == 0 && pooled == 0 {
		// Nothing to end, here or in the poolers (as kick without them).
		return ErrNoMatch
	}
	planned := plan.Count(action.Planned)
	if opts.Limit > 0 && planned+pooled > opts.Limit {
		return usageError(fmt.Errorf("%w (and %d pooled client%s)", &action.LimitError{Chosen: planned + pooled, Limit: opts.Limit}, pooled, plural(pooled)))
	}
	w := opts.IO.ErrOut
	if opts.DryRun {
		results, err := action.Execute(ctx, conn, plan, action.Options{DryRun: true})
		for _, k := range kills {
			then := "then RESUME " + output.Clean(k.Database) + ": its new clients are served again"
			if k.PausedBefore {
				then = "and leave it paused: it was paused before, by someone else"
			}
			fmt.Fprintf(w, "pgreap: dry run: kick would send KILL %s to pgbouncer %s, ending its %d client%s%s, %s\n",
				output.Clean(k.Database), k.Pooler, len(k.Clients), plural(len(k.Clients)), clientList(k.Clients), then)
		}
		if len(plan.Results) == 0 {
			return err
		}
		return finish(opts.IO, opts.Format, opts.Color, opts.Action, plan, results, results, err, true)
	}
	if !opts.Yes && (planned > 0 || pooled > 0) {
		if err := confirm(ctx, opts, plan, plan.Results, fmt.Sprintf("terminate %d session%s and end %d pooled client%s (KILL, then RESUME, on the poolers)",
			planned, plural(planned), pooled, plural(pooled))); err != nil {
			return err
		}
	}
	var results []action.Result
	if planned > 0 {
		results, err = action.Execute(ctx, conn, plan, action.Options{Wait: opts.Wait, Grace: opts.Grace})
	} else {
		results = plan.Results
	}
	// The poolers even after an error: they hold the clients the
	// terminated backends served.
	kills, kerr := maintenance.Kill(ctx, admins, kills)
	left := 0
	for _, k := range kills {
		for _, c := range k.Clients {
			what := "ended"
			if slices.Contains(k.Left, c) {
				what, left = "still connected after the KILL", left+1
			}
			fmt.Fprintf(w, "pgreap: pgbouncer %s: pooled client %s of %s: %s\n", k.Pooler, clientText(c), output.Clean(k.Database), what)
		}
		switch {
		case k.Resumed:
			fmt.Fprintf(w, "pgreap: pgbouncer %s: KILL %s ended %d client%s, then RESUME: its new clients are served again\n",
				k.Pooler, output.Clean(k.Database), len(k.Clients)-len(k.Left), plural(len(k.Clients)-len(k.Left)))
		case k.PausedBefore && k.Killed:
			fmt.Fprintf(w, "pgreap: pgbouncer %s: %s left paused: it was paused before the kick, by someone else (its new clients wait)\n", k.Pooler, output.Clean(k.Database))
		}
	}
	if len(plan.Results) > 0 {
		if werr := writeResults(opts.IO, opts.Format, opts.Color, plan, results, false); werr != nil {
			return werr
		}
	}
	switch {
	case kerr != nil:
		return incomplete(fmt.Errorf("poolers: %w (a database left paused by the KILL: RESUME it on the console)", kerr))
	case left > 0:
		return incomplete(fmt.Errorf("%d pooled client%s still connected after the KILL", left, plural(left)))
	case len(plan.Results) == 0:
		return nil
	}
	return resultsError(opts.Action, results, err)
}

// clientText names a pooled client: address and port, application, user.
func clientText(c pooler.Client) string {
	addr := c.Addr
	if addr == "unix" {
		addr = "unix socket"
	} else if c.Port > 0 {
		addr = fmt.Sprintf("%s:%d", addr, c.Port)
	}
	s := addr + " (user " + output.Clean(c.User)
	if c.ApplicationName != "" {
		s += ", app " + output.Clean(c.ApplicationName)
	}
	return s + ")"
}

func clientList(cs []pooler.Client) string {
	if len(cs) == 0 {
		return ""
	}
	texts := make([]string, len(cs))
	for i, c := range cs {
		texts[i] = clientText(c)
	}
	return " (" + strings.Join(texts, "; ") + ")"
}
