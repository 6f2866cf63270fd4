package cli

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/pgreap/pgreap/internal/action"
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

The sessions are listed and confirmed on a terminal; without one, --yes is
needed. Exit status as terminate: 0 all terminated, 1 nothing matched, 2
usage or connection error, 3 some denied, survived or changed.`,
		Example: `  pgreap kick --db shop
  pgreap kick --db shop --db 'shop_*' --exclude-user admin --yes
  pgreap kick --all-databases --exclude-db postgres --dry-run`,
	}, runF)
}
