package cli

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/pgreap/pgreap/internal/action"
)

// NewCmdTerminate builds `pgreap terminate`; runF replaces the run in tests.
func NewCmdTerminate(f *Factory, runF func(context.Context, *ActOptions) error) *cobra.Command {
	return newActCmd(f, action.Terminate, &cobra.Command{
		Use:   "terminate [PID...] [SELECTORS]",
		Short: "End each chosen connection",
		Long: `End each chosen connection (pg_terminate_backend).

Sessions are named by pid, or chosen with the selectors of ls; with both,
both must hold. Each is pinned by (pid, backend_start), and by its query
too when the selection depends on it (--state, --query, durations,
--waiting, --blocking): the one statement that sends the signals re-checks
them and the selection, so a reused pid or a session that moved on is
reported changed and left alone. pgreap's own session, parallel workers
(terminate their leader), non-client backends, walsenders
(--include-replication) and autovacuum workers (--include-autovacuum) are
refused.

--grace D cancels running queries first, and terminates only the sessions
still running the same query after D (the others are reported cancelled);
sessions with no running query are terminated at once.

Chosen by selectors, the sessions are listed and confirmed on a terminal;
without one, --yes is needed. A signal sent is not a backend gone: pgreap
waits (--wait) until each is gone: terminated, or survived.

--dry-run -o json prints a plan for 'pgreap apply'.

With --pgbouncer, --user, --app and --client judge a pooler's server
connection by the client it serves now (ls --help), and its query is
pinned: one handed to another client before the signal is left alone.

Outcomes: terminated, cancelled (--grace), gone, changed, denied, protected,
survived, planned. Exit status: 0 all terminated, 1 nothing matched, 2 usage
or connection error or not confirmed, 3 some denied, survived, changed, or
protected by pid.`,
		Example: `  pgreap terminate 4242 4243
  pgreap terminate --state 'idle in transaction' --longer-than 10m --yes
  pgreap terminate --app 'report*' --grace 30s --yes
  pgreap terminate --db shop --dry-run -o json > plan.json && pgreap apply plan.json
  pgreap terminate --client 10.1.2.3 --pgbouncer 'host=pgb1 port=6432 user=stats' --yes`,
	}, runF)
}
