package cli

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/pgreap/pgreap/internal/action"
)

// NewCmdCancel builds `pgreap cancel`; runF replaces the run in tests.
func NewCmdCancel(f *Factory, runF func(context.Context, *ActOptions) error) *cobra.Command {
	return newActCmd(f, action.Cancel, &cobra.Command{
		Use:   "cancel [PID...] [SELECTORS]",
		Short: "Cancel the running query of each chosen session",
		Long: `Cancel the running query of each chosen session (pg_cancel_backend): the
query ends with an error, the connection stays.

Sessions are named by pid, or chosen with the selectors of ls (then only
sessions running a query are chosen); with both, both must hold. Each is
pinned by (pid, backend_start, query_start): the one statement that sends
the cancels re-checks them and the selection, so a reused pid or a session
that moved on to another query is reported changed and left alone.
pgreap's own session, parallel workers (cancel their leader), non-client
backends, walsenders and autovacuum workers are refused.

Chosen by selectors, the sessions are listed and confirmed on a terminal;
without one, --yes is needed. Then pgreap waits (--wait) until each query
has ended: cancelled, or survived.

With --pgbouncer, --user, --app and --client judge a pooler's server
connection by the client it serves now (ls --help), and its query is
pinned: one handed to another client before the signal is left alone.

Outcomes: cancelled, gone, changed, denied, protected, survived, planned.
Exit status: 0 all cancelled, 1 nothing matched, 2 usage or connection
error or not confirmed, 3 some denied, survived, changed, or protected by pid.`,
		Example: `  pgreap cancel 4242
  pgreap cancel --app 'report*' --longer-than 5m --dry-run
  pgreap cancel --db shop --query '(?i)^select .* from orders' --yes
  pgreap cancel --user batch --limit 10 --yes -o json
  pgreap cancel --app 'report*' --pgbouncer 'host=pgb1 port=6432 user=stats' --yes`,
	}, runF)
}
