package activity_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/conn"
	"github.com/pgreap/pgreap/internal/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Options{})
}

// open opens a pgreap connection, as the CLI does, to the shared cluster.
func open(t *testing.T, user string) *pgx.Conn { return pgtest.Pgreap(t, user) }

// take snapshots the sessions carrying the test's tag (its application_name).
func take(t *testing.T, cn *pgx.Conn) *activity.Snapshot {
	t.Helper()
	snap, err := activity.Take(pgtest.Context(t), cn, activity.Filter{
		Where: "a.application_name LIKE $1",
		Args:  []any{pgtest.Tag(t) + "%"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func find(snap *activity.Snapshot, pid int32) *activity.Session {
	for i := range snap.Sessions {
		if snap.Sessions[i].PID == pid {
			return &snap.Sessions[i]
		}
	}
	return nil
}

func TestStates(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	idle := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	idle.Exec("SELECT 'idle victim'")
	inTx := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	inTx.Exec("BEGIN")
	inTx.Exec("SELECT 'in transaction'")
	aborted := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	aborted.Exec("BEGIN")
	if _, err := aborted.Conn.Exec(pgtest.Context(t), "SELECT 1/0"); err == nil {
		t.Fatal("1/0 did not fail")
	}
	active := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	active.Start("SELECT pg_catalog.pg_sleep(60) /* active victim */")
	active.WaitState("active", "")

	cn := open(t, pgtest.Superuser)
	snap := take(t, cn)
	if len(snap.Sessions) != 4 {
		t.Fatalf("got %d sessions, want 4: %+v", len(snap.Sessions), snap.Sessions)
	}
	tests := []struct {
		name  string
		v     *pgtest.Victim
		state string
		query string
		xact  bool
	}{
		{"idle", idle, "idle", "SELECT 'idle victim'", false},
		{"idle in transaction", inTx, "idle in transaction", "SELECT 'in transaction'", true},
		// The server clears xact_start when a transaction block aborts.
		{"aborted", aborted, "idle in transaction (aborted)", "SELECT 1/0", false},
		{"active", active, "active", "SELECT pg_catalog.pg_sleep(60) /* active victim */", true},
	}
	for _, tt := range tests {
		s := find(snap, tt.v.PID)
		if s == nil {
			t.Errorf("%s: pid %d missing", tt.name, tt.v.PID)
			continue
		}
		if s.State != tt.state || s.Query != tt.query || s.Datname != db || s.Usename != pgtest.Superuser ||
			s.BackendType != "client backend" || s.ApplicationName != pgtest.Tag(t) {
			t.Errorf("%s: got %+v", tt.name, s)
		}
		if !s.BackendStart.Equal(tt.v.BackendStart) {
			t.Errorf("%s: backend_start %v, want %v", tt.name, s.BackendStart, tt.v.BackendStart)
		}
		if (!s.XactStart.IsZero()) != tt.xact || s.QueryStart.IsZero() || s.StateChange.IsZero() {
			t.Errorf("%s: times %v %v %v", tt.name, s.XactStart, s.QueryStart, s.StateChange)
		}
		if s.ClientAddr.IsValid() {
			t.Errorf("%s: unix socket session has client_addr %v", tt.name, s.ClientAddr)
		}
		if s.BlockedBy != nil {
			t.Errorf("%s: blocked_by %v for a session that waits on no lock", tt.name, s.BlockedBy)
		}
		if age := s.StateAge(snap.Taken); age <= 0 {
			t.Errorf("%s: state age %v", tt.name, age)
		}
	}
	if snap.Taken.IsZero() || snap.ServerVersion/10000 != pgtest.Shared(t).Major {
		t.Errorf("snapshot taken %v on version %d, cluster is %d", snap.Taken, snap.ServerVersion, pgtest.Shared(t).Major)
	}
}

func TestTCPClientAddr(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{TCP: true})
	s := find(take(t, open(t, pgtest.Superuser)), v.PID)
	if s == nil || s.ClientAddr.String() != "127.0.0.1" {
		t.Fatalf("got %+v, want client_addr 127.0.0.1", s)
	}
}

func TestLockWaiterBlockedBy(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder, waiter := pgtest.LockWait(t, db)

	snap := take(t, open(t, pgtest.Superuser))
	w := find(snap, waiter.PID)
	if w == nil || w.WaitEventType != "Lock" || len(w.BlockedBy) != 1 || w.BlockedBy[0] != holder.PID {
		t.Fatalf("waiter: got %+v, want blocked_by [%d]", w, holder.PID)
	}
	h := find(snap, holder.PID)
	if h == nil || h.BlockedBy != nil {
		t.Fatalf("holder: got %+v, want no blocked_by", h)
	}
}

func TestOwnSessionAndBackgroundAbsent(t *testing.T) {
	t.Parallel()
	cn := open(t, pgtest.Superuser)
	snap, err := activity.Take(pgtest.Context(t), cn, activity.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	own := cn.PgConn().PID()
	for _, s := range snap.Sessions {
		if uint32(s.PID) == own {
			t.Errorf("own session %d listed", own)
		}
		if s.Datname == "" {
			t.Errorf("non-client backend listed: %+v", s)
		}
	}
	// The server has background processes; make sure they exist, so the
	// check above is not empty.
	var background int
	err = pgtest.Admin(t).QueryRow(pgtest.Context(t),
		`SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname IS NULL AND backend_type IN ('checkpointer', 'walwriter', 'background writer')`).Scan(&background)
	if err != nil || background == 0 {
		t.Fatalf("no background processes seen (%d, %v)", background, err)
	}
	if len(snap.Sessions) == 0 {
		t.Fatal("no sessions at all: the admin pool should be there")
	}
}

func TestParallelWorkersFollowLeader(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	leader := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	leader.Exec("CREATE TABLE big AS SELECT g AS id FROM pg_catalog.generate_series(1, 200000) AS g")
	leader.Exec("ANALYZE big")
	// Make the planner choose a parallel plan on a small table and keep
	// the workers busy long enough to be seen.
	leader.Exec("SET max_parallel_workers_per_gather = 2")
	leader.Exec("SET parallel_setup_cost = 0")
	leader.Exec("SET parallel_tuple_cost = 0")
	leader.Exec("SET min_parallel_table_scan_size = 0")
	// Opened after the leader and before its workers, the bystander's pid
	// most likely falls between theirs: pid order alone would put it
	// between the leader and its workers.
	bystander := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	leader.Start("SELECT count(*) FROM big WHERE pg_catalog.pg_sleep(0.0005) IS NOT NULL")

	cn := open(t, pgtest.Superuser)
	var snap *activity.Snapshot
	pgtest.Eventually(t, "parallel workers", func() (bool, error) {
		var err error
		snap, err = activity.Take(pgtest.Context(t), cn, activity.Filter{
			Where: "a.application_name = $1 OR a.backend_type = 'parallel worker'",
			Args:  []any{leader.App},
		})
		if err != nil {
			return false, err
		}
		return len(workersOf(snap, leader.PID, db)) > 0, nil
	})
	leaderAt := -1
	for i, s := range snap.Sessions {
		if s.PID == leader.PID {
			leaderAt = i
		}
	}
	if leaderAt < 0 {
		t.Fatal("leader missing")
	}
	if !snap.HasLeaderPID() {
		// PostgreSQL 12 does not say whose worker a worker is: it is kept,
		// with no leader.
		for _, w := range workersOf(snap, leader.PID, db) {
			if w.LeaderPID != 0 {
				t.Errorf("worker %d has leader_pid %d on 12", w.PID, w.LeaderPID)
			}
		}
		return
	}
	n := len(workersOf(snap, leader.PID, db))
	t.Logf("leader %d, bystander %d, %d workers: %+v", leader.PID, bystander.PID, n, snap.Sessions)
	for i := leaderAt + 1; i <= leaderAt+n; i++ {
		if i >= len(snap.Sessions) || snap.Sessions[i].LeaderPID != leader.PID || !snap.Sessions[i].IsParallelWorker() {
			t.Fatalf("row %d after leader (row %d) is not its worker: %+v", i, leaderAt, snap.Sessions)
		}
	}
}

// workersOf are the parallel workers in db: with leader_pid on 13+, by
// database on 12 (the test's database has no other parallel query).
func workersOf(snap *activity.Snapshot, leader int32, db string) []activity.Session {
	var ws []activity.Session
	for _, s := range snap.Sessions {
		if !s.IsParallelWorker() || s.Datname != db {
			continue
		}
		if snap.HasLeaderPID() && s.LeaderPID != leader {
			continue
		}
		ws = append(ws, s)
	}
	return ws
}

func TestWithoutReadAllStats(t *testing.T) {
	t.Parallel()
	other := pgtest.NewVictim(t, pgtest.VictimOptions{})
	other.Exec("SELECT 'secret text'")
	role := pgtest.NewRole(t, "NOSUPERUSER")
	cn := open(t, role)
	snap := take(t, cn)
	s := find(snap, other.PID)
	if s == nil {
		t.Fatalf("another role's session is not listed at all")
	}
	if strings.Contains(s.Query, "secret") || s.Query != "<insufficient privilege>" {
		t.Errorf("query %q: want what the server shows, <insufficient privilege>", s.Query)
	}
	if !s.BackendStart.IsZero() || s.State != "" {
		t.Errorf("got backend_start %v, state %q: the server hides them from this role", s.BackendStart, s.State)
	}
	if s.Usename != pgtest.Superuser {
		t.Errorf("usename %q", s.Usename)
	}

	// With pg_read_all_stats, the same role sees it all.
	pgtest.Exec(t, "GRANT pg_read_all_stats TO "+pgx.Identifier{role}.Sanitize())
	cn2 := open(t, role)
	s = find(take(t, cn2), other.PID)
	if s == nil || s.Query != "SELECT 'secret text'" || !s.BackendStart.Equal(other.BackendStart) {
		t.Errorf("with pg_read_all_stats: got %+v", s)
	}
}

func TestSearchPathCannotHijack(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	v := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	// A lookalike view and function in a schema that comes first.
	v.Exec(`CREATE SCHEMA evil`)
	v.Exec(`CREATE VIEW evil.pg_stat_activity AS SELECT * FROM pg_catalog.pg_stat_activity WHERE false`)
	v.Exec(`CREATE FUNCTION evil.pg_backend_pid() RETURNS int LANGUAGE sql AS 'SELECT 0'`)
	c := pgtest.Shared(t)
	cfg, err := conn.Config(conn.Params{DSN: c.DSN(db, pgtest.Superuser) + " options='-c search_path=evil,pg_catalog'"})
	if err != nil {
		t.Fatal(err)
	}
	cn, err := conn.Connect(pgtest.Context(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close(context.Background())
	snap := take(t, cn)
	if find(snap, v.PID) == nil {
		t.Fatalf("victim not seen through a hijacking search_path: %+v", snap.Sessions)
	}
	for _, s := range snap.Sessions {
		if uint32(s.PID) == cn.PgConn().PID() {
			t.Fatal("own session listed")
		}
	}
}

func TestParseServerVersion(t *testing.T) {
	tests := []struct {
		in   string
		want int
		ok   bool
	}{
		{"15.4", 150004, true},
		{"16beta2", 160000, true},
		{"17.0 (Debian 17.0-1.pgdg120+1)", 170000, true},
		{"12.22", 120022, true},
		{"9.6.24", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, ok := activity.ParseServerVersion(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("%q: got %d %v, want %d %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestGroupWorkers(t *testing.T) {
	in := []activity.Session{
		{PID: 50, LeaderPID: 10, BackendType: "parallel worker"},
		{PID: 30},
		{PID: 10},
		{PID: 40, LeaderPID: 10, BackendType: "parallel worker"},
		{PID: 60, LeaderPID: 99, BackendType: "parallel worker"}, // leader not listed
		{PID: 20, BackendType: "parallel worker"},                // 12: leader unknown
	}
	var got []int32
	for _, s := range activity.GroupWorkers(in) {
		got = append(got, s.PID)
	}
	want := []int32{10, 40, 50, 20, 30, 60}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestQueryID(t *testing.T) {
	t.Parallel()
	if pgtest.Shared(t).Major < 14 {
		t.Skipf("query_id is in pg_stat_activity from PostgreSQL 14; this is %d", pgtest.Shared(t).Major)
	}
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Exec("SET compute_query_id = on")
	v.Start("SELECT pg_catalog.pg_sleep(60)")
	v.WaitState("active", "")
	snap := take(t, open(t, pgtest.Superuser))
	if s := find(snap, v.PID); s == nil || s.QueryID == 0 || !snap.HasQueryID() {
		t.Fatalf("query_id not read: %+v", s)
	}
}

// A filter's Marks are evaluated by the server for each session kept.
func TestMarks(t *testing.T) {
	t.Parallel()
	idle := pgtest.NewVictim(t, pgtest.VictimOptions{})
	tx := pgtest.NewVictim(t, pgtest.VictimOptions{App: pgtest.Tag(t) + "-tx"})
	tx.Exec("BEGIN")
	cn := open(t, pgtest.Superuser)
	snap, err := activity.Take(pgtest.Context(t), cn, activity.Filter{
		Where: "a.application_name LIKE $1",
		Args:  []any{pgtest.Tag(t) + "%", pgtest.Tag(t) + "-tx"},
		Marks: []string{"a.state = 'idle'", "a.application_name = $2", "NULL"},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := map[int32][]bool{}
	for _, s := range snap.Sessions {
		got[s.PID] = s.Marks
	}
	if fmt.Sprint(got[idle.PID]) != "[true false false]" || fmt.Sprint(got[tx.PID]) != "[false true false]" || len(got) != 2 {
		t.Fatalf("marks %v (idle %d, tx %d)", got, idle.PID, tx.PID)
	}
	plain, err := activity.Take(pgtest.Context(t), cn, activity.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range plain.Sessions {
		if s.Marks != nil {
			t.Fatalf("marks without Marks: %v", s.Marks)
		}
	}
}
