package maintenance_test

import (
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Options{})
}

func TestArrivalsCountsSessionsThatConnectedSince(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	cn := pgtest.Pgreap(t, pgtest.Superuser)
	ctx := pgtest.Context(t)
	before := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	var since time.Time
	if err := cn.QueryRow(ctx, "SELECT pg_catalog.statement_timestamp()").Scan(&since); err != nil {
		t.Fatal(err)
	}
	pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	pgtest.NewVictim(t, pgtest.VictimOptions{}) // another database
	n, err := maintenance.Arrivals(ctx, cn, []string{db}, since)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("%d arrivals, want 2 (the session from before is %d)", n, before.PID)
	}
}
