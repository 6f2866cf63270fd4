package selector_test

import (
	"testing"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/selector"
)

// relation is the lock object of a table of db, by name.
func relation(t *testing.T, db, table string) selector.LockObject {
	t.Helper()
	var dbOID, relOID uint32
	cn := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	if err := cn.QueryRow(pgtest.Context(t), `SELECT d.oid, pg_catalog.to_regclass($1)::pg_catalog.oid
	    FROM pg_catalog.pg_database AS d WHERE d.datname = pg_catalog.current_database()`, table).Scan(&dbOID, &relOID); err != nil {
		t.Fatal(err)
	}
	return selector.Relation(dbOID, relOID)
}

// TestLockConflict: the sessions that hold or await a lock on the table
// that conflicts with a mode, by PostgreSQL's conflict table, in a snapshot
// (Compile) and one session at a time (CompileEach); never a session whose
// locks are on another table.
func TestLockConflict(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	tag := pgtest.Tag(t)
	setup := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, App: tag + "-setup"})
	setup.Exec("CREATE TABLE t (id int); CREATE TABLE u (id int)")
	hold := func(name, mode, table string) *pgtest.Victim {
		v := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, App: tag + "-" + name})
		v.Exec("BEGIN")
		v.Exec("LOCK TABLE " + table + " IN " + mode + " MODE")
		return v
	}
	// Modes that coexist on t, each held by one session.
	as := hold("as", "ACCESS SHARE", "t")
	rs := hold("rs", "ROW SHARE", "t")
	re := hold("re", "ROW EXCLUSIVE", "t")
	sue := hold("sue", "SHARE UPDATE EXCLUSIVE", "t")
	// SHARE conflicts with ROW EXCLUSIVE: it waits, and awaits SHARE.
	waiter := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, App: tag + "-waiter"})
	waiter.Start("BEGIN; LOCK TABLE t IN SHARE MODE")
	waiter.WaitState("active", "Lock")
	bystander := hold("bystander", "ACCESS EXCLUSIVE", "u")
	cn := open(t)
	ctx := pgtest.Context(t)
	onT, onU := relation(t, db, "t"), relation(t, db, "u")
	all := []*pgtest.Victim{as, rs, re, sue, waiter, bystander}
	parent := t // its tag is the sessions'

	for _, tt := range []struct {
		name   string
		mode   string
		object selector.LockObject
		want   []*pgtest.Victim
		held   bool
	}{
		{"access exclusive: every lock on t", "ACCESS EXCLUSIVE", onT, []*pgtest.Victim{as, rs, re, sue, waiter}, false},
		{"exclusive: all but access share", "exclusive", onT, []*pgtest.Victim{rs, re, sue, waiter}, false},
		{"share: row exclusive and share update exclusive, not the share awaited", "Share", onT, []*pgtest.Victim{re, sue}, false},
		{"row exclusive: the share awaited", "RowExclusiveLock", onT, []*pgtest.Victim{waiter}, false},
		{"access share: nothing on t", "access  share", onT, nil, false},
		{"access share on u: its holder", "ACCESS SHARE", onU, []*pgtest.Victim{bystander}, false},
		{"access exclusive held: the holders, not the share awaited", "ACCESS EXCLUSIVE", onT, []*pgtest.Victim{as, rs, re, sue}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mode, err := selector.ParseLockMode(tt.mode)
			if err != nil {
				t.Fatal(err)
			}
			spec := selector.Spec{App: []string{tag + "-*"}, LockConflict: &selector.LockConflict{Objects: []selector.LockObject{tt.object}, Mode: mode, Held: tt.held}}
			check(t, "snapshot", pids(parent, cn, spec), want(tt.want...))
			sel, err := selector.Parse(spec)
			if err != nil {
				t.Fatal(err)
			}
			where, args := sel.CompileEach("a", 2)
			var each []*pgtest.Victim
			for _, v := range all {
				var ok bool
				if err := cn.QueryRow(ctx, "SELECT "+where+" FROM pg_catalog.pg_stat_activity AS a WHERE a.pid = $1",
					append([]any{v.PID}, args...)...).Scan(&ok); err != nil {
					t.Fatal(err)
				}
				if ok {
					each = append(each, v)
				}
			}
			check(t, "each", want(each...), want(tt.want...))
		})
	}
}

// TestLockConflictEachReadsAtItsRow: in a signalling statement the term
// reads the lock table at each session's row, not once for the statement:
// a lock the statement itself takes in its second row (after the first
// row read the lock table) is seen there.
func TestLockConflictEachReadsAtItsRow(t *testing.T) {
	t.Parallel()
	cn := open(t)
	ctx := pgtest.Context(t)
	var dbOID uint32
	if err := cn.QueryRow(ctx, "SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()").Scan(&dbOID); err != nil {
		t.Fatal(err)
	}
	// pg_advisory_xact_lock(bigint) takes ExclusiveLock on an "advisory"
	// object: classid and objid the key's high and low halves, objsubid 1.
	const key = 922337
	zero, low, one := uint32(0), uint32(key), int16(1)
	sel, err := selector.Parse(selector.Spec{LockConflict: &selector.LockConflict{Mode: "ExclusiveLock",
		Objects: []selector.LockObject{{LockType: "advisory", Database: &dbOID, ClassID: &zero, ObjID: &low, ObjSubID: &one}}}})
	if err != nil {
		t.Fatal(err)
	}
	where, args := sel.CompileEach("a", 2)
	rows, err := cn.Query(ctx, `SELECT g.n, (SELECT `+where+` FROM pg_catalog.pg_stat_activity AS a WHERE a.pid = pg_catalog.pg_backend_pid() AND g.n > 0)
	  FROM pg_catalog.generate_series(1, 2) AS g(n)
	  CROSS JOIN LATERAL (SELECT CASE WHEN g.n = 2 THEN pg_catalog.pg_advisory_xact_lock($1::bigint) END OFFSET 0) AS took`,
		append([]any{int64(key)}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	var got []bool
	for rows.Next() {
		var n int
		var ok bool
		if err := rows.Scan(&n, &ok); err != nil {
			t.Fatal(err)
		}
		got = append(got, ok)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] || !got[1] {
		t.Fatalf("rows say %v, want [false true]: the second row did not see the lock it took", got)
	}
}

// TestLockConflictChanged: the signalling statement checks the term again:
// a session that released its lock between the choice and the signal is
// changed, and left alone.
func TestLockConflictChanged(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	holder.Exec("CREATE TABLE t (id int)")
	holder.Exec("BEGIN")
	holder.Exec("LOCK TABLE t IN ACCESS SHARE MODE")
	cn := open(t)
	ctx := pgtest.Context(t)
	sel, err := selector.Parse(selector.Spec{App: []string{pgtest.Tag(t)},
		LockConflict: &selector.LockConflict{Objects: []selector.LockObject{relation(t, db, "t")}, Mode: "AccessExclusiveLock"}})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := action.Choose(ctx, cn, action.Request{Action: action.Terminate, Selector: sel})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Results) != 1 || plan.Results[0].PID != holder.PID || plan.Results[0].Outcome != action.Planned {
		t.Fatalf("chosen: %+v, want the holder planned", plan.Results)
	}
	holder.Exec("COMMIT") // still idle in a transaction's place: idle, the lock released
	res, err := action.Execute(ctx, cn, plan, action.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Outcome != action.Changed {
		t.Fatalf("results: %+v, want the holder changed", res)
	}
	if !holder.Alive() {
		t.Fatal("the holder was terminated")
	}
}
