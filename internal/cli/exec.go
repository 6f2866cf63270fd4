package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/output"
)

// ExecOptions are the inputs of `pgreap exec`.
type ExecOptions struct {
	IO      *IOStreams
	Connect func(context.Context) (*pgx.Conn, error)
	// ConnectSQL opens the session that runs the SQL: pgreap's, with the
	// search_path the server, database and role give (psql's), not
	// pgreap's own.
	ConnectSQL func(context.Context) (*pgx.Conn, error)
	Logger     *slog.Logger

	Format      output.Format
	Color       bool
	SQL         string
	File        string
	LockTimeout time.Duration
	Attempts    int
	Between     time.Duration
	Clear       string
	Yes         bool
}

// clearKinds are --clear's values and what each does to a blocker.
var clearKinds = map[string]action.Kind{"none": "", "cancel": action.Cancel, "terminate": action.Terminate}

// minLockTimeout: a shorter wait ends before a look (every 20ms) can see
// who holds it up.
const minLockTimeout = 100 * time.Millisecond

// NewCmdExec builds `pgreap exec`; runF replaces the run in tests.
func NewCmdExec(f *Factory, runF func(context.Context, *ExecOptions) error) *cobra.Command {
	opts := &ExecOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "exec (-c SQL | -f FILE) [--lock-timeout D] [--attempts N] [--between D] [--clear none|cancel|terminate]",
		Short: "Run DDL without a lock queue, ending exactly what blocks it",
		Long: `Run SQL (a migration's ALTER TABLE, say) in pgreap's own session with a short
lock_timeout, so that it never holds a queue behind it: a statement that
waits for a lock makes every later request for a conflicting lock on that
table wait behind it, and the outage is that queue, not the DDL.

While an attempt waits, a second session of pgreap's looks (every 20ms) at
the lock it waits for and who holds it up: of pg_blocking_pids of its
backend, those holding a granted lock on that object that conflicts (a
session merely queued ahead of the attempt holds nothing and is never
ended). When --lock-timeout ends the attempt (SQLSTATE 55P03), exec ends
those blockers per --clear, through the guard: each is pinned by its
identity and its query as last seen, and signalled only if it still holds
a lock on that object in a mode that conflicts with the one the attempt
asked for; one that moved on is changed and left alone. Then it
waits --between and tries again, up to --attempts times. Only the wait
that timed out counts: the last one seen lasting the whole lock timeout.
A shorter wait before it (an earlier statement's) or after it (a
function's exception handler that re-raised the timeout) ends no one, nor
does a timeout no look saw ("no one seen"); another 55P03 (LOCK ...
NOWAIT, FOR UPDATE NOWAIT, a RAISE) is an error of the SQL.

--clear terminate (the default) terminates them: a cancel does not end a
transaction, and a session idle in its transaction keeps its locks.
--clear cancel only cancels their queries; --clear none is the retry loop
alone. A prepared transaction among the blockers is shown and never
touched (ROLLBACK PREPARED ends it): it blocks every attempt. This exec's
own two sessions, parallel workers, walsenders and autovacuum workers are
never ended (an autovacuum that blocks a lock request cancels itself after
deadlock_timeout); another exec's SQL session is an ordinary blocker: it
runs someone's SQL, and is ended like any holder.

The SQL runs in the database the connection string (-d 'dbname=NAME', a
URL's path, a service) or PGDATABASE names: without one, exec refuses
(exit 2) rather than guess.

-c runs one string as psql -c does: several statements run in one
transaction. -f runs a file the same way, as one query: its statements
commit together, or not at all, unless the file has its own BEGIN, COMMIT
or ROLLBACK (then exec says so: a retry runs the file again from its start;
an attempt that fails after a COMMIT of it completed says that what ran
before it committed, and one that times out then is not tried again: exit 3).
FILE is a regular file of at most 16 MiB, without a NUL byte (a UTF-8 byte order mark is
dropped, as psql does), named by a path with no symbolic link in any of
its components (another user's link could make pgreap read a file only
you may read): give the path without links. -f - reads the SQL from
standard input, as psql -f - does (not from a terminal; ending sessions
then needs --yes, as standard input holds the SQL).

A transaction the SQL leaves open is rolled back, and that is an error,
as is SQL whose last transaction ends in ROLLBACK
(the message says what an earlier COMMIT of it committed, which stays).
The SQL runs under the session's statement_timeout (pgreap's 30s, unless
the connection string or PGOPTIONS set it, e.g. -d 'options=-cstatement_timeout=0').

A holder that itself waits for a lock (an UPDATE holding a row's tuple
lock while it waits for the transaction that updated the row) is that
transaction's victim: named ("via PID, itself waiting"), never ended.

Refused (exit 2, nothing run): SQL with CONCURRENTLY (a timed-out attempt
leaves an invalid index, and it waits for every older transaction, on any
table); CALL and DO (a procedure or block may COMMIT or ROLLBACK inside,
and exec could not tell what committed); PREPARE TRANSACTION, COMMIT
PREPARED and ROLLBACK PREPARED (a prepared transaction keeps the DDL's
locks after exec ends, with no session to end: exec is no two-phase
commit coordinator); SQL that calls set_config or writes pg_settings
(either can set lock_timeout under a computed name), or has a U&"..."
identifier (which can spell it in escapes); SQL that sets or names
lock_timeout (exec owns it: an attempt seen waiting on one lock longer
than --lock-timeout and 100ms is cancelled all the same, a lock timeout); a
--lock-timeout not shorter than a non-zero statement_timeout; a connection
through a pooler such as PgBouncer (pg_backend_pid() is not the backend
the protocol names: exec needs a server session of its own).
Ending sessions asks first on a terminal; without one, --yes is needed
(checked before the first attempt).

Each attempt is printed (how long it ran, what it waited for, who blocked
it), and after it the sessions ended, with their outcomes as terminate
has them. JSON has one object per attempt (attempt, waited_ms, outcome:
committed, lock timeout or error; blocked_by, blocked_by_prepared,
detail), each followed by the result rows of the sessions ended after it,
which have terminate's fields; CSV has the columns attempt and waited_ms
first, set on attempt rows.

Exit status: 0 the SQL committed, 2 usage or connection error, or an SQL
error other than a lock timeout (as the server gave it; never tried
again: a deadlock and a statement timeout are such errors), 3 gave up
after --attempts (the message names who blocked the last attempt), or an
attempt timed out after a COMMIT of the SQL (not tried again).`,
		Example: `  pgreap exec -d 'dbname=shop' -c 'ALTER TABLE orders ADD COLUMN note text' --yes
  pgreap exec -d 'dbname=shop' -f migrate.sql --lock-timeout 1s --attempts 5
  pgreap exec -d 'dbname=shop' -f - --yes < migrate.sql
  pgreap exec -d 'dbname=shop' -c 'ALTER TABLE orders ADD COLUMN note text' --clear none   # retry only
  pgreap exec -d 'dbname=shop' -c 'CREATE INDEX ON orders (customer_id)' --clear cancel -o json --yes   # not CONCURRENTLY: refused`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if opts.Format, err = f.Format(); err != nil {
				return err
			}
			f.conn.NeedDatabase = "exec"
			if _, err := f.ConnConfig(); err != nil {
				return err
			}
			if err := opts.check(cmd.Context(), cmd.Flags().Changed("command")); err != nil {
				return usageError(err)
			}
			opts.Color, opts.Connect, opts.Logger = f.Color(), f.Connect, f.Logger()
			// The SQL's names mean what they mean to psql.
			opts.ConnectSQL = f.ConnectUser
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return execRun(cmd.Context(), opts)
		},
	}
	fs := cmd.Flags()
	fs.StringVarP(&opts.SQL, "command", "c", "", "the SQL to run (one string; several statements run in one transaction)")
	fs.StringVarP(&opts.File, "file", "f", "", "run the SQL in `FILE` (in one transaction unless it has its own; - reads standard input)")
	fs.DurationVar(&opts.LockTimeout, "lock-timeout", 2*time.Second, "lock_timeout of each attempt (`D`, at least 100ms)")
	fs.IntVar(&opts.Attempts, "attempts", 10, "how many times to try (`N`)")
	fs.DurationVar(&opts.Between, "between", time.Second, "how long to wait before the next attempt (`D`)")
	fs.StringVar(&opts.Clear, "clear", "terminate", "what to do to the sessions that blocked an attempt: none, cancel or terminate")
	fs.BoolVarP(&opts.Yes, "yes", "y", false, "do not ask before ending sessions: needed without a terminal")
	return cmd
}

// check validates the flags and reads -f, before anything is done.
func (opts *ExecOptions) check(ctx context.Context, command bool) error {
	switch {
	case command && opts.File != "":
		return errors.New("-c and -f: give one of them")
	case !command && opts.File == "":
		return errors.New("exec needs the SQL: -c SQL or -f FILE")
	case opts.LockTimeout < minLockTimeout:
		return fmt.Errorf("--lock-timeout %s: must be at least %s (shorter waits end before pgreap can see who holds them up)", opts.LockTimeout, minLockTimeout)
	case opts.Attempts < 1:
		return fmt.Errorf("--attempts %d: must be 1 or more", opts.Attempts)
	case opts.Between < 0:
		return fmt.Errorf("--between %s: must not be negative", opts.Between)
	}
	if _, ok := clearKinds[opts.Clear]; !ok {
		return fmt.Errorf("--clear %q: must be none, cancel or terminate", opts.Clear)
	}
	if opts.File != "" {
		sql, err := opts.readSQL(ctx)
		if err != nil {
			return err
		}
		opts.SQL = sql
	}
	if strings.TrimSpace(opts.SQL) == "" {
		return errors.New("the SQL is empty")
	}
	if concurrently.MatchString(opts.SQL) {
		return errors.New("the SQL has CONCURRENTLY: exec refuses it (a lock timeout leaves an invalid index that a retry skips or trips over, " +
			"and it waits for every older transaction, on any table, which exec would end); run it with psql")
	}
	if callOrDo.MatchString(opts.SQL) {
		return errors.New("the SQL has CALL or DO: exec refuses it (a procedure or DO block may COMMIT or ROLLBACK on its own, " +
			"and pgreap could not tell what committed); run it with psql, or give exec its statements")
	}
	if twoPhase.MatchString(opts.SQL) {
		return errors.New("the SQL has PREPARE TRANSACTION, COMMIT PREPARED or ROLLBACK PREPARED: exec refuses it (a prepared transaction " +
			"keeps the DDL's locks after exec ends, with no session to end, until someone commits or rolls it back; exec is no two-phase commit coordinator); run it with psql")
	}
	if setsSettings.MatchString(opts.SQL) {
		return errors.New("the SQL calls set_config or writes pg_settings: exec refuses it (either can set lock_timeout under a name no text check sees, " +
			"and a shorter one makes exec blame the wrong wait); use SET for other settings")
	}
	if lockTimeout.MatchString(opts.SQL) {
		return errors.New("the SQL sets lock_timeout, or names it: exec sets it before each attempt (--lock-timeout)")
	}
	if unicodeEscape.MatchString(opts.SQL) {
		return errors.New(`the SQL has a U&"..." identifier: exec refuses it (it can name lock_timeout with escapes no text check reads); write the name plainly`)
	}
	if opts.Clear != "none" && !opts.Yes && !opts.IO.InTTY {
		return fmt.Errorf("refusing to %s the sessions that block the SQL without a terminal to confirm on: add --yes, or --clear none", opts.Clear)
	}
	return nil
}

// maxSQLFile bounds what -f reads: a migration, not a dump.
const maxSQLFile = 16 << 20

// readSQL reads -f's SQL: standard input for "-", as psql -f - does,
// else the file.
func (opts *ExecOptions) readSQL(ctx context.Context) (string, error) {
	if opts.File != "-" {
		return readSQLFile(opts.File)
	}
	// On a terminal the SQL would be typed until Ctrl-D, and the
	// question before ending sessions asked on the same input: exec runs
	// a migration, written before.
	if opts.IO.InTTY {
		return "", errors.New("-f -: standard input is a terminal: pipe the SQL in (pgreap exec -f - --yes < migrate.sql), or give -c SQL or -f FILE")
	}
	type read struct {
		sql string
		err error
	}
	done := make(chan read, 1)
	go func() { // abandoned if Ctrl-C comes first: the process ends
		sql, err := sqlText("standard input", opts.IO.In)
		done <- read{sql, err}
	}()
	select {
	case <-ctx.Done():
		return "", errors.New("interrupted while reading the SQL from standard input: nothing done")
	case r := <-done:
		return r.sql, r.err
	}
}

// readSQLFile reads -f's file: a regular file (opened without waiting for
// a writer, so a FIFO cannot hang pgreap; a device is refused before it is
// read), named without a symbolic link in its path.
func readSQLFile(path string) (string, error) {
	// Another user's link, as the file or as a directory on its path
	// (/tmp/x -> a directory only pgreap's user may read), would have
	// pgreap read a file they cannot, and its text reach the server log in
	// a syntax error. The path as given is judged, every component of it:
	// a link the system has (/var/run) is refused too.
	f, err := openNoLinks(path)
	if errors.Is(err, syscall.ELOOP) {
		return "", linkError(path)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return "", fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s: not a regular file", path)
	}
	return sqlText(path, f)
}

// sqlText reads the SQL from r, named name in errors: at most maxSQLFile
// bytes, its UTF-8 byte order mark dropped as psql drops it.
func sqlText(name string, r io.Reader) (string, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxSQLFile+1))
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	if len(b) > maxSQLFile {
		return "", fmt.Errorf("%s: larger than %d MiB: exec runs a migration, not a dump", name, maxSQLFile>>20)
	}
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		// The protocol cannot carry it: the server would answer "invalid
		// message format".
		return "", fmt.Errorf("%s: a NUL byte at offset %d: not SQL text", name, i)
	}
	return strings.TrimPrefix(string(b), "\uFEFF"), nil
}

// linkError refuses path for a symbolic link in it, naming the link and
// whose it is. It never names where the link points: another user's link
// would steer the operator to the file it was made to reach.
func linkError(path string) error {
	link := firstLink(path)
	if link == "" {
		link = path
	}
	msg := fmt.Sprintf("%s: %s is a symbolic link%s", path, link, linkOwner(link))
	if path == "/dev/stdin" {
		return errors.New(msg + ": -f - reads standard input")
	}
	return errors.New(msg + ": exec reads no file through a link; give the file's own path")
}

// linkOwner is " (user NAME's)" for the link's owner, when it can tell.
func linkOwner(link string) string {
	fi, err := os.Lstat(link)
	if err != nil {
		return ""
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	id := strconv.FormatUint(uint64(st.Uid), 10)
	if u, err := user.LookupId(id); err == nil {
		id = u.Username
	}
	return " (user " + output.Clean(id) + "'s)"
}

// firstLink is the first component of path, as given, that is a symbolic
// link; "" when none is.
func firstLink(path string) string {
	for i := 1; i <= len(path); i++ {
		if i < len(path) && path[i] != '/' {
			continue
		}
		if fi, err := os.Lstat(path[:i]); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			return path[:i]
		}
	}
	return ""
}

// openCheckLinks is openNoLinks where the system cannot refuse links in
// one call: it opens one component after the other, each in the
// directory opened before and with O_NOFOLLOW, so that no link can be
// swapped in between either.
func openCheckLinks(path string) (*os.File, error) {
	dir := unix.AT_FDCWD
	if strings.HasPrefix(path, "/") {
		dir = -1
	}
	parts := slices.DeleteFunc(strings.Split(path, "/"), func(p string) bool { return p == "" })
	if dir == -1 {
		parts = append([]string{"/"}, parts...)
	}
	if len(parts) == 0 {
		parts = []string{"."}
	}
	for i, part := range parts {
		flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC
		if i < len(parts)-1 {
			flags |= unix.O_DIRECTORY
		}
		fd, err := unix.Openat(dir, part, flags, 0)
		for errors.Is(err, unix.EINTR) {
			fd, err = unix.Openat(dir, part, flags, 0)
		}
		if errors.Is(err, unix.ENOTDIR) && i < len(parts)-1 {
			// O_DIRECTORY is judged on a link itself: not a directory.
			var st unix.Stat_t
			if unix.Fstatat(dir, part, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				err = unix.ELOOP
			}
		}
		if dir >= 0 {
			unix.Close(dir)
		}
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: path, Err: err}
		}
		dir = fd
	}
	return os.NewFile(uintptr(dir), path), nil
}

// sqlSpace is what PostgreSQL's scanner (scan.l) skips between two words,
// taken the safe way: its white space (\v since 16, taken on every
// version: Go's \s lacks it), a -- comment to the end of its line, a /*
// comment */ (greedy: a nested one ends after an inner */).
const sqlSpace = `(?:[ \t\n\r\f\v]|--[^\n\r]*|(?s:/\*.*\*/))*`

// concurrently finds CREATE/DROP INDEX, REINDEX and DETACH PARTITION
// CONCURRENTLY: mistaken the safe way only (the word in a string).
var concurrently = regexp.MustCompile(`(?i)\bCONCURRENTLY\b`)

// callOrDo finds a statement that starts with CALL or DO (after comments):
// its transaction control, inside the procedure or block, shows in no
// command tag. Mistaken the safe way only (a ';' in a string before the
// word).
var callOrDo = regexp.MustCompile(`(?i)(^|;)` + sqlSpace + `(CALL|DO)\b`)

// twoPhase finds PREPARE TRANSACTION, COMMIT PREPARED and ROLLBACK
// PREPARED, their words apart by spaces or comments (a comment's body may
// run over another comment's end: nested ones are found too). Mistaken
// the safe way only (the words in a string).
var twoPhase = regexp.MustCompile(`(?i)\b(PREPARE` + sqlSpace + `TRANSACTION|(COMMIT|ROLLBACK)` + sqlSpace + `PREPARED)\b`)

// lockTimeout finds a SET, RESET or set_config of lock_timeout: the SQL
// would lift the bound that keeps exec from holding a queue (mistaken the
// safe way only: a SHOW).
var lockTimeout = regexp.MustCompile(`(?i)\block_timeout\b`)

// unicodeEscape finds an identifier written with Unicode escapes
// (U&"lock\005ftimeout" is lock_timeout): mistaken the safe way only (the
// characters in a string).
var unicodeEscape = regexp.MustCompile(`(?i)\bU&"`)

// setsSettings finds set_config and pg_settings (an UPDATE of it calls
// set_config): mistaken the safe way only (a SELECT of pg_settings).
var setsSettings = regexp.MustCompile(`(?i)\b(set_config|pg_settings)\b`)

// ownTransactions finds what looks like transaction control: exec then
// says that the SQL runs as it is, not as one transaction. It may be
// mistaken the safe way only (a BEGIN in a function's body).
var ownTransactions = regexp.MustCompile(`(?i)\b(BEGIN|COMMIT|ROLLBACK|START` + sqlSpace + `TRANSACTION)\b`)

func execRun(ctx context.Context, opts *ExecOptions) error {
	if ownTransactions.MatchString(opts.SQL) {
		fmt.Fprintln(opts.IO.ErrOut, "pgreap: note: the SQL has its own transaction control (BEGIN, COMMIT or ROLLBACK), or looks so: "+
			"it runs as it is; a retry runs it again from its start, and an attempt that times out after a COMMIT of it ends the run")
	}
	run, err := opts.ConnectSQL(ctx)
	if err != nil {
		return err
	}
	defer run.Close(context.WithoutCancel(ctx))
	observe, err := opts.Connect(ctx)
	if err != nil {
		return err
	}
	defer observe.Close(context.WithoutCancel(ctx))
	version, err := activity.ServerVersion(ctx, observe)
	if err != nil {
		return err
	}
	mopts := maintenance.ExecOptions{
		SQL: opts.SQL, LockTimeout: opts.LockTimeout, Attempts: opts.Attempts, Between: opts.Between,
		Clear: clearKinds[opts.Clear], Wait: 5 * time.Second, Logger: opts.Logger,
	}
	if !opts.Yes {
		act := &ActOptions{IO: opts.IO, Color: opts.Color}
		mopts.Confirm = func(ctx context.Context, plan *action.Plan, rows []action.Result, what string) error {
			return confirm(ctx, act, plan, rows, what)
		}
	}
	if opts.Format == output.Table {
		// An attempt's line and blockers come before the question whether
		// to end them, its results after.
		shown := 0
		mopts.TimedOut = func(a *maintenance.Attempt) { writeAttemptHead(opts, a); shown = a.N }
		mopts.Attempted = func(a *maintenance.Attempt) {
			if shown != a.N {
				writeAttemptHead(opts, a)
			}
			if a.Plan != nil && len(a.Results) > 0 {
				_ = writeResults(opts.IO, output.Table, opts.Color, a.Plan, a.Results, false)
			}
		}
	}
	ex, err := maintenance.Exec(ctx, run, observe, mopts)
	if opts.Format != output.Table {
		if werr := writeAttempts(opts, ex, version); werr != nil && err == nil {
			err = werr
		}
	}
	var sqlErr *maintenance.SQLError
	var sessErr *maintenance.SessionError
	var partly *maintenance.PartlyCommitted
	switch {
	case errors.As(err, &partly):
		return incomplete(err)
	case errors.As(err, &sqlErr), errors.As(err, &sessErr), errors.Is(err, maintenance.ErrOpenTransaction), errors.Is(err, maintenance.ErrNotCommitted),
		errors.Is(err, maintenance.ErrRolledBack):
		return usageError(err)
	case err != nil:
		return err
	case ex.Committed():
		return nil
	}
	last := &ex.Attempts[len(ex.Attempts)-1]
	what := ""
	if last.Lock != nil {
		what = " waiting for " + last.Lock.String()
	}
	hint := ""
	if opts.Clear == "cancel" && slices.ContainsFunc(last.Blockers, func(s activity.Session) bool { return strings.HasPrefix(s.State, "idle in transaction") }) {
		hint = " (a cancel does not end a transaction: --clear terminate)"
	}
	return incomplete(fmt.Errorf("gave up after %d attempt%s: the last timed out after %s%s, blocked by %s%s",
		len(ex.Attempts), plural(len(ex.Attempts)), last.Waited.Round(time.Millisecond), what, last.Describe(), hint))
}

// attemptLine is an attempt as one line: its number, outcome, how long it
// ran, what it waited for and who blocked it.
func attemptLine(a *maintenance.Attempt) string {
	line := fmt.Sprintf("attempt %d: %s after %s", a.N, a.Outcome, a.Waited.Round(time.Millisecond))
	if a.Outcome != maintenance.LockTimeout {
		if a.Err != nil {
			line += ": " + output.Clean(a.Err.Error())
		}
		return line
	}
	if a.Lock != nil {
		line += ", waiting for " + output.Clean(a.Lock.String())
	}
	return line + "; blocked by " + a.Describe()
}

// writeAttemptHead prints an attempt as a table does: its line and its
// blockers (the outcomes of the sessions ended after it follow).
func writeAttemptHead(opts *ExecOptions, a *maintenance.Attempt) {
	fmt.Fprintln(opts.IO.Out, attemptLine(a))
	if a.Outcome != maintenance.LockTimeout {
		return
	}
	for i := range a.Blockers {
		b := &a.Blockers[i]
		if b.IsPrepared() {
			fmt.Fprintf(opts.IO.Out, "  └ %s  %s  %s  %s\n", output.Cut(output.PreparedName(b.GID), 80), output.Clean(b.Datname),
				output.Clean(b.Usename), activity.BackendTypePrepared)
			continue
		}
		fmt.Fprintf(opts.IO.Out, "  └ %s\n", describeSession(b.PID, b))
	}
}

// writeAttempts prints every attempt, each followed by the sessions ended
// after it, as JSON or CSV.
func writeAttempts(opts *ExecOptions, ex *maintenance.Executed, version int) error {
	var rows []output.Row
	var now time.Time
	for i := range ex.Attempts {
		a := &ex.Attempts[i]
		detail := ""
		switch {
		case a.Err != nil:
			detail = a.Err.Error()
		case a.TimedOutIn != "":
			detail = "blocked by " + a.Describe()
		case a.Lock != nil:
			detail = "waited for " + a.Lock.String()
		}
		rows = append(rows, output.AttemptRow(a.N, a.Waited, string(a.Outcome), a.BlockedBy(), a.BlockedByPrepared(), detail))
		if a.Plan != nil {
			rows = append(rows, toRows(a.Plan, a.Results, false)...)
			now = a.Plan.Taken
		}
	}
	return output.WriteResults(opts.IO.Out, opts.Format, rows, output.Options{
		Now: now, QueryID: version >= 140000, Terminal: opts.IO.OutTTY, Attempts: true,
	})
}
