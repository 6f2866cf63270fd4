package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/cobra"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/ownfile"
	"github.com/pgreap/pgreap/internal/pooler"
)

// DrainOptions are the inputs of `pgreap drain`.
type DrainOptions struct {
	IO         *IOStreams
	Connect    func(context.Context) (*pgx.Conn, error)
	ConnConfig func() (*pgx.ConnConfig, error)
	Logger     *slog.Logger
	Now        func() time.Time

	Format             output.Format
	Color              bool
	Database           string
	Timeout            time.Duration
	Escalate           bool
	Grace              time.Duration
	DryRun             bool
	IncludeReplication bool
	IncludeAutovacuum  bool
	// Poolers are the PgBouncers in front of the server (--pgbouncer):
	// paused first.
	Poolers []*pooler.Pooler
}

// NewCmdDrain builds `pgreap drain`; runF replaces the run in tests.
func NewCmdDrain(f *Factory, runF func(context.Context, *DrainOptions) error) *cobra.Command {
	opts := &DrainOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "drain NAME",
		Short: "Block new connections to a database, end its sessions, hold it empty",
		Long: `Drain a database for maintenance:

 1. record its connection settings (datallowconn, datconnlimit) in a local
    file, written and synced before anything changes;
 2. block new connections: ALTER DATABASE NAME ALLOW_CONNECTIONS false
    (superusers included; it needs the database's owner or a superuser;
    CONNECTION LIMIT 0 needs the same and lets superusers in, so drain
    never falls back to it);
 3. terminate its client sessions, through the guard of terminate, until
    none is left (--escalate cancels first and terminates what is left
    after --grace);
 4. hold it: the database stays blocked until 'pgreap undrain NAME'.

With --pgbouncer (the admin console of each PgBouncer in front of the
server; repeatable, or PGREAP_PGBOUNCER), the poolers come first, so that
pooled clients wait instead of failing:

 0. PAUSE NAME on every pooler (each name under which it serves NAME, or
    NAME itself for a * entry), all at once, each on a connection of its
    own, each recorded before it is sent. A pause is done when the pooler
    holds no server connection of NAME any more. The transactions in
    flight get --grace; then the backends of the server connections that
    still hold PAUSE up are terminated, through the guard. A pooler not
    paused by --timeout has every pause of this drain rolled back (RESUME):
    drain names who held it up and exits 3, nothing blocked, nothing held.
    A database the pooler had paused already (someone else's pause) is
    left as it is, and undrain does not resume it.

Then steps 1 to 4 end what is left (direct clients, the idle server
connections of other poolers). While held, pooled clients wait in the
pooler for as long as its query_wait_timeout allows (default 120s; 0 waits
forever): set it above the window before the drain (docs/maintenance.md).
In session mode a client keeps its server connection until it leaves, so
every connected client holds PAUSE up and, after --grace, sees its
connection end; the clients that come after wait.

ALLOW_CONNECTIONS false keeps every client out, not autovacuum: its
workers still start in the database when a table needs it. drain leaves
them alone (they are not clients) and says so; --include-autovacuum ends
those present at each round.

While it works, drain shows how many sessions are left on one line of
standard error, when that is a terminal. After --timeout (default 60s)
with sessions still connected, drain lists them and exits 3: the database
stays blocked (and paused on the poolers). pgreap never connects to the
database it drains.

On a hot standby drain refuses at once (exit 2), before anything is
recorded or changed, --dry-run too: a standby replays the primary's
pg_database, so drain on the primary; the block reaches every standby by
replication. It does not end the sessions already on a standby: once the
standby has replayed the block, 'pgreap kick --db NAME' there ends them
(docs/maintenance.md, "A primary and its standbys").

--dry-run changes nothing: it says on standard error what drain would
record (the record's path, datallowconn and datconnlimit) and set
(ALLOW_CONNECTIONS false), and lists the sessions its first round would
end, judged as that round would judge them: planned, or protected or
denied with the reason; with --escalate, the running queries it would
cancel first; with --pgbouncer, the PAUSE each pooler would get and the
pooled transactions that would hold it up now. It writes no record, alters
nothing, pauses nothing, asks nothing. On a
database drained already, it says the record drain would keep. Its -o
json rows are no plan for 'pgreap apply' (which would end the sessions
and block nothing): 'pgreap kick --db NAME --dry-run -o json' is. It exits
3 when some session is one drain could not end (denied, a walsender
without --include-replication): a real drain would not empty the
database.

The record lives in $PGREAP_STATE_DIR, else $XDG_STATE_HOME/pgreap/drain,
else ~/.local/state/pgreap/drain; undrain reads it there, even after drain
was killed. pgreap creates the directory 0700 and the record 0600, and
trusts them only when they are its user's own: a record or directory owned
by another user (even for root), writable by its group or others, or a
symbolic link, or a directory inside one others may write (a sticky one
such as /tmp excepted), is refused with exit 2, nothing done.

Exit status: 0 drained and held (with --dry-run: drain would be), 2
usage or connection error, no privilege or a standby (nothing done; a
pooler that fails mid-way has the pauses rolled back), 3 sessions left at the timeout
or interrupted (the database stays blocked), or a pooler not paused by
--timeout (rolled back).`,
		Example: `  pgreap drain shop --dry-run
  pgreap drain shop
  pgreap drain shop --timeout 5m --escalate --grace 30s
  pgreap drain shop --pgbouncer 'host=pgb1 port=6432 user=pgbouncer' --grace 5s
  pgreap undrain shop`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError(errors.New("drain takes one database name"))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			opts.Database = args[0]
			if opts.Format, err = f.Format(); err != nil {
				return err
			}
			if _, err := f.ConnConfig(); err != nil {
				return err
			}
			if opts.Poolers, err = f.Poolers(); err != nil {
				return err
			}
			if opts.Timeout <= 0 || opts.Grace < 0 {
				return usageError(errors.New("--timeout must be more than zero and --grace not negative"))
			}
			opts.Color, opts.Connect, opts.ConnConfig, opts.Logger, opts.Now = f.Color(), f.Connect, f.ConnConfig, f.Logger(), time.Now
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return drainRun(cmd.Context(), opts)
		},
	}
	fs := cmd.Flags()
	fs.DurationVar(&opts.Timeout, "timeout", 60*time.Second, "give up after `D`, leaving the database blocked (with --pgbouncer: the poolers not paused by then are rolled back)")
	fs.BoolVar(&opts.Escalate, "escalate", false, "cancel running queries first, terminate what is left after --grace")
	fs.DurationVar(&opts.Grace, "grace", 10*time.Second, "how long queries get to end after the cancel with --escalate, and the transactions that hold PAUSE up with --pgbouncer (`D`)")
	fs.BoolVar(&opts.IncludeReplication, "include-replication", false, "end walsenders of the database too")
	fs.BoolVar(&opts.IncludeAutovacuum, "include-autovacuum", false, "end autovacuum workers of the database too")
	fs.BoolVar(&opts.DryRun, "dry-run", false, "change nothing: say what drain would record and block, and list the sessions it would end")
	return cmd
}

// drainTarget checks the name and where pgreap connects, and returns the
// record's path.
func drainTarget(name string, connConfig func() (*pgx.ConnConfig, error)) (string, error) {
	if strings.Contains(name, "*") {
		return "", usageError(fmt.Errorf("database %q: drain takes one database name, not a glob", name))
	}
	cfg, err := connConfig()
	if err != nil {
		return "", err
	}
	if cfg.Database == name {
		return "", usageError(fmt.Errorf("pgreap would connect to %q itself: connect to another database (e.g. -d dbname=postgres)", name))
	}
	dir, err := maintenance.Records()
	if err != nil {
		return "", usageError(err)
	}
	return maintenance.RecordPath(dir, cfg.Host, cfg.Port, name), nil
}

// lockRecord holds the database's drain record for this drain or undrain.
func lockRecord(path string, cfg func() (*pgx.ConnConfig, error), db string) (func(), error) {
	name := output.Clean(db)
	c, err := cfg()
	if err != nil {
		return nil, err
	}
	unlock, err := maintenance.LockRecord(filepath.Dir(path), c.Port, db)
	if errors.Is(err, maintenance.ErrBusy) {
		return nil, usageError(fmt.Errorf("%s: %w; nothing done", name, err))
	}
	if err != nil {
		return nil, usageError(fmt.Errorf("%w; nothing done", err))
	}
	return unlock, nil
}

// undrainHint is the command that reopens a database, to paste: the name
// shell-quoted when it needs it (a plain one stays as it is, in quotes
// that frame the command), and after -- when it looks like a flag.
func undrainHint(name string) string {
	q := output.ShellQuote(name)
	if strings.HasPrefix(name, "-") {
		q = "-- " + q
	}
	if q == name {
		return "'pgreap undrain " + name + "'"
	}
	return "pgreap undrain " + q
}

func drainRun(ctx context.Context, opts *DrainOptions) error {
	// The name is the server's too (a database may be named with escape
	// sequences): messages show it as a table would.
	name := output.Clean(opts.Database)
	path, err := drainTarget(opts.Database, opts.ConnConfig)
	if err != nil {
		return err
	}
	conn, settings, err := openSettings(ctx, opts.Connect, opts.Database)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if !settings.MayAlter {
		return usageError(fmt.Errorf("database %q: blocking new connections needs its owner or a superuser (ALTER DATABASE); nothing done", opts.Database))
	}
	if !opts.DryRun {
		unlock, err := lockRecord(path, opts.ConnConfig, opts.Database)
		if err != nil {
			return err
		}
		defer unlock()
	}
	rec, kept, err := drainRecord(opts, path, settings)
	if err != nil {
		return err
	}
	var admins []*pooler.Admin
	var here *maintenance.Here
	if len(opts.Poolers) > 0 {
		if admins, err = pooler.ConnectAll(ctx, opts.Poolers); err != nil {
			return err
		}
		defer pooler.CloseAll(admins)
		if !opts.DryRun {
			if err := pooler.CheckAdminAll(ctx, admins); err != nil {
				return usageError(fmt.Errorf("%w; nothing done", err))
			}
		}
		var earlier []maintenance.PoolerPause
		if kept {
			earlier = rec.Poolers
		}
		if here, err = maintenance.LookHere(ctx, conn, admins); err != nil {
			return err
		}
		if rec.Poolers, err = maintenance.PlanPause(ctx, admins, opts.Database, earlier, here); err != nil {
			return err
		}
	}
	if opts.DryRun {
		return drainDryRun(ctx, opts, conn, admins, path, settings, rec, kept)
	}
	// The record first: whatever happens next, undrain can restore.
	if kept {
		fmt.Fprintf(opts.IO.ErrOut, "pgreap: %s: already drained; keeping the settings recorded at %s in %s\n",
			name, rec.RecordedAt.Format(time.RFC3339), path)
	} else if err := maintenance.WriteRecord(path, rec); err != nil {
		return usageError(fmt.Errorf("cannot record %s's settings: %w; nothing done", name, err))
	}
	var ended []action.Result
	if len(admins) > 0 {
		// The poolers first: once paused, their clients wait instead of
		// failing on a blocked database.
		if ended, err = drainPause(ctx, opts, conn, admins, here, path, rec, kept); err != nil {
			if len(ended) > 0 {
				if werr := writeResults(opts.IO, opts.Format, opts.Color, &action.Plan{Taken: opts.Now()}, ended, false); werr != nil {
					return werr
				}
			}
			return err
		}
	}
	held := fmt.Sprintf("%s stays blocked: %s reopens it", name, undrainHint(opts.Database))
	if slices.ContainsFunc(rec.Poolers, func(p maintenance.PoolerPause) bool { return p.Ours() }) {
		held = fmt.Sprintf("%s stays blocked and paused on its poolers: %s reopens it and resumes them", name, undrainHint(opts.Database))
	}
	if err := maintenance.Block(ctx, conn, opts.Database); err != nil {
		if !pgconn.SafeToRetry(err) && blockedNow(ctx, opts) {
			// Cut off (an interrupt) after the ALTER DATABASE had
			// committed: the database is blocked, whatever the error.
			return drainStopped(opts, err, held)
		}
		if !kept {
			// Nothing is held: the pauses are lifted again.
			return fmt.Errorf("%w%s", err, drainResume(ctx, opts, admins, path, rec))
		}
		return err
	}
	fmt.Fprintf(opts.IO.ErrOut, "pgreap: %s: new connections refused, superusers' too (ALLOW_CONNECTIONS false); settings recorded in %s\n", name, path)

	dopts := drainOptions(opts)
	if opts.IO.ErrTTY {
		// Redrawn with \r on standard error: only a terminal there shows
		// it as one line; a log would get them all.
		dopts.Progress = func(left int, elapsed time.Duration) {
			fmt.Fprintf(opts.IO.ErrOut, "\r%s: %d session%s left, %.1fs ", name, left, plural(left), elapsed.Seconds())
		}
	}
	d, err := maintenance.Drain(ctx, conn, opts.Database, dopts)
	if err != nil {
		return drainStopped(opts, err, held)
	}
	if opts.IO.ErrTTY {
		fmt.Fprintln(opts.IO.ErrOut)
	}
	held += autovacuumNote(opts, d.Autovacuum)
	if n := d.Left; n > 0 {
		if err := writeResults(opts.IO, opts.Format, opts.Color, d.Last, d.Last.Results, false); err != nil {
			return err
		}
		return incomplete(fmt.Errorf("%s: %d session%s still connected after %s; %s", name, n, plural(n), opts.Timeout, held))
	}
	rows := append(ended, d.Ended...)
	if len(rows) > 0 || opts.Format != output.Table {
		if err := writeResults(opts.IO, opts.Format, opts.Color, d.Last, rows, false); err != nil {
			return err
		}
	}
	fmt.Fprintf(opts.IO.ErrOut, "pgreap: %s is drained (%d session%s ended) and held: %s reopens it%s%s%s\n",
		name, len(rows), plural(len(rows)), undrainHint(opts.Database), pausedNote(ctx, opts, admins, rec), autovacuumNote(opts, d.Autovacuum), preparedNote(ctx, opts, conn))
	return nil
}

// preparedNote says what a drained database still holds: a prepared
// transaction has no session, so drain neither counts nor ends it, yet it
// keeps its locks, and DROP DATABASE refuses while one is there.
func preparedNote(ctx context.Context, opts *DrainOptions, conn *pgx.Conn) string {
	prepared, err := activity.PreparedIn(ctx, conn, opts.Database)
	if err != nil {
		opts.Logger.Warn("cannot list the database's prepared transactions", "err", err)
		return ""
	}
	if len(prepared) == 0 {
		return ""
	}
	names := make([]string, len(prepared))
	for i, p := range prepared {
		names[i] = fmt.Sprintf("'%s' of %s, prepared %s ago", output.Clean(p.GID), output.Clean(p.Usename), output.Age(opts.Now().Sub(p.XactStart)))
	}
	verb := "holds its"
	if len(prepared) > 1 {
		verb = "hold their"
	}
	// ROLLBACK PREPARED and COMMIT PREPARED run only connected to the
	// database, which the drain keeps everyone out of.
	return fmt.Sprintf("; %d prepared transaction%s in it (%s) %s locks with no session: ROLLBACK PREPARED or COMMIT PREPARED ends them, connected to %s, so before a drain or after %s",
		len(prepared), plural(len(prepared)), strings.Join(names, "; "), verb, output.Clean(opts.Database), undrainHint(opts.Database))
}

// autovacuumNote says what a blocked database still lets in: ALLOW_CONNECTIONS
// false keeps out every client, superusers too, but not autovacuum, which
// starts its workers in the database whenever a table needs it.
func autovacuumNote(opts *DrainOptions, present []int32) string {
	switch {
	case opts.IncludeAutovacuum:
		return "; autovacuum can still start workers in it (ALLOW_CONNECTIONS does not keep them out): --include-autovacuum ended those it found"
	case len(present) > 0:
		pids := make([]string, len(present))
		for i, p := range present {
			pids[i] = strconv.Itoa(int(p))
		}
		return fmt.Sprintf("; autovacuum is working in it (pid %s) and can start more workers (ALLOW_CONNECTIONS does not keep them out): --include-autovacuum ends them", strings.Join(pids, ", "))
	}
	return "; autovacuum can still start workers in it (ALLOW_CONNECTIONS does not keep them out; --include-autovacuum ends them)"
}

// drainStopped: interrupted or failed after the database was blocked.
func drainStopped(opts *DrainOptions, err error, held string) error {
	if opts.IO.ErrTTY {
		fmt.Fprintln(opts.IO.ErrOut)
	}
	if errors.Is(err, context.Canceled) {
		err = errors.New("interrupted")
	}
	return incomplete(fmt.Errorf("%s: %w; %s", output.Clean(opts.Database), err, held))
}

// connectPrimary connects for drain or undrain (verb) and refuses a
// standby, before anything is locked, recorded or changed.
func connectPrimary(ctx context.Context, connect func(context.Context) (*pgx.Conn, error), verb string) (*pgx.Conn, error) {
	conn, err := connect(ctx)
	if err != nil {
		return nil, err
	}
	if err := maintenance.Primary(ctx, conn, verb); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		if errors.Is(err, maintenance.ErrStandby) {
			err = usageError(err)
		}
		return nil, err
	}
	return conn, nil
}

// readSettings reads the database's connection settings; a database that
// does not exist is bad input.
func readSettings(ctx context.Context, conn *pgx.Conn, name string) (*maintenance.Settings, error) {
	settings, err := maintenance.ReadSettings(ctx, conn, name)
	if errors.Is(err, maintenance.ErrNoDatabase) {
		err = usageError(err)
	}
	return settings, err
}

// openSettings connects to the primary and reads the database's
// connection settings.
func openSettings(ctx context.Context, connect func(context.Context) (*pgx.Conn, error), name string) (*pgx.Conn, *maintenance.Settings, error) {
	conn, err := connectPrimary(ctx, connect, "drain")
	if err != nil {
		return nil, nil, err
	}
	settings, err := readSettings(ctx, conn, name)
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, nil, err
	}
	return conn, settings, nil
}

// blockedNow reports whether the database refuses connections, read on a
// connection of its own (the one whose statement was cut off is gone):
// an ALTER DATABASE interrupted after its commit has blocked it. Unknown
// (no connection) counts as blocked: undrain is the safe advice.
func blockedNow(ctx context.Context, opts *DrainOptions) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	conn, settings, err := openSettings(ctx, opts.Connect, opts.Database)
	if err != nil {
		return true
	}
	defer conn.Close(ctx)
	return !settings.AllowConnections
}

// drainOptions are the flags of drain as maintenance.Drain takes them.
func drainOptions(opts *DrainOptions) maintenance.DrainOptions {
	return maintenance.DrainOptions{Timeout: opts.Timeout, Escalate: opts.Escalate, Grace: opts.Grace,
		IncludeReplication: opts.IncludeReplication, IncludeAutovacuum: opts.IncludeAutovacuum, Now: opts.Now}
}

// drainRecord is the record a drain works under: the one of a drain not yet
// undone, kept (a second drain must not record the blocked state as the
// one to restore), else a new one of the settings now.
func drainRecord(opts *DrainOptions, path string, settings *maintenance.Settings) (rec *maintenance.Record, kept bool, err error) {
	rec, err = maintenance.ReadRecord(path)
	switch {
	case err == nil && rec.RestoredAt == nil:
		return rec, true, nil
	case err == nil || errors.Is(err, os.ErrNotExist):
		cfg, _ := opts.ConnConfig()
		if other := maintenance.Elsewhere(path, cfg.Port, opts.Database); other != nil {
			// Recording the blocked database as its settings would have
			// undrain keep it blocked.
			return nil, false, usageError(fmt.Errorf("%s is drained already, recorded for host %s (port %d) at %s: drain and undrain it with -h %s; nothing done",
				output.Clean(opts.Database), output.Clean(other.Host), other.Port, other.RecordedAt.Format(time.RFC3339), output.ShellQuote(other.Host)))
		}
		return &maintenance.Record{Host: cfg.Host, Port: cfg.Port, Database: opts.Database,
			AllowConnections: settings.AllowConnections, ConnectionLimit: settings.ConnectionLimit, RecordedAt: opts.Now().UTC()}, false, nil
	}
	if errors.Is(err, ownfile.ErrNotOwn) {
		return nil, false, usageError(fmt.Errorf("%w; nothing done", err))
	}
	return nil, false, usageError(fmt.Errorf("%w; nothing done (remove it, or restore by hand, if it is damaged)", err))
}

// drainDryRun says, on standard error, what drain would record and block,
// and prints the sessions its first round would end, judged by the
// signalling statement as the real round is, without a signal. It writes
// nothing and alters nothing; its reads take no lock that holds anyone up.
func drainDryRun(ctx context.Context, opts *DrainOptions, conn *pgx.Conn, admins []*pooler.Admin, path string, settings *maintenance.Settings, rec *maintenance.Record, kept bool) error {
	name, w := output.Clean(opts.Database), opts.IO.ErrOut
	recorded := fmt.Sprintf("datallowconn %t, datconnlimit %d", rec.AllowConnections, rec.ConnectionLimit)
	if kept {
		fmt.Fprintf(w, "pgreap: dry run: %s is drained already: drain would keep the settings recorded at %s in %s (%s), the ones undrain restores\n",
			name, rec.RecordedAt.Format(time.RFC3339), path, recorded)
	} else {
		note := ""
		if !rec.AllowConnections {
			note = "; it refuses connections now, so undrain would leave it so"
		}
		fmt.Fprintf(w, "pgreap: dry run: drain would first record %s's settings in %s: %s%s\n", name, path, recorded, note)
	}
	if err := dryRunPauses(ctx, opts, conn, admins, rec); err != nil {
		return err
	}
	now := ""
	if !settings.AllowConnections {
		now = " (it is false now)"
	}
	fmt.Fprintf(w, "pgreap: dry run: drain would then set ALLOW_CONNECTIONS false on %s%s: new connections refused, superusers' too\n", name, now)

	plan, err := action.Choose(ctx, conn, maintenance.DrainRequest(opts.Database, drainOptions(opts)))
	if err != nil {
		return err
	}
	if _, err := action.Execute(ctx, conn, plan, action.Options{DryRun: true}); err != nil {
		return err
	}
	autovacuum := maintenance.AutovacuumIn(plan)
	n := plan.Count(action.Planned)
	how := fmt.Sprintf("terminate %d session%s (planned)", n, plural(n))
	if opts.Escalate {
		how = fmt.Sprintf("end %d session%s (planned), cancelling the running queries and terminating the others, then terminating what still runs the same query after --grace %s,",
			n, plural(n), opts.Grace)
		for i := range plan.Results {
			if r := &plan.Results[i]; r.Outcome == action.Planned && (r.State == "active" || r.State == "fastpath function call") {
				r.Detail = fmt.Sprintf("runs a query: cancelled first, terminated if it still runs it after --grace %s", opts.Grace)
			}
		}
	}
	if len(plan.Results) > 0 || opts.Format != output.Table {
		if err := writeResults(opts.IO, opts.Format, opts.Color, plan, plan.Results, false); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "pgreap: dry run: drain would %s and look again until none is left, for up to --timeout %s; then hold %s blocked until %s%s%s\n",
		how, opts.Timeout, name, undrainHint(opts.Database), autovacuumNote(opts, autovacuum), preparedNote(ctx, opts, conn))
	if left := drainCannotEnd(plan, autovacuum); left > 0 {
		return incomplete(fmt.Errorf("dry run: %s: %d session%s drain could not end (see detail): a drain would not empty it, and would exit 3 at --timeout %s, leaving %s blocked; nothing was changed",
			name, left, plural(left), opts.Timeout, name))
	}
	fmt.Fprintf(w, "pgreap: dry run: nothing was changed\n")
	return nil
}

// drainCannotEnd counts the sessions a drain would still find at its
// timeout: refused (denied, or protected: a walsender, a background worker),
// but for autovacuum workers, which drain leaves alone, and parallel
// workers and backends starting or exiting, which do not stay.
func drainCannotEnd(plan *action.Plan, autovacuum []int32) int {
	n := 0
	for _, r := range plan.Results {
		switch {
		case r.Outcome != action.Denied && r.Outcome != action.Protected,
			slices.Contains(autovacuum, r.PID),
			r.Outcome == action.Protected && (r.BackendType == "parallel worker" || r.BackendType == ""):
			continue
		}
		n++
	}
	return n
}
