package tui

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/selector"
)

// TestStandbyReplayHeldUp: on a real standby whose replay waits for a
// query's lock, the header says standby, the lag and on whom replay
// waits; the replay row comes first and c or t on it signal nothing; b
// shows the blocker with replay under it, and c there cancels exactly the
// blocker, after which replay goes on.
func TestStandbyReplayHeldUp(t *testing.T) {
	t.Parallel()
	h := pgtest.HoldReplay(t)
	src := newDBAt(t, h.Standby.DSN("postgres", pgtest.Superuser), &selector.Selector{App: []string{pgtest.Tag(t)}})
	f, err := src.Frame(pgtest.Context(t))
	if err != nil {
		t.Fatal(err)
	}
	m := New(Options{Source: src, Interval: time.Hour})
	m.Update(size(240, 20))
	m.Update(FrameMsg{Frame: f})
	screen := m.draw()
	wait := fmt.Sprintf("replay waits on pid %d", h.Blocker.PID)
	if h.Standby.Major >= 14 {
		wait = "replay waits " // its age follows
	}
	for _, want := range []string{" · standby · ", "replay lag ", " to replay", wait, fmt.Sprintf("on pid %d (b shows them)", h.Blocker.PID), "2 sessions: "} {
		if !strings.Contains(screen, want) {
			t.Errorf("screen lacks %q:\n%s", want, screen)
		}
	}
	if len(m.view) != 3 || m.view[0].replay == nil || m.view[0].cells[colState] != "WAL replay" ||
		m.view[0].cells[colBlockedBy] != fmt.Sprint(h.Blocker.PID) {
		t.Fatalf("view: want the replay first, blocked by %d: %+v", h.Blocker.PID, m.view)
	}
	for _, k := range []string{"c", "t", " "} {
		m.cursor = 0
		m.key(runes(k))
		if m.ask != nil || !m.bad || m.status != replayNote || len(m.marks) != 0 {
			t.Errorf("%q on the replay row: question %v, marks %v, status %q", k, m.ask, m.marks, m.status)
		}
	}

	s := start(t, Options{Source: src, Interval: 50 * time.Millisecond}, 240, 20)
	s.keys("b")
	s.waitFor("blocking tree")
	s.waitFor(fmt.Sprintf("└ %d", f.Snap.Replay.Startup.PID))
	s.keys("c") // the cursor followed the replay row
	s.waitFor("WAL replay (the startup process) is no session")
	s.keys("g", "c")
	s.waitFor("cancel the query of 1 session? y/n")
	s.keys("y")
	s.waitFor(fmt.Sprintf("cancel: 1 cancelled — %d cancelled", h.Blocker.PID))
	s.quit()
	if err := h.Blocker.Wait(); pgtest.SQLState(err) != "57014" {
		t.Errorf("blocker: %v, want its query cancelled", err)
	}
	if !h.Other.Alive() {
		t.Error("the session that blocks nothing ended")
	}
	pgtest.WaitReplay(t, h.Standby, h.Primary)
}

// TestStandbyReplayMovesOnAQuietServer: on a standby, replay moves while
// no session does; every refresh shows where it is.
func TestStandbyReplayMovesOnAQuietServer(t *testing.T) {
	t.Parallel()
	standby := pgtest.Standby(t)
	db := pgtest.NewDB(t)
	pgtest.WaitReplay(t, standby, pgtest.Shared(t))
	v := pgtest.NewVictim(t, pgtest.VictimOptions{Cluster: standby, DB: db})
	v.Exec("SELECT 1")
	// Selectors on the database (an application's may change with no
	// state change, and would take a snapshot every time anyway).
	src := newDBAt(t, standby.DSN("postgres", pgtest.Superuser), &selector.Selector{DB: []string{db}})
	frame := func() *Frame {
		t.Helper()
		f, err := src.Frame(pgtest.Context(t))
		if err != nil {
			t.Fatal(err)
		}
		if f.Snap.Replay == nil {
			t.Fatal("a standby's frame has no replay")
		}
		return f
	}
	first := frame()
	frame()
	pgtest.NewDB(t) // WAL to replay
	pgtest.WaitReplay(t, standby, pgtest.Shared(t))
	if f := frame(); f.Snap.Replay.ReplayLSN == first.Snap.Replay.ReplayLSN {
		t.Fatalf("replay LSN still %s after the primary wrote", f.Snap.Replay.ReplayLSN)
	}
}

// replayFrame is a standby whose replay waits for a buffer pin: the
// server does not say whose.
func replayFrame() *Frame {
	f := incident()
	f.Snap.Replay = &activity.Replay{
		Startup:         activity.Session{PID: 55, BackendType: "startup", WaitEventType: "BufferPin", WaitEvent: "BufferPin", BackendStart: ago(time.Hour)},
		ReplayTimestamp: ago(90 * time.Second),
		LagBytes:        ptr(int64(3 << 20)),
		Conflicts:       activity.Conflicts{Snapshot: 2, BufferPin: 1},
	}
	return f
}

func ptr[T any](v T) *T { return &v }

func TestStandbyBufferPin(t *testing.T) {
	m := New(Options{Source: &fakeSource{frames: []*Frame{replayFrame()}}, Interval: time.Hour})
	m.Update(size(240, 20))
	m.Update(FrameMsg{Frame: replayFrame()})
	screen := m.draw()
	for _, want := range []string{"replay lag 1m30s, 3.0 MB to replay", "replay waits on a buffer pin: blockers unknown",
		"3 queries cancelled for replay: 2 snapshot, 1 buffer pin"} {
		if !strings.Contains(screen, want) {
			t.Errorf("screen lacks %q:\n%s", want, screen)
		}
	}
	m.key(runes("s")) // any sort: replay stays first
	if m.view[0].replay == nil || m.view[0].cells[colBlockedBy] != "?" {
		t.Errorf("sorted by %s: first row %+v", m.sortBy, m.view[0])
	}
	m.key(runes("b"))
	if len(m.view) == 0 || m.view[0].replay == nil {
		t.Errorf("blocking tree: replay with unknown blockers not shown first: %+v", m.view)
	}
}
