package maintenance

import (
	"context"
	_ "embed"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/selector"
)

//go:embed sql/arrivals.sql
var arrivalsSQL string

// Arrivals counts the client sessions that connected to the databases
// (globs, as --db takes them) after since, a time on the server's clock:
// what a kick could not end because it came after, typically a pool
// reconnecting. pgreap's own session is not counted.
func Arrivals(ctx context.Context, conn *pgx.Conn, dbs []string, since time.Time) (int, error) {
	where, args := (&selector.Selector{DB: dbs}).Compile("a", 2)
	sql := strings.Replace(arrivalsSQL, "/*selection*/ true", "("+where+")", 1)
	var n int
	if err := conn.QueryRow(ctx, sql, append([]any{since}, args...)...).Scan(&n); err != nil {
		return 0, fmt.Errorf("arrivals: %w", err)
	}
	return n, nil
}
