package tui

import (
	"strings"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/pooler"
	"github.com/pgreap/pgreap/internal/selector"
)

// Behind a pooler with one server connection: the row of that backend
// shows the client that holds it, and the header the client that waits in
// the pooler for it (no row shows a client without a backend).
func TestTopShowsPooledClientsAndThoseWaiting(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t)
	b, db, connect := pgtest.OneServerConnection(t)
	holder, waiter := connect("holder"), connect("waiter")
	if _, err := holder.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	pid := pgtest.BackendPID(t, holder)
	done := make(chan error, 1)
	go func() { _, err := waiter.Exec(ctx, "SELECT 1"); done <- err }()
	t.Cleanup(func() {
		if _, err := holder.Exec(ctx, "COMMIT"); err != nil {
			t.Error(err)
		}
		if err := <-done; err != nil {
			t.Errorf("the waiting client: %v", err)
		}
	})

	p, err := pooler.Parse(b.AdminDSN(b.StatsUser))
	if err != nil {
		t.Fatal(err)
	}
	src := newDB(t, &selector.Selector{DB: []string{db}})
	src.SetPoolers([]*pooler.Pooler{p})
	var f *Frame
	pgtest.Eventually(t, "a client waiting in the pooler", func() (bool, error) {
		f, err = src.Frame(ctx)
		return err == nil && f.PoolerWaiting == 1, err
	})
	if len(f.Snap.Sessions) != 1 || f.Snap.Sessions[0].PID != pid {
		t.Fatalf("sessions %+v, want the one server connection %d", f.Snap.Sessions, pid)
	}
	m := New(Options{Source: src, Interval: time.Hour})
	m.Update(size(180, 20))
	m.Update(FrameMsg{Frame: f})
	screen := m.draw()
	if !strings.Contains(screen, "1 client waiting in poolers") || !strings.Contains(screen, "127.0.0.1 via "+p.Name) ||
		!strings.Contains(screen, "holder") {
		t.Fatalf("screen:\n%s", screen)
	}
}
