package tui

import (
	"context"
	_ "embed"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/maintenance"
	"github.com/pgreap/pgreap/internal/pooler"
	"github.com/pgreap/pgreap/internal/selector"
)

// Frame is one refresh: a snapshot and what the header needs.
type Frame struct {
	Snap *activity.Snapshot
	// Waits is how long each session waiting on a lock has waited (nil
	// when none waits).
	Waits map[int32]time.Duration
	// Server names the server for the header: host:port and version.
	Server string
	// Poolers: the poolers in front of the server were asked;
	// PoolerWaiting is how many clients wait in them for a server
	// connection.
	Poolers       bool
	PoolerWaiting int
}

// Source is where the model gets its frames and sends its actions. Calls
// come from commands, one at a time, never from Update.
type Source interface {
	// Frame takes a snapshot.
	Frame(ctx context.Context) (*Frame, error)
	// Act cancels or terminates sessions of a frame's snapshot, each by
	// the identity the snapshot saw.
	Act(ctx context.Context, kind action.Kind, snap *activity.Snapshot, sessions []activity.Session) ([]action.Result, error)
}

// actWait is how long an action waits for the sessions to be gone (their
// query ended, for a cancel), as cancel and terminate do by default.
const actWait = 5 * time.Second

// DB is the Source of a live server: one connection, opened again when it
// is lost.
type DB struct {
	connect func(context.Context) (*pgx.Conn, error)
	sel     *selector.Selector

	mu   sync.Mutex // one statement at a time on conn
	conn *pgx.Conn
	// poolers are the PgBouncers in front of the server, asked at each
	// frame on their admin connections (opened again when lost).
	poolers []*pooler.Pooler
	admins  []*pooler.Admin
	last    *Frame // the last snapshot, and the server as it was before it
	was     quiet
}

//go:embed sql/quiet.sql
var quietSQL string

// quiet is what quiet.sql says of the server: when it says the same
// twice and nothing is busy, the sessions are as they were.
type quiet struct {
	sessions, busy          int64
	users                   pgtype.Int8 // the sum of the role names' hashes
	stateChange, backendNew pgtype.Timestamptz
	started                 time.Time
	now                     time.Time
}

func (q quiet) same(r quiet) bool {
	return q.busy == 0 && r.busy == 0 && q.sessions == r.sessions && q.stateChange == r.stateChange &&
		q.backendNew == r.backendNew && q.users == r.users && q.started.Equal(r.started)
}

// look runs quiet.sql with the selectors' predicate.
func (d *DB) look(ctx context.Context, conn *pgx.Conn) (quiet, error) {
	where, args := d.sel.Compile("a", 1)
	sql := quietSQL
	if where != "" {
		sql += "   AND (" + where + ")\n"
	}
	var q quiet
	err := conn.QueryRow(ctx, sql, args...).Scan(&q.sessions, &q.busy, &q.stateChange, &q.backendNew, &q.users, &q.started, &q.now)
	if err != nil {
		return quiet{}, fmt.Errorf("snapshot: %w", err)
	}
	return q, nil
}

// NewDB is a Source over a connection (opened by the caller, so that a
// first failure is reported before the screen changes); connect opens
// another when it is lost. sel narrows every snapshot.
func NewDB(conn *pgx.Conn, connect func(context.Context) (*pgx.Conn, error), sel *selector.Selector) *DB {
	if sel == nil {
		sel = &selector.Selector{}
	}
	return &DB{conn: conn, connect: connect, sel: sel}
}

// SetPoolers names the PgBouncers in front of the server: each frame then
// shows the clients their server connections serve, and the clients that
// wait in them.
func (d *DB) SetPoolers(ps []*pooler.Pooler) { d.poolers = ps }

// Close closes the connection, after the statement running on it (its
// context should be cancelled first).
func (d *DB) Close(ctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn != nil {
		_ = d.conn.Close(ctx)
		d.conn = nil
	}
	d.closeAdmins()
}

func (d *DB) closeAdmins() {
	pooler.CloseAll(d.admins)
	d.admins = nil
}

// lookPooled asks the poolers, on their admin connections, opened again
// when one failed. Called with mu held.
func (d *DB) lookPooled(ctx context.Context, conn *pgx.Conn) (*activity.Pooled, error) {
	if len(d.poolers) == 0 {
		return nil, nil
	}
	if d.admins == nil {
		admins, err := pooler.ConnectAll(ctx, d.poolers)
		if err != nil {
			return nil, err
		}
		d.admins = admins
	}
	pooled, err := activity.TakePooled(ctx, conn, d.admins)
	if err != nil {
		d.closeAdmins()
	}
	return pooled, err
}

// session returns the connection, opened again if it was lost. Called
// with mu held.
func (d *DB) session(ctx context.Context) (*pgx.Conn, error) {
	if d.conn != nil && !d.conn.IsClosed() {
		return d.conn, nil
	}
	d.conn = nil
	c, err := d.connect(ctx)
	if err != nil {
		return nil, err
	}
	d.conn = c
	return c, nil
}

// Frame takes a snapshot, and the lock waits when someone waits.
func (d *DB) Frame(ctx context.Context) (*Frame, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	conn, err := d.session(ctx)
	if err != nil {
		return nil, err
	}
	// On a quiet server, the last snapshot at the server's new time:
	// ages move on, nothing else does. Selectors whose match moves with
	// time or queries (Moves) take a snapshot every time.
	var was quiet
	// Behind poolers a server connection changes clients without a word
	// from the server, and clients wait in the poolers: look every time.
	// On a standby, replay moves (its lag, its wait) while no session
	// does: look every time too.
	standby := d.last != nil && d.last.Snap.Replay != nil
	if !d.sel.Moves() && len(d.poolers) == 0 && !standby {
		if was, err = d.look(ctx, conn); err != nil {
			return nil, err
		}
		if d.last != nil && was.same(d.was) && d.last.Snap.ServerStarted.Equal(was.started) {
			snap := *d.last.Snap
			snap.Taken = was.now
			f := *d.last
			f.Snap = &snap
			d.last = &f
			return &f, nil
		}
	}
	pooled, err := d.lookPooled(ctx, conn)
	if err != nil {
		return nil, err
	}
	snap, err := d.sel.WithPooled(pooled).Take(ctx, conn)
	if err != nil {
		return nil, err
	}
	if err := activity.RowLockHolders(ctx, conn, snap); err != nil {
		return nil, err
	}
	waiting := slices.ContainsFunc(snap.Sessions, func(s activity.Session) bool { return s.Waits() })
	f := &Frame{Snap: snap, Server: serverName(conn)}
	if pooled != nil {
		f.Poolers, f.PoolerWaiting = true, pooled.Look.Waiting("")
	}
	if err := activity.PreparedBlockers(ctx, conn, snap); err != nil {
		return nil, err
	}
	if waiting {
		// A second statement only when there is a wait to time.
		if f.Waits, err = maintenance.Waits(ctx, conn); err != nil {
			return nil, err
		}
	}
	// Looked at before the snapshot: what changed in between shows as a
	// change at the next look.
	d.last, d.was = f, was
	return f, nil
}

// Act plans the sessions by their identities in snap and carries the plan
// out: protections, the guarded statement, the wait.
func (d *DB) Act(ctx context.Context, kind action.Kind, snap *activity.Snapshot, sessions []activity.Session) ([]action.Result, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn == nil || d.conn.IsClosed() {
		// A new connection may be to a restarted server; the plan says
		// which server run it was made on, and Execute refuses another.
		if _, err := d.session(ctx); err != nil {
			return nil, err
		}
	}
	pids := make([]int32, len(sessions))
	for i := range sessions {
		pids[i] = sessions[i].PID
	}
	// The selectors top was started with are re-checked too, as cancel
	// and terminate re-check theirs: a session that no longer matches
	// them by the y is reported changed.
	// Behind poolers, judged by the clients the poolers named then.
	plan := action.NewPlan(d.conn, snap, sessions, action.Request{Action: kind, PIDs: pids, Selector: d.sel.WithPooled(snap.Pooled)})
	return action.Execute(ctx, d.conn, plan, action.Options{Wait: actWait})
}

func serverName(conn *pgx.Conn) string {
	cfg := conn.Config()
	version, _, _ := strings.Cut(conn.PgConn().ParameterStatus("server_version"), " ") // "15.4 (Debian 15.4-1)"
	return fmt.Sprintf("%s:%d/%s · PostgreSQL %s", cfg.Host, cfg.Port, cfg.Database, version)
}
