package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/pooler"
	"github.com/pgreap/pgreap/internal/selector"
)

// ActOptions are the inputs of `pgreap cancel` and `pgreap terminate`.
type ActOptions struct {
	IO      *IOStreams
	Connect func(context.Context) (*pgx.Conn, error)
	Logger  *slog.Logger

	Action             action.Kind
	Format             output.Format
	Color              bool
	PIDs               []int32
	Selectors          *selector.Flags
	DryRun             bool
	Yes                bool
	Limit              int
	Wait               time.Duration
	Grace              time.Duration
	IncludeReplication bool
	IncludeAutovacuum  bool
	// Kick: every session of the databases (--db or --all-databases).
	Kick         bool
	AllDatabases bool
	// Poolers are the PgBouncers in front of the server (--pgbouncer):
	// cancel and terminate judge their server connections by the client
	// each serves; kick ends their clients of the databases too.
	Poolers []*pooler.Pooler
	// show, when set, turns the results into the rows printed (unblock
	// adds the waiters behind each root); the exit status comes from the
	// results alone.
	show func([]action.Result) []action.Result
}

// newActCmd builds cancel or terminate: the same pipeline, another signal.
func newActCmd(f *Factory, kind action.Kind, cmd *cobra.Command, runF func(context.Context, *ActOptions) error) *cobra.Command {
	opts := &ActOptions{IO: f.IO, Action: kind}
	cmd.Args = cobra.ArbitraryArgs
	if cmd.Name() == "kick" {
		opts.Kick = true
		cmd.Args = cobra.NoArgs
		cmd.Flags().BoolVar(&opts.AllDatabases, "all-databases", false, "every database (instead of --db)")
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		var err error
		if opts.PIDs, err = parsePIDs(args); err != nil {
			return usageError(err)
		}
		if opts.Format, err = f.Format(); err != nil {
			return err
		}
		if _, err := f.ConnConfig(); err != nil {
			return err
		}
		if opts.Limit < 0 {
			return usageError(fmt.Errorf("--limit %d: must be 0 (no limit) or more", opts.Limit))
		}
		if opts.Wait < 0 || opts.Grace < 0 {
			return usageError(errors.New("--wait and --grace must not be negative"))
		}
		if opts.Poolers, err = f.Poolers(); err != nil {
			return err
		}
		opts.Color = f.Color()
		opts.Connect = f.Connect
		opts.Logger = f.Logger()
		if runF != nil {
			return runF(cmd.Context(), opts)
		}
		return actRun(cmd.Context(), opts)
	}
	fs := cmd.Flags()
	opts.Selectors = selector.AddFlags(fs)
	fs.BoolVar(&opts.DryRun, "dry-run", false, "act on nothing: print the plan (with -o json, ready for `pgreap apply`)")
	fs.BoolVarP(&opts.Yes, "yes", "y", false, "do not ask: needed for sessions chosen by selectors without a terminal")
	fs.IntVar(&opts.Limit, "limit", 0, "refuse to act on more than `N` sessions (0: no limit)")
	fs.DurationVar(&opts.Wait, "wait", 5*time.Second, "how long to wait for the signalled sessions to end (`D`)")
	fs.BoolVar(&opts.IncludeReplication, "include-replication", false, "allow walsenders (replication connections)")
	fs.BoolVar(&opts.IncludeAutovacuum, "include-autovacuum", false, "allow autovacuum workers")
	if kind == action.Terminate {
		fs.DurationVar(&opts.Grace, "grace", 0, "cancel first; terminate only what still runs the same query after `D`")
	}
	return cmd
}

func parsePIDs(args []string) ([]int32, error) {
	var pids []int32
	for _, a := range args {
		n, err := strconv.ParseInt(a, 10, 32)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q: not a pid (a positive number); choose sessions by name with selectors such as --app", a)
		}
		pids = append(pids, int32(n))
	}
	return pids, nil
}

func actRun(ctx context.Context, opts *ActOptions) error {
	sel, err := opts.Selectors.Selector()
	if err != nil {
		return usageError(err)
	}
	bySelector := opts.Selectors.Given()
	if opts.Kick {
		switch {
		case opts.AllDatabases && len(sel.DB) > 0:
			return usageError(errors.New("--db and --all-databases: give one of them"))
		case !opts.AllDatabases && len(sel.DB) == 0:
			return usageError(errors.New("kick needs the databases: --db NAME (repeatable, globs with *) or --all-databases"))
		case opts.AllDatabases:
			sel.DB = []string{"*"}
		}
		bySelector = true
	}
	if !bySelector {
		sel = nil
	}
	if !bySelector && len(opts.PIDs) == 0 {
		return usageError(action.ErrNothingChosen)
	}
	conn, err := opts.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if opts.Kick && len(opts.Poolers) > 0 {
		return kickPoolers(ctx, opts, conn, sel)
	}
	pooled, err := lookPooled(ctx, conn, opts.Poolers)
	if err != nil {
		return err
	}
	if pooled != nil && sel == nil {
		sel = &selector.Selector{} // named by pid: shown with their pooled clients
	}
	return actOn(ctx, opts, conn, sel.WithPooled(pooled), bySelector)
}

// actOn chooses, confirms, acts and reports: the pipeline of cancel,
// terminate and kick once the selection is known.
func actOn(ctx context.Context, opts *ActOptions, conn *pgx.Conn, sel *selector.Selector, bySelector bool) error {
	plan, results, err := actRound(ctx, opts, conn, sel, bySelector)
	if plan == nil {
		return err
	}
	if opts.Kick && err == nil && !opts.DryRun {
		reportArrivals(ctx, opts, conn, sel.DB, plan.Taken)
	}
	shown := results
	if opts.show != nil {
		shown = opts.show(results)
	}
	return finish(opts.IO, opts.Format, opts.Color, opts.Action, plan, results, shown, err, opts.DryRun)
}

// actRound chooses, confirms and acts, and returns the plan and its
// results; a nil plan is an error before anything was chosen.
func actRound(ctx context.Context, opts *ActOptions, conn *pgx.Conn, sel *selector.Selector, bySelector bool) (*action.Plan, []action.Result, error) {
	plan, err := choose(ctx, opts, conn, sel)
	if err != nil {
		return nil, nil, err
	}
	if len(plan.Results) == 0 {
		return nil, nil, ErrNoMatch
	}
	results, err := carryOut(ctx, opts, conn, plan, bySelector)
	if results == nil {
		return nil, nil, err
	}
	return plan, results, err
}

// choose makes the plan: the sessions named and selected, judged.
func choose(ctx context.Context, opts *ActOptions, conn *pgx.Conn, sel *selector.Selector) (*action.Plan, error) {
	plan, err := action.Choose(ctx, conn, action.Request{
		Action:             opts.Action,
		PIDs:               opts.PIDs,
		Selector:           sel,
		IncludeReplication: opts.IncludeReplication,
		IncludeAutovacuum:  opts.IncludeAutovacuum,
	})
	if err != nil {
		return nil, err
	}
	opts.Logger.Debug("chosen", "sessions", len(plan.Results), "planned", plan.Count(action.Planned))
	return plan, nil
}

// carryOut checks the limit, confirms, and carries the plan out; nil
// results: nothing was done (the error says why).
func carryOut(ctx context.Context, opts *ActOptions, conn *pgx.Conn, plan *action.Plan, bySelector bool) ([]action.Result, error) {
	planned := plan.Count(action.Planned)
	if opts.Limit > 0 && planned > opts.Limit {
		return nil, usageError(&action.LimitError{Chosen: planned, Limit: opts.Limit})
	}
	// Sessions chosen by selectors are confirmed; sessions named by pid
	// alone were chosen one by one already.
	if bySelector && !opts.DryRun && !opts.Yes && planned > 0 {
		if err := confirm(ctx, opts, plan, plan.Results, fmt.Sprintf("%s %d session%s", opts.Action, planned, plural(planned))); err != nil {
			return nil, err
		}
	}
	return action.Execute(ctx, conn, plan, action.Options{DryRun: opts.DryRun, Wait: opts.Wait, Grace: opts.Grace})
}

// reportArrivals says, on standard error, how many sessions connected to
// the kicked databases while kick worked: a kick cannot keep anyone out.
func reportArrivals(ctx context.Context, opts *ActOptions, conn *pgx.Conn, dbs []string, since time.Time) {
	n, err := maintenance.Arrivals(ctx, conn, dbs, since)
	if err != nil {
		opts.Logger.Warn("cannot count new sessions", "err", err)
		return
	}
	opts.Logger.Debug("arrivals", "sessions", n)
	if n > 0 {
		fmt.Fprintf(opts.IO.ErrOut, "pgreap: note: %d new session%s connected to %s while kick worked (a pool reconnecting?); "+
			"'pgreap drain NAME' keeps them out\n",
			n, plural(n), strings.Join(dbs, ", "))
	}
}

// finish prints the results and maps them to the exit status. Interrupted
// (Ctrl-C) after signals were sent, it still prints what is known.
func finish(io *IOStreams, format output.Format, color bool, kind action.Kind, plan *action.Plan, results, shown []action.Result, err error, dryRun bool) error {
	if err != nil && !maintenance.Signalled(results) {
		return err // nothing was sent: a plain error
	}
	if werr := writeResults(io, format, color, plan, shown, dryRun); werr != nil {
		return werr
	}
	return resultsError(kind, results, err)
}

// confirm shows the rows to act on on a terminal and asks; without one,
// it refuses.
func confirm(ctx context.Context, opts *ActOptions, plan *action.Plan, rows []action.Result, what string) error {
	if !opts.IO.InTTY {
		return usageError(fmt.Errorf("refusing to %s chosen by selectors without a terminal to confirm on: add --yes, or see them with --dry-run", what))
	}
	if err := output.WriteResults(opts.IO.ErrOut, output.Table, toRows(plan, rows, false), output.Options{
		Now: plan.Taken, Color: opts.Color, Width: opts.IO.Width,
	}); err != nil {
		return err
	}
	fmt.Fprintf(opts.IO.ErrOut, "%s? [y/N] ", what)
	answer := make(chan string, 1)
	go func() { // abandoned if Ctrl-C comes first: the process ends
		line, _ := bufio.NewReader(opts.IO.In).ReadString('\n')
		answer <- line
	}()
	select {
	case <-ctx.Done():
		fmt.Fprintln(opts.IO.ErrOut)
		return usageError(errors.New("interrupted: nothing done"))
	case line := <-answer:
		switch strings.ToLower(strings.TrimSpace(line)) {
		case "y", "yes":
			return nil
		}
	}
	return usageError(errors.New("not confirmed: nothing done"))
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// toRows turns results into output rows; a dry run's JSON rows carry what
// `pgreap apply` needs: the guard and the server the plan was made on. A
// row without an action (a waiter shown by unblock) has no guard: apply
// skips it.
func toRows(plan *action.Plan, results []action.Result, planFields bool) []output.Row {
	rows := make([]output.Row, len(results))
	header := plan.Header()
	for i := range results {
		r := &results[i]
		rows[i] = output.Row{Session: r.Session, Action: string(r.Action), Outcome: string(r.Outcome), Detail: r.Detail}
		if planFields {
			var guard []string
			if r.Action != "" && !r.IsPrepared() {
				guard = r.Guard.Columns() // a prepared transaction has no pid to guard
			}
			rows[i].Extra = []output.Field{{Name: "guard", Value: guard}, {Name: "plan", Value: header}}
		}
	}
	return rows
}

func writeResults(io *IOStreams, format output.Format, color bool, plan *action.Plan, results []action.Result, dryRun bool) error {
	return output.WriteResults(io.Out, format, toRows(plan, results, dryRun), output.Options{
		Now:      plan.Taken,
		QueryID:  plan.ServerVersion >= 140000,
		Color:    color,
		Width:    io.Width,
		Terminal: io.OutTTY,
		Pooler:   plan.Pooled() != nil,
	})
}

func want(kind action.Kind) action.Outcome {
	if kind == action.Cancel {
		return action.Cancelled
	}
	return action.Terminated
}
