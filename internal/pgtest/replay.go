package pgtest

import (
	"testing"
)

// HeldReplay is a hot standby whose WAL replay is held up by a query.
type HeldReplay struct {
	Primary, Standby *Cluster
	// Blocker runs a long query in a transaction that read the table the
	// primary dropped: replay of the drop waits for its lock.
	Blocker *Victim
	// Other runs a long query in a transaction that read another table:
	// it blocks nothing.
	Other *Victim
}

// HoldReplay starts a primary and a standby that never cancels a query
// for replay (max_standby_streaming_delay=-1), and holds replay up there:
// the primary drops a table a standby session has read in its open
// transaction. It returns once the startup process waits for the lock.
// Both run SELECT pg_sleep(600) in their transaction (so a cancel ends
// the blocker's locks, and a selector that chose both would be seen),
// with the test's tag.
func HoldReplay(t testing.TB) *HeldReplay {
	t.Helper()
	h := &HeldReplay{Primary: Own(t, Options{})}
	h.Standby = OwnStandby(t, h.Primary, StandbyOptions{Settings: map[string]string{"max_standby_streaming_delay": "-1"}})
	p := Connect(t, h.Primary.DSN("postgres", Superuser))
	if _, err := p.Exec(Context(t), "CREATE TABLE dropped (x int); CREATE TABLE kept (x int)"); err != nil {
		t.Fatal(err)
	}
	WaitReplay(t, h.Standby, h.Primary)
	h.Blocker = NewVictim(t, VictimOptions{Cluster: h.Standby})
	h.Blocker.Exec("BEGIN")
	h.Blocker.Exec("SELECT * FROM dropped")
	h.Blocker.Start("SELECT pg_catalog.pg_sleep(600)")
	h.Other = NewVictim(t, VictimOptions{Cluster: h.Standby})
	h.Other.Exec("BEGIN")
	h.Other.Exec("SELECT * FROM kept")
	h.Other.Start("SELECT pg_catalog.pg_sleep(600)")
	if _, err := p.Exec(Context(t), "DROP TABLE dropped"); err != nil {
		t.Fatal(err)
	}
	s := Connect(t, h.Standby.DSN("postgres", Superuser))
	Eventually(t, "replay waits for a lock", func() (bool, error) {
		var n int
		err := s.QueryRow(Context(t), `SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity
			WHERE backend_type = 'startup' AND wait_event_type = 'Lock'`).Scan(&n)
		return n == 1, err
	})
	return h
}
