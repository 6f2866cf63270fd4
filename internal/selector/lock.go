package selector

import (
	_ "embed"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// lockConflictsSQL is PostgreSQL's table of conflicting lock modes, the one
// copy pgreap has: Go knows only the names.
//
//go:embed sql/lock_conflicts.sql
var lockConflictsSQL string

// LockConflictsSQL is that table as a query of (mode, conflicts), for
// statements of other packages that judge conflicts themselves.
func LockConflictsSQL() string { return strings.TrimSpace(lockConflictsSQL) }

// LockModes are the eight table lock modes as pg_locks spells them, weakest
// first; LOCK TABLE spells them as words ("SHARE ROW EXCLUSIVE").
var LockModes = []string{
	"AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
	"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock",
}

// ParseLockMode turns a lock mode as LOCK TABLE spells it ("share row
// exclusive", any case, any spaces) or as pg_locks does
// ("ShareRowExclusiveLock") into pg_locks' name.
func ParseLockMode(v string) (string, error) {
	key := strings.ToLower(strings.Join(strings.Fields(v), ""))
	for _, m := range LockModes {
		if l := strings.ToLower(m); key == l || key == strings.TrimSuffix(l, "lock") {
			return m, nil
		}
	}
	return "", fmt.Errorf("not a lock mode (ACCESS SHARE, ROW SHARE, ROW EXCLUSIVE, SHARE UPDATE EXCLUSIVE, SHARE, SHARE ROW EXCLUSIVE, EXCLUSIVE, ACCESS EXCLUSIVE)")
}

// LockModeWords is a pg_locks mode name as LOCK TABLE spells it:
// "SHARE ROW EXCLUSIVE" for ShareRowExclusiveLock.
func LockModeWords(mode string) string {
	var b strings.Builder
	for i, r := range strings.TrimSuffix(mode, "Lock") {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte(' ')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

// LockConflict chooses the sessions that hold (granted) or await (not
// granted) a lock on one of Objects whose mode conflicts with Mode, by
// PostgreSQL's conflict table: those that block, or will block, a lock of
// Mode on them. A parallel worker's lock counts for its leader.
type LockConflict struct {
	Objects []LockObject `json:"objects"`
	// Mode is one of LockModes.
	Mode string `json:"mode"`
	// Held narrows the term to granted locks: the holders only, not the
	// sessions queued for a lock that none of them has yet (exec ends who
	// holds what its attempt waited for; one merely queued ahead of it
	// would get the lock once the holders are gone, and is nobody's
	// blocker).
	Held bool `json:"held"`
}

// LockObject names a lockable object as a row of pg_locks does; a nil
// field is NULL there (compared with IS NOT DISTINCT FROM).
type LockObject struct {
	LockType      string  `json:"locktype"`
	Database      *uint32 `json:"database"`
	Relation      *uint32 `json:"relation"`
	Page          *int32  `json:"page"`
	Tuple         *int16  `json:"tuple"`
	VirtualXID    *string `json:"virtualxid"`
	TransactionID *uint32 `json:"transactionid"`
	ClassID       *uint32 `json:"classid"`
	ObjID         *uint32 `json:"objid"`
	ObjSubID      *int16  `json:"objsubid"`
}

// Relation is the object of a table, index or other relation of database
// db, as pg_locks names it.
func Relation(db, rel uint32) LockObject {
	return LockObject{LockType: "relation", Database: &db, Relation: &rel}
}

// lockTypes are pg_locks' locktype names.
var lockTypes = []string{
	"relation", "extend", "frozenid", "page", "tuple", "transactionid", "virtualxid",
	"spectoken", "object", "userlock", "advisory", "applytransaction",
}

// check says why the term cannot be used, or "".
func (l *LockConflict) check() string {
	if !slices.Contains(LockModes, l.Mode) {
		return fmt.Sprintf("mode %q is not a table lock mode (%s)", l.Mode, strings.Join(LockModes, ", "))
	}
	if len(l.Objects) == 0 {
		return "no objects"
	}
	for _, o := range l.Objects {
		if !slices.Contains(lockTypes, o.LockType) {
			return fmt.Sprintf("locktype %q is not one of pg_locks' (%s)", o.LockType, strings.Join(lockTypes, ", "))
		}
		if o.VirtualXID != nil {
			if err := textValue(*o.VirtualXID); err != "" {
				return "virtualxid " + err
			}
		}
	}
	return ""
}

// clone is a deep copy.
func (l *LockConflict) clone() *LockConflict {
	if l == nil {
		return nil
	}
	return &LockConflict{Mode: l.Mode, Objects: slices.Clone(l.Objects), Held: l.Held}
}

// lockConflict adds the term: the session's locks (or its parallel
// workers') that conflict with the mode, on one of the objects. In a
// snapshot pg_locks is read once for the statement. In a signalling
// statement each session's locks are read at its own signal: pg_locks (a
// scan of pg_lock_status()) is read once per statement however often a row
// asks, as a function scan whose arguments do not change keeps its result;
// a set-returning function in a select list is called afresh each time the
// subquery runs, and the subquery depends on the session's row, so it runs
// again for each.
func (c *compiler) lockConflict(l *LockConflict) {
	locks := "pg_catalog.pg_locks AS l"
	if c.each {
		locks = fmt.Sprintf(`(SELECT (lx.s).* FROM (SELECT pg_catalog.pg_lock_status() AS s WHERE %s.pid IS NOT NULL OFFSET 0) AS lx) AS l`, c.alias)
	}
	c.add(fmt.Sprintf(`%[1]s.pid IN (
           -- a parallel worker (leader_pid, 13+, read by name) for its leader
           SELECT coalesce((pg_catalog.to_jsonb(lw) OPERATOR(pg_catalog.->>) 'leader_pid')::integer, l.pid)
             %[2]s)`, c.alias, c.lockRows(l, locks+"\n             LEFT JOIN pg_catalog.pg_stat_activity AS lw ON lw.pid = l.pid")))
}

// PreparedSQL is a query, parameters numbered from $first, of the GIDs of
// the prepared transactions that hold a lock on one of l's objects that
// conflicts with its mode. Their locks have no pid in pg_locks: the
// virtualtransaction of the lock on their transaction id names them.
func (l *LockConflict) PreparedSQL(first int) (string, []any) {
	c := compiler{next: first}
	rows := c.lockRows(l, "pg_catalog.pg_locks AS l")
	return fmt.Sprintf(`SELECT p.gid
  FROM pg_catalog.pg_prepared_xacts AS p
 WHERE EXISTS (SELECT %s
                  AND l.pid IS NULL
                  AND l.virtualtransaction IN (SELECT x.virtualtransaction FROM pg_catalog.pg_locks AS x
                                                WHERE x.locktype = 'transactionid' AND x.transactionid = p.transaction))
 ORDER BY p.gid`, rows), c.args
}

// lockRows is the FROM and WHERE over pg_locks' rows "l" (from locks)
// on one of l's objects in a mode that conflicts with l's.
func (c *compiler) lockRows(l *LockConflict, locks string) string {
	text := func(f func(o *LockObject) *string) string {
		v := make([]*string, len(l.Objects))
		for i := range l.Objects {
			v[i] = f(&l.Objects[i])
		}
		return c.arg(v)
	}
	num := func(p any) *string {
		var s string
		switch p := p.(type) {
		case *uint32:
			if p == nil {
				return nil
			}
			s = strconv.FormatUint(uint64(*p), 10)
		case *int32:
			if p == nil {
				return nil
			}
			s = strconv.FormatInt(int64(*p), 10)
		case *int16:
			if p == nil {
				return nil
			}
			s = strconv.FormatInt(int64(*p), 10)
		}
		return &s
	}
	objects := fmt.Sprintf(`ROWS FROM (pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[]),
                             pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[]),
                             pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[]),
                             pg_catalog.unnest(%s::text[]))
                   AS lo(locktype, database, relation, page, tuple, virtualxid, transactionid, classid, objid, objsubid)`,
		text(func(o *LockObject) *string { return &o.LockType }),
		text(func(o *LockObject) *string { return num(o.Database) }),
		text(func(o *LockObject) *string { return num(o.Relation) }),
		text(func(o *LockObject) *string { return num(o.Page) }),
		text(func(o *LockObject) *string { return num(o.Tuple) }),
		text(func(o *LockObject) *string { return o.VirtualXID }),
		text(func(o *LockObject) *string { return num(o.TransactionID) }),
		text(func(o *LockObject) *string { return num(o.ClassID) }),
		text(func(o *LockObject) *string { return num(o.ObjID) }),
		text(func(o *LockObject) *string { return num(o.ObjSubID) }))
	mode := c.arg(l.Mode)
	granted := ""
	if l.Held {
		granted = "l.granted AND "
	}
	return fmt.Sprintf(`FROM %[1]s
             JOIN (%[2]s) AS lc ON lc.mode = %[3]s::text AND l.mode = ANY (lc.conflicts)
            WHERE %[5]sEXISTS (SELECT FROM %[4]s
                           WHERE l.locktype = lo.locktype
                             AND l.database IS NOT DISTINCT FROM lo.database::pg_catalog.oid
                             AND l.relation IS NOT DISTINCT FROM lo.relation::pg_catalog.oid
                             AND l.page IS NOT DISTINCT FROM lo.page::integer
                             AND l.tuple IS NOT DISTINCT FROM lo.tuple::smallint
                             AND l.virtualxid IS NOT DISTINCT FROM lo.virtualxid
                             AND l.transactionid::text IS NOT DISTINCT FROM lo.transactionid
                             AND l.classid IS NOT DISTINCT FROM lo.classid::pg_catalog.oid
                             AND l.objid IS NOT DISTINCT FROM lo.objid::pg_catalog.oid
                             AND l.objsubid IS NOT DISTINCT FROM lo.objsubid::smallint)`,
		locks, strings.TrimSpace(lockConflictsSQL), mode, objects, granted)
}
