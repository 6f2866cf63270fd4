package cli

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/pooler"
)

// lookPooled asks the poolers in front of the server (--pgbouncer) which
// client each of its server connections serves, just before a snapshot;
// nil without poolers. A pooler that cannot be asked is an error naming
// it: a selection by client made without it would judge its clients by the
// pooler's own address.
func lookPooled(ctx context.Context, conn *pgx.Conn, poolers []*pooler.Pooler) (*activity.Pooled, error) {
	if len(poolers) == 0 {
		return nil, nil
	}
	admins, err := pooler.ConnectAll(ctx, poolers)
	if err != nil {
		return nil, err
	}
	defer pooler.CloseAll(admins)
	return activity.TakePooled(ctx, conn, admins)
}
