package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/colorprofile"
	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgreap/pgreap/internal/pooler"
	"github.com/pgreap/pgreap/internal/selector"
	"github.com/pgreap/pgreap/internal/tui"
)

// TopOptions are the inputs of `pgreap top`.
type TopOptions struct {
	IO      *IOStreams
	Connect func(context.Context) (*pgx.Conn, error)
	Logger  *slog.Logger

	Color     bool
	Interval  time.Duration
	ReadOnly  bool
	Selectors *selector.Flags
	// Poolers are the PgBouncers in front of the server (--pgbouncer).
	Poolers []*pooler.Pooler
}

// NewCmdTop builds `pgreap top`; runF replaces the run in tests.
func NewCmdTop(f *Factory, runF func(context.Context, *TopOptions) error) *cobra.Command {
	opts := &TopOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "top [SELECTORS]",
		Short: "Watch sessions live, and cancel or terminate them",
		Long: `An interactive view of the server's client sessions, refreshed every
--interval: the rows of ls, parallel workers folded into their leader
(+N after its pid), a header with the server, the sessions by state, the
longest transaction and the lock waits.

Keys: arrows or j/k move, / filters on database, user, application,
client, pid and query (enter applies, esc clears), s cycles the sort (age,
state, db, user, app), b shows only the blocking tree, space marks, enter
shows every field and the whole query, ? helps, q quits.

c cancels the query and t terminates the connection of the marked sessions,
or of the selected one, after a y/n question that names them. Each goes
through the same guard as cancel and terminate: the signalling statement
re-checks the identity seen on the screen, and every session's outcome
(terminated, changed, protected, denied, ...) shows in the status line.
--read-only turns c and t off.

The selectors of ls narrow what top shows (and so what it can act on).
top needs a terminal; for a script, use ls. With --pgbouncer, rows show
the pooled client of each pooler's server connection, and the header how
many clients wait in the poolers for one.

On a hot standby the header says standby, the replay lag and the WAL left
to replay, on whom replay waits and for how long (blockers unknown for a
buffer pin), and the queries the server cancelled for replay. The replay
row (the startup process) comes first; c and t refuse it (it is no
session: act on the sessions that block it), and b shows it under them.`,
		Example: `  pgreap top
  pgreap top --db shop --interval 2s
  pgreap top --read-only --exclude-user replicator
  pgreap top --pgbouncer 'host=pgb1 port=6432 user=stats'
  pgreap top -h standby1 --blocking-replay
  PGHOST=db1 PGUSER=reaper pgreap top --state active --state 'idle in transaction'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.Interval < 100*time.Millisecond {
				return usageError(fmt.Errorf("--interval %s: shorter than 100ms", opts.Interval))
			}
			if _, err := f.ConnConfig(); err != nil {
				return err
			}
			var err error
			if opts.Poolers, err = f.Poolers(); err != nil {
				return err
			}
			opts.Color = f.Color()
			opts.Connect = f.Connect
			opts.Logger = f.Logger()
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return topRun(cmd.Context(), opts)
		},
	}
	cmd.Flags().DurationVar(&opts.Interval, "interval", time.Second, "time between two snapshots")
	cmd.Flags().BoolVar(&opts.ReadOnly, "read-only", false, "look only: c and t do nothing")
	opts.Selectors = selector.AddFlags(cmd.Flags())
	return cmd
}

func topRun(ctx context.Context, opts *TopOptions) error {
	if os.Getenv("GOGC") == "" {
		// Main's GOGC=400 suits commands that live for milliseconds;
		// top lives on, and holds a snapshot (bench/topcost_test.go).
		debug.SetGCPercent(100)
	}
	sel, err := opts.Selectors.Selector()
	if err != nil {
		return usageError(err)
	}
	if !opts.IO.InTTY || !opts.IO.OutTTY {
		return usageError(errors.New("top needs a terminal on standard input and output; for a script, use ls"))
	}
	// Connect before the screen changes: a connection error is one line.
	conn, err := opts.Connect(ctx)
	if err != nil {
		return err
	}
	if _, err := lookPooled(ctx, conn, opts.Poolers); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return err // a pooler that cannot be asked: one line too
	}
	ctx, cancel := context.WithCancel(ctx)
	src := tui.NewDB(conn, opts.Connect, sel)
	src.SetPoolers(opts.Poolers)
	defer src.Close(context.WithoutCancel(ctx))
	defer cancel() // first: a statement in flight ends, then Close
	// The program brings colours down to what the terminal shows; a
	// terminal with none (TERM=dumb) gets plain text.
	color := opts.Color && colorprofile.Detect(opts.IO.Out, os.Environ()) > colorprofile.ASCII
	in, reads := tui.CountReads(opts.IO.In)
	m := tui.New(tui.Options{Context: ctx, Source: src, Interval: opts.Interval, ReadOnly: opts.ReadOnly, Color: color, Reads: reads})
	p := topProgram(m, &IOStreams{In: in, Out: opts.IO.Out, ErrOut: opts.IO.ErrOut})
	go func() {
		<-ctx.Done() // a signal, or the end of topRun
		p.Quit()     // a no-op once the program has ended
	}()
	// bubbletea restores the terminal on a panic in the model, and on
	// Ctrl-C, which the model reads as a key in raw mode.
	_, err = p.Run()
	// What was done stays in the scrollback once the screen is restored.
	for _, l := range m.Done() {
		fmt.Fprintln(opts.IO.ErrOut, "pgreap top: "+l)
	}
	switch {
	case err == nil: // q, Ctrl-C, SIGTERM or SIGINT
	case errors.Is(err, tea.ErrProgramPanic):
		return fmt.Errorf("top: internal error, please report it: %w", err)
	default:
		return fmt.Errorf("top: %w", err)
	}
	if m.Acting() {
		return incomplete(errors.New("top stopped while an action was running: its outcome is unknown; look with pgreap ls"))
	}
	return nil
}

// topProgram runs a model of top on the whole screen of the streams'
// terminal.
func topProgram(m tea.Model, io *IOStreams) *tea.Program {
	// No signal handler and no context for bubbletea: Main turns SIGINT,
	// SIGTERM and SIGQUIT into the end of ctx, and topRun turns that into a quit.
	// bubbletea's own handler races with the context (when ctx ends
	// first, the handler blocks forever sending to a finished event loop:
	// top hung on SIGTERM), and its kill path closes the input while
	// its reader still reads it (a data race): a quit waits for both.
	return tea.NewProgram(m, tea.WithoutSignalHandler(), tea.WithInput(io.In), tea.WithOutput(io.Out),
		// 30 frames a second, not 60: each is a wake-up, even with
		// nothing to draw (an idle screen costs the wake-ups only).
		tea.WithFPS(30))
}
