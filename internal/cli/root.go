package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgreap/pgreap/internal/conn"
	"github.com/pgreap/pgreap/internal/output"
	"github.com/pgreap/pgreap/internal/pooler"
)

// Factory carries what every command needs: the streams, and the global
// flags that say how to connect and how to print.
type Factory struct {
	IO *IOStreams

	conn      conn.Params
	pgbouncer []string
	output    string
	noColor   bool
	verbose   bool

	// hangup: a closed terminal (SIGHUP) stops the command as an
	// interrupt does, unless it handles SIGHUP itself (ownsHangup);
	// stopHangup undoes that when the command is over.
	hangup     bool
	stopHangup func()
}

// ownsHangup marks a command that handles SIGHUP itself (watch reloads its
// policy on it).
const ownsHangup = "pgreap.owns-sighup"

// Connect opens pgreap's own connection as the global flags say.
func (f *Factory) Connect(ctx context.Context) (*pgx.Conn, error) {
	return f.ConnectDB(ctx, "")
}

// ConnectDB is Connect to another database of the same server (ROLLBACK
// PREPARED runs only in the prepared transaction's database); "" is the
// one the flags say.
func (f *Factory) ConnectDB(ctx context.Context, database string) (*pgx.Conn, error) {
	cfg, err := f.ConnConfig()
	if err != nil {
		return nil, err
	}
	if database != "" {
		cfg.Database = database
	}
	f.Logger().Debug("connecting", "host", cfg.Host, "port", cfg.Port, "user", cfg.User, "database", cfg.Database)
	c, err := conn.Connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	f.Logger().Debug("connected", "server_version", c.PgConn().ParameterStatus("server_version"), "pid", c.PgConn().PID())
	return c, nil
}

// ConnectUser opens a connection as the flags say, but with the search_path
// a session of the user's (psql's) would have, not pgreap's: only for the
// names the user typed (clear's tables) and the user's own SQL (exec's),
// never for pgreap's statements (conn.Params.UserSearchPath).
func (f *Factory) ConnectUser(ctx context.Context) (*pgx.Conn, error) {
	p := f.conn
	p.UserSearchPath = true
	cfg, err := conn.Config(p)
	if err != nil {
		return nil, usageError(err)
	}
	return conn.Connect(ctx, cfg)
}

// ConnConfig checks the connection flags without connecting, so that bad
// input is reported before anything is done.
func (f *Factory) ConnConfig() (*pgx.ConnConfig, error) {
	cfg, err := conn.Config(f.conn)
	if err != nil {
		return nil, usageError(err)
	}
	return cfg, nil
}

// Poolers are the PgBouncers in front of the server: --pgbouncer, else
// PGREAP_PGBOUNCER (space-separated connection strings). None is nil.
func (f *Factory) Poolers() ([]*pooler.Pooler, error) {
	dsns := f.pgbouncer
	if len(dsns) == 0 {
		dsns = pooler.SplitList(os.Getenv("PGREAP_PGBOUNCER"))
	}
	ps, err := pooler.ParseAll(dsns)
	if err != nil {
		return nil, usageError(err)
	}
	return ps, nil
}

// Format is the output format: -o, else a table.
func (f *Factory) Format() (output.Format, error) {
	if f.output == "" {
		return output.Table, nil
	}
	format, err := output.ParseFormat(f.output)
	if err != nil {
		return "", usageError(err)
	}
	return format, nil
}

// Color reports whether to print ANSI colours: only on a terminal, and not
// with NO_COLOR, TERM=dumb or --no-color.
func (f *Factory) Color() bool {
	return f.IO.OutTTY && !f.IO.NoColor && !f.noColor
}

// Logger is the diagnostic log on standard error: warnings, and debug
// lines with -v.
func (f *Factory) Logger() *slog.Logger {
	level := slog.LevelWarn
	if f.verbose {
		level = slog.LevelDebug
	}
	var w io.Writer = f.IO.ErrOut
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// NewCmdRoot builds the whole command tree.
func NewCmdRoot(f *Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pgreap",
		Short: "Find PostgreSQL sessions and end them safely",
		Long: `pgreap finds PostgreSQL sessions and ends them safely.

It connects like psql does: -d takes a keyword/value string or a URL, and
the PG* environment variables, ~/.pgpass and service files apply.`,
		Example: `  pgreap ls
  pgreap ls --state active --longer-than 5m
  pgreap cancel --app 'report*' --longer-than 5m --yes
  pgreap terminate --state 'idle in transaction' --longer-than 10m --dry-run
  pgreap -h db1 -U admin ls --db shop -o json`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(c *cobra.Command, args []string) {
			// Killed by a closed terminal, a command would leave its work
			// on the server running unseen (an exec attempt that then
			// commits): it stops as on Ctrl-C, cancelling that work.
			if f.hangup && c.Annotations[ownsHangup] == "" {
				ctx, stop := signal.NotifyContext(c.Context(), syscall.SIGHUP)
				c.SetContext(ctx)
				f.stopHangup = stop
			}
		},
	}
	pf := cmd.PersistentFlags()
	// -h is the host, as in psql; help is --help only.
	pf.Bool("help", false, "help for a command")
	pf.StringVarP(&f.conn.DSN, "dsn", "d", "", "connection string: keyword/value or URL, or a database name (as psql's -d)")
	pf.StringVarP(&f.conn.Host, "host", "h", "", "server host or socket directory")
	pf.StringVarP(&f.conn.Port, "port", "p", "", "server port")
	pf.StringVarP(&f.conn.User, "username", "U", "", "role to connect as")
	pf.StringArrayVar(&f.pgbouncer, "pgbouncer", nil, "admin console of a PgBouncer in front of the server (repeatable; env PGREAP_PGBOUNCER)")
	pf.StringVarP(&f.output, "output", "o", "", "output format: table, json or csv (default table)")
	pf.BoolVar(&f.noColor, "no-color", false, "no colours, even on a terminal")
	pf.BoolVarP(&f.verbose, "verbose", "v", false, "debug log on standard error")
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError(err)
	})
	cmd.AddCommand(
		NewCmdLs(f, nil),
		NewCmdCancel(f, nil),
		NewCmdTerminate(f, nil),
		NewCmdApply(f, nil),
		NewCmdKick(f, nil),
		NewCmdDrain(f, nil),
		NewCmdUndrain(f, nil),
		NewCmdUnblock(f, nil),
		NewCmdClear(f, nil),
		NewCmdExec(f, nil),
		NewCmdWatch(f, nil),
		NewCmdTop(f, nil),
		NewCmdDemo(f, nil),
		NewCmdVersion(f),
	)
	// cobra's completion command prints its help for an unknown shell and
	// exits 0: bad input is exit 2 here.
	cmd.InitDefaultCompletionCmd()
	for _, c := range cmd.Commands() {
		if c.Name() == "completion" {
			c.Args = cobra.ArbitraryArgs
			c.RunE = func(c *cobra.Command, args []string) error {
				if len(args) == 0 {
					return usageError(errors.New("completion needs a shell: bash, zsh, fish or powershell"))
				}
				return usageError(fmt.Errorf("completion %q: not a shell (bash, zsh, fish, powershell)", args[0]))
			}
		}
	}
	return cmd
}
