package activity

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgreap/pgreap/internal/pooler"
)

//go:embed sql/*.sql
var sqlFiles embed.FS

// Session is one row of pg_stat_activity: a client session, or a parallel
// worker of one. A NULL column is the Go zero value (the empty string, the
// zero time, 0), except ApplicationName and Query, where the empty string is
// a real value.
type Session struct {
	PID             int32
	LeaderPID       int32 // 0: not a parallel worker, or unknown (PostgreSQL 12)
	Datname         string
	Usename         string
	ApplicationName string
	ClientAddr      netip.Addr // invalid: a unix socket, or not visible to us
	ClientPort      int32      // -1: a unix socket; 0: not visible to us
	BackendType     string
	State           string
	BackendStart    time.Time
	XactStart       time.Time
	QueryStart      time.Time
	StateChange     time.Time
	WaitEventType   string
	WaitEvent       string
	Query           string
	QueryID         int64 // 0: not computed (compute_query_id), or before 14
	// BlockedBy names the backends that block this one; set only for
	// sessions waiting on a lock.
	BlockedBy []int32
	// BlockedByPrepared names, by GID, the prepared transactions that
	// block this one: no backend holds their locks.
	BlockedByPrepared []string
	// BlockingReplay: on a hot standby, the session holds a lock that WAL
	// replay waits for (Replay).
	BlockingReplay bool
	// WaitStart is when the session began to wait on a lock: on 14+
	// pg_locks.waitstart, before 14 its statement's start (unblock measures
	// a wait so); zero when it waits on none, or the server does not show it.
	WaitStart time.Time
	// BlockingSince is set only on a root of lock waits (a backend that
	// blocks others and waits on no lock itself): when the oldest wait it
	// holds up, directly or through others, began. maintenance.MarkRoots
	// sets it.
	BlockingSince time.Time
	// GID is set only on a row that stands for a prepared transaction
	// (Snapshot.Prepared): it has no backend, and PID is 0.
	GID string
	// Marks are the values of a filter's Marks for this session, in
	// order; nil without Marks.
	Marks []bool
	// Pooler is, for a server connection of a pooler in front of the
	// server, what the pooler says of it: the client it serves now, or
	// none (idle in the pool). Nil for a direct client, and without
	// poolers (Pooled.Attach sets it).
	Pooler *pooler.Link
}

// Waits reports whether the session waits for a backend or a prepared
// transaction to release a lock.
func (s *Session) Waits() bool {
	return len(s.BlockedBy) > 0 || len(s.BlockedByPrepared) > 0
}

// IsPrepared reports whether the row stands for a prepared transaction,
// not a backend.
func (s *Session) IsPrepared() bool { return s.GID != "" }

// IsParallelWorker reports whether the session is a parallel worker: it
// dies with its leader, and it is the leader that one acts on.
func (s *Session) IsParallelWorker() bool {
	return s.BackendType == "parallel worker"
}

// StateSince is when the session's current state began: for an active
// session its query's start, for a prepared transaction its preparation,
// otherwise the state's change. It is the zero time when the server did
// not show us the times. StateSinceSQL is the same on the server.
func (s *Session) StateSince() time.Time {
	switch {
	case s.State == "active":
		return s.QueryStart
	case s.IsPrepared():
		return s.XactStart // prepared since
	}
	return s.StateChange
}

// StateSinceSQL is StateSince as an SQL expression over the
// pg_stat_activity row aliased alias (which has no prepared transaction).
func StateSinceSQL(alias string) string {
	return fmt.Sprintf("CASE WHEN %[1]s.state = 'active' THEN %[1]s.query_start ELSE %[1]s.state_change END", alias)
}

// StateAge is how long the session has been in its current state at now
// (StateSince); 0 when the server did not show us the times.
func (s *Session) StateAge(now time.Time) time.Duration {
	since := s.StateSince()
	if since.IsZero() || now.Before(since) {
		return 0
	}
	return now.Sub(since)
}

// Snapshot is one look at pg_stat_activity.
type Snapshot struct {
	// Taken is the server's clock when it took the snapshot; ages are
	// measured against it, not against the local clock.
	Taken time.Time
	// ServerVersion is the server's server_version_num (150004 for 15.4).
	ServerVersion int
	// ServerStarted is pg_postmaster_start_time(): with the address, it
	// tells one server run from another (a restart changes it).
	ServerStarted time.Time
	// Sessions are ordered by pid, each parallel worker right after its
	// leader.
	Sessions []Session
	// Prepared are the prepared transactions that sessions wait on, as
	// rows with GID set (backend_type "prepared transaction", the owner
	// as usename, the prepared time as xact_start); PreparedBlockers
	// fills it.
	Prepared []Session
	// Pooled is what the poolers in front of the server said just before
	// the snapshot (nil: no poolers asked); its sessions' Pooler come
	// from it.
	Pooled *Pooled
	// Replay is the WAL replay of a hot standby, whatever the filter;
	// nil on a primary.
	Replay *Replay
}

// Replay is the WAL replay of a hot standby: its startup process, which is
// no client (it is never among a snapshot's sessions, and no action takes
// it), and what the server says of the replay.
type Replay struct {
	// Startup is the startup process's row. Its BlockedBy names the
	// backends that hold up replay: pg_blocking_pids of the startup
	// process is empty, so they are found in pg_locks
	// (sql/replay_blockers.sql).
	Startup Session
	// ReplayTimestamp is pg_last_xact_replay_timestamp(): when the last
	// transaction replayed committed on the primary; zero before any.
	ReplayTimestamp time.Time
	// ReceiveLSN and ReplayLSN are the WAL received from the primary and
	// replayed; ReceiveLSN is empty when the standby does not stream
	// (WAL from an archive).
	ReceiveLSN string
	ReplayLSN  string
	// LagBytes is the WAL received but not yet replayed; nil when not
	// streaming.
	LagBytes *int64
	// WaitingSince is when replay began to wait for a lock
	// (pg_locks.waitstart, 14+); zero when it does not wait or the server
	// does not say.
	WaitingSince time.Time
	// Conflicts are pg_stat_database_conflicts summed over the databases:
	// the queries the server has cancelled itself so that replay could go
	// on, by cause, since the statistics were reset.
	Conflicts Conflicts
	// LockWait: replay waits for a lock (pg_locks says so to every role).
	LockWait bool
	// Hidden: this role cannot see the startup process's row
	// (pg_read_all_stats): its wait events are unknown, and its pid too
	// unless it waits for a lock.
	Hidden bool
}

// Conflicts count the queries a hot standby cancelled for replay, by cause
// (pg_stat_database_conflicts' confl_* columns).
type Conflicts struct {
	Tablespace int64 `json:"tablespace"`
	Lock       int64 `json:"lock"`
	Snapshot   int64 `json:"snapshot"`
	BufferPin  int64 `json:"bufferpin"`
	Deadlock   int64 `json:"deadlock"`
}

// Total is the number of queries cancelled, whatever the cause.
func (c Conflicts) Total() int64 {
	return c.Tablespace + c.Lock + c.Snapshot + c.BufferPin + c.Deadlock
}

// Lag is how far replay is behind at now: the time since the last
// transaction replayed committed on the primary (now() -
// pg_last_xact_replay_timestamp()). On a primary that commits nothing it
// grows though nothing is left to replay; LagBytes tells. -1: nothing
// replayed yet.
func (r *Replay) Lag(now time.Time) time.Duration {
	if r.ReplayTimestamp.IsZero() {
		return -1
	}
	if now.Before(r.ReplayTimestamp) {
		return 0
	}
	return now.Sub(r.ReplayTimestamp)
}

// Waits reports whether replay is held up by sessions (WaitKind).
func (r *Replay) Waits() bool { return r.WaitKind() != "" }

// WaitKind says for what replay waits on sessions: "lock" (Startup.
// BlockedBy names who holds it), "buffer pin" (a query reading a page
// replay must change), "snapshot conflict" (queries whose snapshot still
// sees rows a vacuum on the primary removed), "tablespace conflict"
// (queries using a tablespace the primary drops); "" when it waits for
// none of them. The server names the sessions only for a lock; it shows
// conflict waits from 13 on, and the startup process's waits only to a
// role that may see it (not Hidden).
func (r *Replay) WaitKind() string {
	switch {
	case r.LockWait || r.Startup.WaitEventType == "Lock":
		return "lock"
	case r.Startup.WaitEventType == "BufferPin":
		return "buffer pin"
	case r.Startup.WaitEvent == "RecoveryConflictSnapshot":
		return "snapshot conflict"
	case r.Startup.WaitEvent == "RecoveryConflictTablespace":
		return "tablespace conflict"
	}
	return ""
}

// Paused reports whether replay is paused (pg_wal_replay_pause()), as far
// as this role may see the startup process.
func (r *Replay) Paused() bool { return r.Startup.WaitEvent == "RecoveryPause" }

// UnknownWhy says why replay's blockers are not named (BlockersUnknown):
// what it waits for, and where to look.
func (r *Replay) UnknownWhy() string {
	switch r.WaitKind() {
	case "buffer pin":
		return "a buffer pin (a session reading a page replay must change: a running query, or an open cursor)"
	case "snapshot conflict":
		return "queries whose snapshot still sees rows a vacuum on the primary removed (look for the oldest backend_xmin, often an old transaction)"
	case "tablespace conflict":
		return "queries using a tablespace the primary dropped"
	}
	return "a lock that no session holds any more, or whose holder this role cannot see"
}

// BlockersUnknown reports whether replay waits for sessions the server
// does not name: a buffer pin, a conflict, or a lock whose holders ended
// or are hidden.
func (r *Replay) BlockersUnknown() bool {
	return r.Waits() && len(r.Startup.BlockedBy) == 0
}

// WaitAge is how long replay has waited for a lock at now; 0 when it does
// not wait or the server does not say (before 14).
func (r *Replay) WaitAge(now time.Time) time.Duration {
	if r.WaitingSince.IsZero() || !r.Waits() || now.Before(r.WaitingSince) {
		return 0
	}
	return now.Sub(r.WaitingSince)
}

// replayFacts is the snapshot's replay column of the startup row.
type replayFacts struct {
	ReplayTimestamp *time.Time `json:"replay_timestamp"`
	ReceiveLSN      *string    `json:"receive_lsn"`
	ReplayLSN       *string    `json:"replay_lsn"`
	LagBytes        *float64   `json:"lag_bytes"`
	WaitingSince    *time.Time `json:"waiting_since"`
	LockWait        bool       `json:"lock_wait"`
	Blockers        []int32    `json:"blockers"`
	Conflicts       *struct {
		Tablespace, Lock, Snapshot, BufferPin, Deadlock *int64
	} `json:"conflicts"`
}

// mayBeStandby reports whether the server may be in recovery, for a
// snapshot without a row to say: from 14 the server reports
// in_hot_standby when the connection starts and whenever it changes.
func mayBeStandby(conn *pgx.Conn, version int) bool {
	return version < 140000 || conn.PgConn().ParameterStatus("in_hot_standby") != "off"
}

// hiddenReplay is the replay of a standby whose startup process the
// snapshot did not show (Replay.Hidden); nil on a primary.
func hiddenReplay(ctx context.Context, conn *pgx.Conn, version int) (*Replay, error) {
	sql := strings.NewReplacer("/*replay_ctes*/", replayCTEs, "/*replay_facts*/", replayFactsExpr(version)).Replace(replaySQL)
	var b []byte
	err := conn.QueryRow(ctx, sql).Scan(&b)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot: replay: %w", err)
	}
	return parseReplay(Session{BackendType: "startup"}, b, true)
}

// parseReplay reads the replay column of the startup process's row s;
// hidden: this role may not see the process (its backend_type was NULL).
func parseReplay(s Session, b []byte, hidden bool) (*Replay, error) {
	var f replayFacts
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("snapshot: replay: %w", err)
	}
	r := &Replay{Startup: s, LockWait: f.LockWait}
	r.Startup.BlockedBy = f.Blockers
	if hidden {
		// Its row, known by its locks, or none: this role may not see
		// what it is (pg_read_all_stats). pg_locks says whether it waits.
		r.Hidden = true
		if r.LockWait {
			r.Startup.WaitEventType = "Lock"
		}
	}
	if f.ReplayTimestamp != nil {
		r.ReplayTimestamp = *f.ReplayTimestamp
	}
	if f.ReceiveLSN != nil {
		r.ReceiveLSN = *f.ReceiveLSN
	}
	if f.ReplayLSN != nil {
		r.ReplayLSN = *f.ReplayLSN
	}
	if f.LagBytes != nil {
		n := int64(*f.LagBytes)
		r.LagBytes = &n
	}
	if f.WaitingSince != nil {
		r.WaitingSince = *f.WaitingSince
	}
	if c := f.Conflicts; c != nil {
		for _, v := range []struct {
			to   *int64
			from *int64
		}{{&r.Conflicts.Tablespace, c.Tablespace}, {&r.Conflicts.Lock, c.Lock}, {&r.Conflicts.Snapshot, c.Snapshot},
			{&r.Conflicts.BufferPin, c.BufferPin}, {&r.Conflicts.Deadlock, c.Deadlock}} {
			if v.from != nil {
				*v.to = *v.from
			}
		}
	}
	return r, nil
}

// BackendTypePrepared is the backend_type of a prepared transaction's row:
// pg_stat_activity has no such type, since no backend holds it.
const BackendTypePrepared = "prepared transaction"

// HasLeaderPID reports whether the server tells a parallel worker's leader
// (leader_pid is 13+).
func (s *Snapshot) HasLeaderPID() bool { return s.ServerVersion >= 130000 }

// HasQueryID reports whether the server has pg_stat_activity.query_id (14+).
func (s *Snapshot) HasQueryID() bool { return s.ServerVersion >= 140000 }

// Filter narrows a snapshot on the server: Where is an SQL boolean
// expression over pg_catalog.pg_stat_activity aliased "a", with parameters
// numbered from $1, bound to Args. The zero Filter keeps every session.
type Filter struct {
	Where string
	Args  []any
	// Marks are more SQL boolean expressions over "a", with the same
	// parameters, evaluated for every session kept: Session.Marks holds
	// them (NULL is false). The watch daemon learns in its one snapshot
	// which rules match which session.
	Marks []string
}

// MinVersion is the oldest server pgreap supports (PostgreSQL 12).
const MinVersion = 120000

// ServerVersion is the server's version as server_version_num. It is read
// from the server_version parameter the server reports when the connection
// starts, so it costs no round trip; only if that cannot be read does it ask
// with SHOW server_version_num.
func ServerVersion(ctx context.Context, conn *pgx.Conn) (int, error) {
	if v, ok := parseServerVersion(conn.PgConn().ParameterStatus("server_version")); ok {
		return v, nil
	}
	var s string
	if err := conn.QueryRow(ctx, serverVersionSQL).Scan(&s); err != nil {
		return 0, fmt.Errorf("server version: %w", err)
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("server version: cannot read %q", s)
	}
	return v, nil
}

var versionRE = regexp.MustCompile(`^(\d+)(?:\.(\d+))?`)

// parseServerVersion reads "15.4", "16beta2" or "17.0 (Debian 17.0-1)" as
// server_version_num does (150004, 160000, 170000).
func parseServerVersion(s string) (int, bool) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return 0, false
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	if major < 10 {
		return 0, false // 9.6.x: not supported, and numbered otherwise
	}
	return major*10000 + minor, true
}

// Statement returns the snapshot statement for a server version.
func Statement(version int) (string, error) {
	if version < MinVersion {
		return "", fmt.Errorf("PostgreSQL %d is not supported (12 or later is)", version/10000)
	}
	file := "sql/snapshot.v14.sql"
	switch {
	case version < 130000:
		file = "sql/snapshot.v12.sql"
	case version < 140000:
		file = "sql/snapshot.v13.sql"
	}
	b, err := sqlFiles.ReadFile(file)
	if err != nil {
		return "", err
	}
	return strings.NewReplacer("/*replay_ctes*/", replayCTEs, "/*replay_facts*/", replayFactsExpr(version)).Replace(string(b)), nil
}

// replayCTEs are the common table expressions of the statements that look
// at replay: replay_locks (its ACCESS EXCLUSIVE locks, held or awaited) and replay_blockers
// (who holds it), which reads the waiter's row from the first.
var replayCTEs = "replay_locks AS MATERIALIZED (\n" + replayLocksSQL + "),\n     replay_blockers AS MATERIALIZED (\n" +
	strings.Replace(mustSQL("replay_blockers.sql"), "/*replay_locks*/", "SELECT * FROM replay_locks", 1) + ")"

// replayFactsExpr is the JSON object that says how replay stands, over
// replayCTEs (pg_locks.waitstart is 14+).
func replayFactsExpr(version int) string {
	waitstart := "w.waitstart"
	if version < 140000 {
		waitstart = "NULL::timestamptz"
	}
	return strings.TrimSpace(strings.Replace(replayFactsSQL, "/*waitstart*/", waitstart, 1))
}

// statementFor returns the server's version and its snapshot statement.
func statementFor(ctx context.Context, conn *pgx.Conn) (int, string, error) {
	version, err := ServerVersion(ctx, conn)
	if err != nil {
		return 0, "", err
	}
	sql, err := Statement(version)
	return version, sql, err
}

// Take takes a snapshot in one statement: the sessions the filter keeps,
// without pgreap's own session and without non-client backends.
func Take(ctx context.Context, conn *pgx.Conn, f Filter) (*Snapshot, error) {
	version, sql, err := statementFor(ctx, conn)
	if err != nil {
		return nil, err
	}
	if f.Where != "" {
		// The startup process stays: it is the replay, not a session
		// (known by the lock it waits for, to a role that may not see it).
		sql += "   AND (a.backend_type = 'startup' OR a.pid IN (SELECT w.pid FROM replay_locks AS w) OR (" + f.Where + "))\n"
	}
	if len(f.Marks) > 0 {
		from := strings.Index(sql, fromActivity)
		if from < 0 {
			return nil, fmt.Errorf("snapshot statement has no %q", fromActivity)
		}
		terms := make([]string, len(f.Marks))
		for i, m := range f.Marks {
			terms[i] = "(" + m + ") IS TRUE"
		}
		sql = sql[:from] + ",\n       ARRAY[" + strings.Join(terms, ",\n             ") + "] AS marks" + sql[from:]
	}
	return take(ctx, conn, version, len(f.Marks) > 0, true, sql+" ORDER BY a.pid", f.Args...)
}

// Lookup takes the backends with these pids as they are, pgreap's own and
// non-client backends included: an action named by pid must say why it
// refuses those. Workers are not grouped under their leaders.
func Lookup(ctx context.Context, conn *pgx.Conn, pids []int32) (*Snapshot, error) {
	version, sql, err := statementFor(ctx, conn)
	if err != nil {
		return nil, err
	}
	// The same columns as a snapshot, without its exclusions.
	where := strings.LastIndex(sql, "\n WHERE ") // the statement's own, after its CTEs
	if where < 0 {
		return nil, fmt.Errorf("lookup: snapshot statement has no WHERE clause")
	}
	return take(ctx, conn, version, false, false, sql[:where]+"\n WHERE a.pid = ANY ($1::integer[])\n ORDER BY a.pid", pids)
}

// fromActivity ends the snapshot statements' column lists.
const fromActivity = "\n  FROM pg_catalog.pg_stat_activity AS a"

// take runs a snapshot statement. With replay, the startup process's row
// is the snapshot's Replay, not a session.
func take(ctx context.Context, conn *pgx.Conn, version int, marks, replay bool, sql string, args ...any) (*Snapshot, error) {
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	defer rows.Close()
	snap := &Snapshot{ServerVersion: version}
	// Scanned into pgtype values rather than pointers: no allocation per
	// nullable column, which counts with thousands of sessions.
	var (
		leader                                          pgtype.Int4
		datname, usename, app, btype, state, wet, we, q pgtype.Text
		addr                                            *netip.Prefix // NULL for most: no allocation
		bs, xs, qs, sc, ws                              pgtype.Timestamptz
		qid                                             pgtype.Int8
		port                                            pgtype.Int4
		replayCol                                       []byte
		inRecovery                                      bool
	)
	var s Session
	dest := []any{&s.PID, &leader, &datname, &usename, &app, &addr, &port, &btype, &state,
		&bs, &xs, &qs, &sc, &wet, &we, &q, &qid, &s.BlockedBy, &s.BlockedByPrepared, &s.BlockingReplay, &ws, &replayCol,
		&inRecovery, &snap.Taken, &snap.ServerStarted}
	if marks {
		dest = append(dest, &s.Marks)
	}
	for rows.Next() {
		s = Session{} // scanned into afresh: the slices are the new row's
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
		s.LeaderPID, s.QueryID, s.ClientPort = leader.Int32, qid.Int64, port.Int32
		s.Datname, s.Usename, s.ApplicationName = datname.String, usename.String, app.String
		s.BackendType, s.State = btype.String, state.String
		s.WaitEventType, s.WaitEvent, s.Query = wet.String, we.String, q.String
		s.BackendStart, s.XactStart, s.QueryStart, s.StateChange = bs.Time, xs.Time, qs.Time, sc.Time
		s.WaitStart = ws.Time
		if addr != nil {
			s.ClientAddr = addr.Addr()
			addr = nil
		}
		if replayCol != nil && s.BackendType == "" {
			// The startup process, known by its locks to a role that
			// may not see what it is (pg_read_all_stats): say so, so
			// that whatever names it by pid tells it is WAL replay.
			s.BackendType = "startup"
		}
		if replay && replayCol != nil {
			r, err := parseReplay(s, replayCol, !btype.Valid)
			if err != nil {
				return nil, err
			}
			snap.Replay = r
			continue
		}
		snap.Sessions = append(snap.Sessions, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if replay && snap.Replay == nil && (inRecovery || len(snap.Sessions) == 0 && mayBeStandby(conn, version)) {
		// A standby whose startup process this role cannot tell from the
		// other background processes, or no row that says: ask.
		if snap.Replay, err = hiddenReplay(ctx, conn, version); err != nil {
			return nil, err
		}
	}
	if snap.Taken.IsZero() {
		snap.Taken = time.Now()
	}
	snap.Sessions = GroupWorkers(snap.Sessions)
	return snap, nil
}

// GroupWorkers orders sessions by pid and moves each parallel worker right
// after its leader, when the leader is among them. Workers whose leader is
// not (it was filtered out, or the server is 12 and does not say) keep their
// place by pid.
func GroupWorkers(in []Session) []Session {
	sessions := in
	if !sort.SliceIsSorted(sessions, func(i, j int) bool { return sessions[i].PID < sessions[j].PID }) {
		sessions = append([]Session(nil), in...)
		sort.SliceStable(sessions, func(i, j int) bool { return sessions[i].PID < sessions[j].PID })
	}
	if !slices.ContainsFunc(sessions, func(s Session) bool { return s.LeaderPID != 0 && s.LeaderPID != s.PID }) {
		return sessions // no worker whose leader is known: nothing moves
	}
	present := make(map[int32]bool, len(sessions))
	for _, s := range sessions {
		present[s.PID] = true
	}
	workers := map[int32][]Session{}
	out := make([]Session, 0, len(sessions))
	for _, s := range sessions {
		if s.LeaderPID != 0 && s.LeaderPID != s.PID && present[s.LeaderPID] {
			workers[s.LeaderPID] = append(workers[s.LeaderPID], s)
		}
	}
	for _, s := range sessions {
		if s.LeaderPID != 0 && s.LeaderPID != s.PID && present[s.LeaderPID] {
			continue
		}
		out = append(out, s)
		out = append(out, workers[s.PID]...)
	}
	return out
}

// PreparedBlockers fills snap.Prepared with the prepared transactions that
// sessions of snap wait on. It costs a statement only when one does; a
// transaction ended since the snapshot is not there.
func PreparedBlockers(ctx context.Context, conn *pgx.Conn, snap *Snapshot) error {
	var gids []string
	for i := range snap.Sessions {
		for _, g := range snap.Sessions[i].BlockedByPrepared {
			if !slices.Contains(gids, g) {
				gids = append(gids, g)
			}
		}
	}
	snap.Prepared = nil
	if len(gids) == 0 {
		return nil
	}
	var err error
	snap.Prepared, err = prepared(ctx, conn, gids, nil)
	return err
}

// PreparedIn are the prepared transactions of a database ("": of every
// database), oldest first, as rows with GID set: no session, yet they hold
// their locks.
func PreparedIn(ctx context.Context, conn *pgx.Conn, database string) ([]Session, error) {
	if database == "" {
		return prepared(ctx, conn, nil, nil)
	}
	return prepared(ctx, conn, nil, &database)
}

func prepared(ctx context.Context, conn *pgx.Conn, gids []string, database *string) ([]Session, error) {
	rows, err := conn.Query(ctx, preparedSQL, gids, database)
	if err != nil {
		return nil, fmt.Errorf("prepared transactions: %w", err)
	}
	found, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Session, error) {
		s := Session{BackendType: BackendTypePrepared}
		err := r.Scan(&s.GID, &s.Datname, &s.Usename, &s.XactStart)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("prepared transactions: %w", err)
	}
	return found, nil
}

var (
	preparedSQL = mustSQL("prepared.sql")
	rowLocksSQL = mustSQL("rowlocks.sql")
	holdersSQL  = mustSQL("holders.sql")
	setLocalSQL = mustSQL("set_local.sql")

	replayLocksSQL = mustSQL("replay_locks.sql")
	replayFactsSQL = mustSQL("replay_facts.sql")
	replaySQL      = mustSQL("replay.sql")

	// ReplayBlockersSQL is a statement whose rows are the pids of the
	// backends that hold up WAL replay on a hot standby (none on a
	// primary): the selector's blocking_replay, as the snapshot's.
	ReplayBlockersSQL = strings.Replace(mustSQL("replay_blockers.sql"), "/*replay_locks*/", replayLocksSQL, 1)

	pooledAskedSQL = mustSQL("pooled_asked.sql")
	pooledSQL      = mustSQL("pooled.sql")

	serverVersionSQL = mustSQL("server_version.sql")
)

func mustSQL(name string) string {
	b, err := sqlFiles.ReadFile("sql/" + name)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// RowLockHolders adds to BlockedBy of a session waiting on a row every
// transaction whose lock on the row it waits for, not only the one
// pg_blocking_pids names: a row locked FOR SHARE by several transactions has
// a multixact as xmax, and the waiter waits for the conflicting members one
// after another. It reads the row's xmax by its table's name, as the
// table's owner, only for rows of the database pgreap is connected to, in
// tables without row level security whose owner pgreap's role may act as,
// owned, as their schema, by a superuser or pgreap's own login role: no
// one with less than pgreap's rights may make the name stand for code
// (sql/rowlocks.sql says why),
// without waiting on a lock (a pending ALTER TABLE queues every reader):
// elsewhere BlockedBy stays as the server says. It costs statements only
// when a session waits on a row; the commands that show or end lock waits
// call it, the daemon and the action's choice do not.
func RowLockHolders(ctx context.Context, conn *pgx.Conn, snap *Snapshot) error {
	var waiters []int32
	at := map[int32]int{}
	for i := range snap.Sessions {
		if s := &snap.Sessions[i]; s.Waits() {
			waiters = append(waiters, s.PID)
			at[s.PID] = i
		}
	}
	if len(waiters) == 0 {
		return nil
	}
	rows, err := conn.Query(ctx, rowLocksSQL, waiters)
	if err != nil {
		return fmt.Errorf("row locks: %w", err)
	}
	waits, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (rowWait, error) {
		var w rowWait
		err := r.Scan(&w.pid, &w.waitsFor, &w.mode, &w.page, &w.tuple, &w.schema, &w.table, &w.owner)
		return w, err
	})
	if err != nil {
		return fmt.Errorf("row locks: %w", err)
	}
	for _, w := range waits {
		holders, err := w.holders(ctx, conn)
		if err != nil {
			return err
		}
		// Those whose lock its own conflicts with; and they are its wait's
		// only if the transaction it waits for is among them.
		asks := requestedRowLock[w.mode]
		holders = slices.DeleteFunc(holders, func(h rowHolder) bool { return heldRowLock[h.mode]+asks < 3 })
		if !slices.ContainsFunc(holders, func(h rowHolder) bool { return h.xid == w.waitsFor }) {
			continue
		}
		s := &snap.Sessions[at[w.pid]]
		for _, h := range holders {
			if h.pid != s.PID && !slices.Contains(s.BlockedBy, h.pid) {
				s.BlockedBy = append(s.BlockedBy, h.pid)
			}
		}
	}
	return nil
}

// rowWait is a session waiting on a row: the row, the transaction it waits
// for, and the mode of its tuple lock.
type rowWait struct {
	pid                  int32
	waitsFor, mode       string
	page, tuple          int32
	schema, table, owner string
}

type rowHolder struct {
	pid       int32
	xid, mode string
}

// testHookBeforeRowRead runs between the look at the row locks and the read
// of a row, in tests; nil outside them.
var testHookBeforeRowRead func()

// Row lock strengths, 0 (FOR KEY SHARE) to 3 (FOR UPDATE): two locks on a
// row conflict when their strengths add up to 3 or more (PostgreSQL's
// tuple lock conflict table). requestedRowLock is what a waiter asks for,
// by the mode of the tuple lock it holds while it waits (heapam.c's
// tupleLockExtraInfo); heldRowLock what a multixact member holds, by
// pg_get_multixact_members' mode.
var (
	requestedRowLock = map[string]int{"AccessShareLock": 0, "RowShareLock": 1, "ExclusiveLock": 2, "AccessExclusiveLock": 3}
	heldRowLock      = map[string]int{"keysh": 0, "sh": 1, "fornokeyupd": 2, "nokeyupd": 2, "forupd": 3, "upd": 3}
)

// holders reads the row's multixact members and their backends, as the
// table's owner, in a transaction of its own where row level security
// raises an error rather than run a policy, and a lock it would have to
// wait for is given up at once. A row it cannot read gives no holders, and
// no error.
func (w *rowWait) holders(ctx context.Context, conn *pgx.Conn) ([]rowHolder, error) {
	if testHookBeforeRowRead != nil {
		testHookBeforeRowRead()
	}
	var holders []rowHolder
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, set := range [][2]string{{"role", w.owner}, {"row_security", "off"}, {"lock_timeout", "10ms"}} {
			if _, err := tx.Exec(ctx, setLocalSQL, set[0], set[1]); err != nil {
				return err
			}
		}
		sql := strings.Replace(holdersSQL, "/*table*/", "ONLY "+pgx.Identifier{w.schema, w.table}.Sanitize(), 1)
		rows, err := tx.Query(ctx, sql, fmt.Sprintf("(%d,%d)", w.page, w.tuple), w.waitsFor)
		if err != nil {
			return err
		}
		holders, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (rowHolder, error) {
			var h rowHolder
			err := r.Scan(&h.pid, &h.xid, &h.mode)
			return h, err
		})
		return err
	})
	if err != nil && isStatementError(err) {
		// Not readable (no privilege, a policy, a lock it would wait
		// for), or its xmax no multixact: the server's answer stands.
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("row lock holders: %w", err)
	}
	return holders, nil
}

// isStatementError: the server refused the statement; the connection is
// still usable.
func isStatementError(err error) bool {
	var pgErr interface{ SQLState() string }
	return errors.As(err, &pgErr)
}
