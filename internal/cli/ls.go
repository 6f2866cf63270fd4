package cli

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/pooler"
	"github.com/pgreap/pgreap/internal/selector"
)

// LsOptions are the inputs of `pgreap ls`.
type LsOptions struct {
	IO      *IOStreams
	Connect func(context.Context) (*pgx.Conn, error)
	Logger  *slog.Logger

	Format    output.Format
	Color     bool
	Selectors *selector.Flags
	// Poolers are the PgBouncers in front of the server (--pgbouncer).
	Poolers []*pooler.Pooler
}

// NewCmdLs builds `pgreap ls`; runF replaces the run in tests.
func NewCmdLs(f *Factory, runF func(context.Context, *LsOptions) error) *cobra.Command {
	opts := &LsOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "ls [SELECTORS]",
		Short: "List client sessions",
		Long: `List client sessions: pid, database, user, application, client, state,
how long the state has lasted, wait event, who blocks it, and the query.
Parallel workers follow their leader. pgreap's own session and
non-client backends (checkpointer, walwriter, ...) are not listed.

Selectors narrow the list on the server; globs use *. --query is an RE2
regular expression on the query text.

With --pgbouncer (the admin console of each PgBouncer in front of the
server), a backend that is a pooler's server connection shows the client
using it now (CLIENT "ADDR via POOLER", its user and application; JSON
"pooler"), or "pooled, idle"; --user, --app and --client match that
client. A backend whose state changed after the poolers were asked shows
"? via POOLER": the pooler may have handed it to another client, and no
selection by client chooses it.

On a hot standby the first row is WAL replay (the startup process), shown
whatever the selectors: STATE "WAL replay", AGE how long it has waited for
a lock (14+), BLOCKED BY the sessions it waits for ("?" for a buffer pin),
QUERY its lag, the WAL left to replay and the queries the server cancelled
for replay (JSON: backend_type "startup" and a "replay" object). Every row
then has blocking_replay (JSON, CSV); --blocking-replay lists the sessions
that hold replay up.

Exit status: 0 listed, 1 nothing matched, 2 usage or connection error.`,
		Example: `  pgreap ls
  pgreap ls --state active --longer-than 5m
  pgreap ls --db 'shop*' --exclude-user replicator --waiting
  pgreap ls --app 'report*' --query '(?i)^select' -o json
  pgreap ls --client 10.0.0.0/8 -o csv > sessions.csv
  pgreap ls --pgbouncer 'host=pgb1 port=6432 user=stats' --app 'report*'
  pgreap ls -h standby1 --blocking-replay`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if opts.Format, err = f.Format(); err != nil {
				return err
			}
			if _, err := f.ConnConfig(); err != nil {
				return err
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
			return lsRun(cmd.Context(), opts)
		},
	}
	opts.Selectors = selector.AddFlags(cmd.Flags())
	return cmd
}

func lsRun(ctx context.Context, opts *LsOptions) error {
	sel, err := opts.Selectors.Selector()
	if err != nil {
		return usageError(err)
	}
	conn, err := opts.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	pooled, err := lookPooled(ctx, conn, opts.Poolers)
	if err != nil {
		return err
	}
	snap, err := sel.WithPooled(pooled).Take(ctx, conn)
	if err != nil {
		return err
	}
	if err := activity.RowLockHolders(ctx, conn, snap); err != nil {
		return err
	}
	opts.Logger.Debug("snapshot", "sessions", len(snap.Sessions), "server_version", snap.ServerVersion)
	sessions := snap.Sessions
	workers := slices.ContainsFunc(sessions, func(s activity.Session) bool { return s.IsParallelWorker() })
	if workers && !snap.HasLeaderPID() {
		fmt.Fprintln(opts.IO.ErrOut, "pgreap: note: PostgreSQL 12 does not say which leader a parallel worker serves (leader_pid is 13+); workers are listed on their own")
	}
	if len(sessions) == 0 && opts.Format == output.Table && snap.Replay == nil {
		return ErrNoMatch
	}
	rows := make([]output.Row, 0, len(sessions)+1)
	if snap.Replay != nil {
		// A standby: its replay comes first, what holds it up in its
		// BLOCKED BY; shown even when no session matched, since how far
		// behind the standby is matters whatever the selectors.
		rows = append(rows, output.ReplayRow(snap.Replay, snap.Taken))
	}
	for i := range sessions {
		rows = append(rows, output.Row{Session: sessions[i]})
	}
	err = output.WriteRows(opts.IO.Out, opts.Format, rows, output.Options{
		Now:     snap.Taken,
		QueryID: snap.HasQueryID(),
		Color:   opts.Color,
		Width:   opts.IO.Width,
		// A terminal shows CSV too: nothing in it may drive the terminal.
		Terminal: opts.IO.OutTTY,
		Pooler:   pooled != nil,
		Standby:  snap.Replay != nil,
	})
	if err != nil {
		return err
	}
	if len(sessions) == 0 {
		return ErrNoMatch
	}
	return nil
}
