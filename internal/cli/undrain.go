package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/pooler"
)

// UndrainOptions are the inputs of `pgreap undrain`.
type UndrainOptions struct {
	IO         *IOStreams
	Connect    func(context.Context) (*pgx.Conn, error)
	ConnConfig func() (*pgx.ConnConfig, error)
	Now        func() time.Time

	Database string
	// Explicit values, for a database with no record.
	Explicit         bool
	AllowConnections bool
	ConnectionLimit  int32
	// Poolers named with --pgbouncer: their passwords, for the poolers on
	// record (which are reached without one otherwise).
	Poolers []*pooler.Pooler
}

// NewCmdUndrain builds `pgreap undrain`; runF replaces the run in tests.
func NewCmdUndrain(f *Factory, runF func(context.Context, *UndrainOptions) error) *cobra.Command {
	opts := &UndrainOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "undrain NAME",
		Short: "Restore the connection settings a drain recorded",
		Long: `Restore exactly the connection settings (ALLOW_CONNECTIONS, CONNECTION
LIMIT) that 'pgreap drain NAME' recorded before it changed anything, and
print them; then RESUME each pooler the drain paused (--pgbouncer), exactly
those its record names as its own, never a database a pooler had paused
already when the drain came. It works after a drain that was killed at any
moment (a drain killed while PAUSE waited leaves the pooler paused: its
record says so), and a second undrain does nothing. The poolers are reached
as the record says (host, port, user; no password is recorded): name them
again with --pgbouncer when they need a password from the command line
rather than PGPASSWORD or ~/.pgpass. The record is read from $PGREAP_STATE_DIR,
else $XDG_STATE_HOME/pgreap/drain, else ~/.local/state/pgreap/drain, for
the same host and port as the drain connected to; as drain, undrain refuses
(exit 2) a record or directory that is not its user's own, that others may
write, or that is a symbolic link.

Without a record pgreap does not guess: give the values with
--allow-connections and --connection-limit.

On a hot standby undrain refuses at once (exit 2), nothing read, locked
or changed: undrain on the primary; the restored settings reach every
standby by replication.

Exit status: 0 restored (or nothing to do), 2 no record, a standby,
usage or connection error (a pooler that cannot be reached stays
paused: undrain again resumes it).`,
		Example: `  pgreap undrain shop
  pgreap undrain shop --allow-connections=true --connection-limit=-1`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError(errors.New("undrain takes one database name"))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Database = args[0]
			fl := cmd.Flags()
			opts.Explicit = fl.Changed("allow-connections") || fl.Changed("connection-limit")
			if opts.Explicit && !(fl.Changed("allow-connections") && fl.Changed("connection-limit")) {
				return usageError(errors.New("give both --allow-connections and --connection-limit"))
			}
			if opts.ConnectionLimit < -1 {
				return usageError(fmt.Errorf("--connection-limit %d: -1 (no limit) or more", opts.ConnectionLimit))
			}
			if _, err := f.ConnConfig(); err != nil {
				return err
			}
			var err error
			if opts.Poolers, err = f.Poolers(); err != nil {
				return err
			}
			opts.Connect, opts.ConnConfig, opts.Now = f.Connect, f.ConnConfig, time.Now
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return undrainRun(cmd.Context(), opts)
		},
	}
	fs := cmd.Flags()
	fs.BoolVar(&opts.AllowConnections, "allow-connections", true, "without a record: ALLOW_CONNECTIONS to set")
	fs.Int32Var(&opts.ConnectionLimit, "connection-limit", -1, "without a record: CONNECTION LIMIT to set (-1: none)")
	return cmd
}

func undrainRun(ctx context.Context, opts *UndrainOptions) error {
	// Shown as a table would show it: the server's name may carry escape
	// sequences.
	name := output.Clean(opts.Database)
	path, err := drainTarget(opts.Database, opts.ConnConfig)
	if err != nil {
		return err
	}
	// Before the lock and the record: a standby has nothing to restore.
	conn, err := connectPrimary(ctx, opts.Connect, "undrain")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	unlock, err := lockRecord(path, opts.ConnConfig, opts.Database)
	if err != nil {
		return err
	}
	defer unlock()
	rec, err := maintenance.ReadRecord(path)
	switch {
	case errors.Is(err, os.ErrNotExist) && !opts.Explicit:
		cfg, _ := opts.ConnConfig()
		if other := maintenance.Elsewhere(path, cfg.Port, opts.Database); other != nil {
			return usageError(fmt.Errorf("no drain record for %s under this host name; it was drained as host %s (port %d): undrain it with -h %s",
				name, output.Clean(other.Host), other.Port, output.ShellQuote(other.Host)))
		}
		return usageError(fmt.Errorf("no drain record for %s at %s: pgreap does not guess; give the values (--allow-connections=true --connection-limit=-1)", name, path))
	case errors.Is(err, os.ErrNotExist):
		rec = nil
	case err != nil:
		return usageError(fmt.Errorf("%w; nothing done", err))
	}
	if opts.Explicit {
		var pauses []maintenance.PoolerPause
		if rec != nil {
			// The values are the user's; the pauses on record still
			// need their RESUME.
			pauses = rec.Poolers
		}
		cfg, _ := opts.ConnConfig()
		rec = &maintenance.Record{Host: cfg.Host, Port: cfg.Port, Database: opts.Database,
			AllowConnections: opts.AllowConnections, ConnectionLimit: opts.ConnectionLimit, RecordedAt: opts.Now().UTC(), Poolers: pauses}
	}
	settings, err := readSettings(ctx, conn, opts.Database)
	if err != nil {
		return err
	}
	values := fmt.Sprintf("ALLOW_CONNECTIONS %t, CONNECTION LIMIT %d", rec.AllowConnections, rec.ConnectionLimit)
	if rec.RestoredAt != nil && !opts.Explicit {
		// Undone already: do not override what was changed since.
		fmt.Fprintf(opts.IO.Out, "%s: already restored at %s (%s); now ALLOW_CONNECTIONS %t, CONNECTION LIMIT %d\n",
			name, rec.RestoredAt.Format(time.RFC3339), values, settings.AllowConnections, settings.ConnectionLimit)
		// A pooler an earlier undrain could not reach is still paused.
		return undrainResume(ctx, opts, path, rec)
	}
	if !settings.MayAlter {
		return usageError(fmt.Errorf("database %q: restoring its settings needs its owner or a superuser (ALTER DATABASE)", opts.Database))
	}
	if err := maintenance.Restore(ctx, conn, opts.Database, rec.AllowConnections, rec.ConnectionLimit); err != nil {
		return err
	}
	now := opts.Now().UTC()
	rec.RestoredAt = &now
	if err := maintenance.WriteRecord(path, rec); err != nil {
		return fmt.Errorf("%s restored (%s), but the record could not be marked: %w", name, values, err)
	}
	fmt.Fprintf(opts.IO.Out, "%s: restored %s (recorded at %s)\n", name, values, rec.RecordedAt.Format(time.RFC3339))
	// The database first: the clients the poolers let go find it open.
	return undrainResume(ctx, opts, path, rec)
}

// undrainResume sends RESUME for exactly the pauses the drain recorded as
// its own, each marked in the record once done; a pause that was someone
// else's is left, and said so.
func undrainResume(ctx context.Context, opts *UndrainOptions, path string, rec *maintenance.Record) error {
	name := output.Clean(opts.Database)
	for _, p := range rec.Poolers {
		if p.State == maintenance.PauseOthers {
			fmt.Fprintf(opts.IO.Out, "%s: left paused on %s: it was paused before the drain, by someone else\n", name, pauseName(p, opts.Database))
		}
	}
	before := rec.Poolers
	ps, err := maintenance.ResumeRecorded(ctx, rec.Poolers, opts.Poolers, opts.Now().UTC(), func(ps []maintenance.PoolerPause) error {
		rec.Poolers = ps
		return maintenance.WriteRecord(path, rec)
	})
	for i, p := range ps {
		switch {
		case p.State == before[i].State:
		case p.State == maintenance.PauseNotServed:
			fmt.Fprintf(opts.IO.Out, "%s: nothing to resume on %s: the pooler does not know that name (no such database)\n", name, pauseName(p, opts.Database))
		default:
			fmt.Fprintf(opts.IO.Out, "%s: resumed on %s\n", name, pauseName(p, opts.Database))
		}
	}
	if err != nil {
		return fmt.Errorf("%w; %s is still paused there: %s again resumes it", err, name, undrainHint(opts.Database))
	}
	return nil
}
