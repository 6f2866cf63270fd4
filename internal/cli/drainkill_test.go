package cli_test

import (
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// Drain killed with SIGKILL at 10 random moments (before it changed
// anything, in the middle of its kick and its grace, holding): undrain
// restores the database's settings exactly every time, or there was
// nothing to restore and the settings never changed.
func TestDrainKilledAtRandomMoments(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	reopen(t, db)
	id := pgx.Identifier{db}.Sanitize()
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("seed %d", seed)
	restored, untouched, killed := 0, 0, 0
	for i := 0; i < 10; i++ {
		limit := int32(5 + i)
		pgtest.Exec(t, "ALTER DATABASE "+id+" WITH ALLOW_CONNECTIONS true CONNECTION LIMIT "+strconv.Itoa(int(limit)))
		// Something to end: an idle session, and a query that swallows
		// cancels, so that the drain runs through its grace.
		pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
		stubborn := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
		stubborn.Start(`DO $$ BEGIN LOOP BEGIN PERFORM pg_catalog.pg_sleep(60); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$`)
		stubborn.WaitState("active", "")

		p := startPgreap(t, nil, "drain", db, "--escalate", "--grace", "300ms", "--timeout", "20s")
		delay := time.Duration(rng.IntN(400)) * time.Millisecond // the moment to kill, not a wait
		kill := time.AfterFunc(delay, func() { _ = p.cmd.Process.Kill() })
		p.wait(t)
		kill.Stop()
		if p.code() == -1 { // ended by the signal, not done
			killed++
		}

		r := run(t, false, "undrain", db)
		allow, got := dbSettings(t, db)
		switch {
		case r.code == 0:
			restored++
		case r.code == 2 && strings.Contains(r.errOut, "no drain record"):
			untouched++ // killed before it recorded, so before it changed anything
		default:
			t.Fatalf("kill at %s: undrain exit %d: %s", delay, r.code, r.errOut)
		}
		if !allow || got != limit {
			t.Fatalf("kill at %s: ALLOW_CONNECTIONS %v, CONNECTION LIMIT %d after undrain; want true, %d\ndrain: %s\nundrain: %s",
				delay, allow, got, limit, p.errOut.String(), r.errOut)
		}
		if err := connectTo(t, db, pgtest.Superuser); err != nil {
			t.Fatalf("kill at %s: cannot connect after undrain: %v", delay, err)
		}
	}
	t.Logf("10 drains, %d of them killed before they were done: %d restored by undrain, %d before anything was changed",
		killed, restored, untouched)
	if killed == 0 {
		t.Fatal("no drain was killed before it was done: the moments do not test anything")
	}
}
