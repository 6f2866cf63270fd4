package cli_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/selector"
)

// pgreapSQL is every statement pgreap sends, by name: its embedded SQL
// files, and the predicates its selectors compile to (every kind of
// selection, in both forms), which are spliced into them.
func pgreapSQL(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob("../*/sql/*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("no SQL files: %v", err)
	}
	out := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.ToSlash(f)] = string(b)
	}
	for i, spec := range []selector.Spec{
		{DB: []string{"d"}, User: []string{"u"}, App: []string{"a*"}, Client: []string{"10.0.0.0/8"}, State: []string{"active"},
			BackendType: []string{"client backend"}, ExcludeDB: []string{"x"}, ExcludeUser: []string{"x"}, ExcludeApp: []string{"x"},
			Query: "q", LongerThan: "1s", XactLongerThan: "1s", Waiting: true, Blocking: true},
		{BlockingLongerThan: "1s"},
	} {
		sel, err := selector.Parse(spec)
		if err != nil {
			t.Fatal(err)
		}
		sel.BlockingOf = []int32{1}
		where, _ := sel.Compile("a", 1)
		out[fmt.Sprintf("selector %d", i)] = where
		where, _ = sel.CompileEach("a", 1)
		out[fmt.Sprintf("selector %d, each", i)] = where
	}
	return out
}

var (
	sqlComment = regexp.MustCompile(`--[^\n]*`)
	sqlString  = regexp.MustCompile(`'(?:[^']|'')*'`)
	// name( is a call; FROM or JOIN name, a relation. A qualified name
	// keeps its schema, so that an unqualified one shows.
	sqlCall     = regexp.MustCompile(`(?i)\b((?:"?[a-z_][a-z0-9_]*"?\.)?"?[a-z_][a-z0-9_]*"?)\s*\(`)
	sqlRelation = regexp.MustCompile(`(?i)\b(?:FROM|JOIN)\s+(?:LATERAL\s+)?((?:[a-z_][a-z0-9_]*\.)?[a-z_][a-z0-9_]*)`)
)

// catalogNames are the functions and relations of pg_catalog that pgreap's
// SQL names, as written (schema.name or name) with where.
func catalogNames(t *testing.T, admin *pgx.Conn) (funcs, rels map[string][]string) {
	t.Helper()
	query := func(sql string) map[string]bool {
		rows, err := admin.Query(pgtest.Context(t), sql)
		if err != nil {
			t.Fatal(err)
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		set := map[string]bool{}
		for _, n := range names {
			set[n] = true
		}
		return set
	}
	isFunc := query(`SELECT DISTINCT p.proname::text FROM pg_catalog.pg_proc AS p WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace`)
	isRel := query(`SELECT c.relname::text FROM pg_catalog.pg_class AS c WHERE c.relnamespace = 'pg_catalog'::pg_catalog.regnamespace AND c.relkind IN ('r', 'v')`)
	funcs, rels = map[string][]string{}, map[string][]string{}
	for where, sql := range pgreapSQL(t) {
		sql = sqlString.ReplaceAllString(sqlComment.ReplaceAllString(sql, ""), "''")
		for _, m := range sqlCall.FindAllStringSubmatch(sql, -1) {
			name := strings.ToLower(strings.ReplaceAll(m[1], `"`, ""))
			if _, bare, _ := strings.Cut(name, "."); isFunc[bare] || !strings.Contains(name, ".") && isFunc[name] {
				funcs[name] = append(funcs[name], where)
			}
		}
		for _, m := range sqlRelation.FindAllStringSubmatch(sql, -1) {
			name := strings.ToLower(m[1])
			if _, bare, _ := strings.Cut(name, "."); isRel[bare] || !strings.Contains(name, ".") && isRel[name] {
				rels[name] = append(rels[name], where)
			}
		}
	}
	return funcs, rels
}

// Every function and view of the catalog that pgreap's SQL names is
// pg_catalog-qualified: unqualified, a schema earlier in search_path could
// put its own in its place.
func TestSQLQualifiesCatalogNames(t *testing.T) {
	t.Parallel()
	funcs, rels := catalogNames(t, pgtest.Connect(t, pgtest.Shared(t).DSN("postgres", pgtest.Superuser)))
	for _, names := range []map[string][]string{funcs, rels} {
		for name, where := range names {
			if !strings.HasPrefix(name, "pg_catalog.") {
				t.Errorf("%s is not pg_catalog-qualified in %s", name, strings.Join(where, ", "))
			}
		}
	}
	// The parsing finds what it should: a sample of what pgreap calls.
	for _, name := range []string{"pg_catalog.pg_terminate_backend", "pg_catalog.pg_cancel_backend", "pg_catalog.pg_stat_get_activity",
		"pg_catalog.count", "pg_catalog.pg_blocking_pids", "pg_catalog.statement_timestamp"} {
		if funcs[name] == nil {
			t.Errorf("no call of %s found", name)
		}
	}
	if rels["pg_catalog.pg_stat_activity"] == nil || rels["pg_catalog.pg_locks"] == nil {
		t.Errorf("relations found: %v", rels)
	}
}

// lookalikes are a schema's traps for every catalog function and relation
// pgreap's SQL names: each function records that it was called, each view
// shows nothing. An overload the catalog's own types do not let SQL
// redefine (a pseudo-type argument such as "any", internal or record, an
// aggregate of a polymorphic result) is left out.
func lookalikes(t *testing.T, admin *pgx.Conn) string {
	t.Helper()
	funcs, rels := catalogNames(t, admin)
	bare := func(names map[string][]string) []string {
		var out []string
		for n := range names {
			out = append(out, strings.TrimPrefix(n, "pg_catalog."))
		}
		sort.Strings(out)
		return out
	}
	var ddl strings.Builder
	ddl.WriteString("CREATE SCHEMA evil;\nCREATE TABLE evil.calls (fn text, app text);\n")
	for _, rel := range bare(rels) {
		id := pgx.Identifier{rel}.Sanitize()
		fmt.Fprintf(&ddl, "CREATE VIEW evil.%s AS SELECT * FROM pg_catalog.%s WHERE false;\n", id, id)
	}
	rows, err := admin.Query(pgtest.Context(t), `
SELECT p.oid::bigint, p.proname::text, p.prokind::text, p.proretset, p.proallargtypes IS NOT NULL,
       -- The arguments without the names of the input ones, which may be
       -- an output's too (pg_stat_get_activity's pid): SQL refuses that.
       coalesce((SELECT pg_catalog.string_agg(CASE a.mode WHEN 'o' THEN 'OUT ' || pg_catalog.quote_ident(a.name) || ' '
                                                          WHEN 'v' THEN 'VARIADIC ' ELSE '' END
                                               || pg_catalog.format_type(a.type, NULL), ', ' ORDER BY a.n)
                   FROM ROWS FROM (pg_catalog.unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])),
                                   pg_catalog.unnest(p.proargmodes), pg_catalog.unnest(p.proargnames))
                        WITH ORDINALITY AS a(type, mode, name, n)
                  WHERE a.mode IS DISTINCT FROM 't'), ''),
       pg_catalog.pg_get_function_result(p.oid), p.prorettype::pg_catalog.regtype::text
  FROM pg_catalog.pg_proc AS p
 WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace
   AND p.proname = ANY ($1::text[])
   AND p.prokind IN ('f', 'a')
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_type AS ty
                    WHERE ty.oid = ANY (p.proargtypes::oid[])
                      AND ty.typtype = 'p'
                      AND ty.typname NOT IN ('anyelement', 'anyarray', 'anynonarray'))
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_type AS ty
                    WHERE ty.oid = p.prorettype
                      AND ty.typtype = 'p'
                      AND ty.typname NOT IN ('anyelement', 'anyarray', 'anynonarray', 'record', 'void'))
   AND NOT (p.prokind = 'a' AND p.prorettype IN ('anyelement'::pg_catalog.regtype, 'anyarray'::pg_catalog.regtype))
 ORDER BY p.oid`, bare(funcs))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var oid int64
		var name, kind, args, result, rettype string
		var set, out bool
		if err := rows.Scan(&oid, &name, &kind, &set, &out, &args, &result, &rettype); err != nil {
			t.Fatal(err)
		}
		id := pgx.Identifier{name}.Sanitize()
		record := fmt.Sprintf("INSERT INTO evil.calls VALUES (%s, pg_catalog.current_setting('application_name'))", quote(name))
		if kind == "a" {
			// An aggregate's final function runs even over no rows.
			fmt.Fprintf(&ddl, "CREATE FUNCTION evil.sfunc_%d(integer%s) RETURNS integer LANGUAGE sql AS 'SELECT 0';\n", oid, prefixed(args))
			fmt.Fprintf(&ddl, "CREATE FUNCTION evil.final_%d(integer) RETURNS %s LANGUAGE plpgsql AS $f$BEGIN %s; RETURN NULL; END$f$;\n", oid, rettype, record)
			if args == "" {
				args = "*"
			}
			fmt.Fprintf(&ddl, "CREATE AGGREGATE evil.%s(%s) (SFUNC = evil.sfunc_%d, STYPE = integer, FINALFUNC = evil.final_%d);\n", id, args, oid, oid)
			continue
		}
		ret := "RETURN NULL"
		if set || out || rettype == "void" {
			ret = "RETURN"
		}
		fmt.Fprintf(&ddl, "CREATE FUNCTION evil.%s(%s) RETURNS %s LANGUAGE plpgsql AS $f$BEGIN %s; %s; END$f$;\n", id, args, result, record, ret)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return ddl.String()
}

func prefixed(args string) string {
	if args == "" {
		return ""
	}
	return ", " + args
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// A database whose search_path puts a schema of lookalikes before
// pg_catalog (set for the database, and asked for in the connection
// string): pgreap still sees every session, acts through the real
// functions, and calls none of the lookalikes.
func TestSearchPathLookalikesChangeNothing(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	admin := pgtest.Connect(t, pgtest.Shared(t).DSN(db, pgtest.Superuser))
	traps := lookalikes(t, admin)
	if _, err := admin.Exec(pgtest.Context(t), traps); err != nil {
		t.Fatalf("%v\n%s", err, traps)
	}
	pgtest.Exec(t, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" SET search_path = evil, pg_catalog")
	holder, waiter := pgtest.LockWait(t, db)
	runaway := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, App: pgtest.Tag(t) + "-runaway"})
	runaway.Start("SELECT pg_catalog.pg_sleep(60)")
	runaway.WaitState("active", "Timeout")

	dsn := pgtest.Shared(t).DSN(db, pgtest.Superuser) + " options='-c search_path=evil,pg_catalog'"
	// --db: the waits of the tests beside this one are theirs.
	r := run(t, false, "ls", "-d", dsn, "--db", db, "--waiting", "--longer-than", "1ms", "-o", "json")
	r.wantCode(t, 0)
	if rows := jsonRows(t, r.out); len(rows) != 1 || rows[0]["pid"] != float64(waiter.PID) {
		t.Fatalf("ls --waiting: %s", r.out)
	}
	r = run(t, false, "cancel", "-d", dsn, "--app", runaway.App, "--yes", "-o", "json")
	r.wantCode(t, 0)
	// --db: the lock waits of the tests that run beside this one are not
	// its to end (without it, it ended their roots, and they failed).
	r = run(t, false, "unblock", "-d", dsn, "--db", db, "--longer-than", "0s", "--yes", "-o", "json")
	r.wantCode(t, 0)
	if holder.Alive() || !waiter.Alive() {
		t.Fatalf("unblock: holder alive %v, waiter alive %v", holder.Alive(), waiter.Alive())
	}
	if err := runaway.Wait(); pgtest.SQLState(err) != "57014" {
		t.Fatalf("the runaway query: %v, want cancelled (57014)", err)
	}
	var calls []string
	// The test's own sessions run unqualified SQL (the lock waiter's
	// count(*)): they are named after the test, pgreap's are not.
	rows, err := admin.Query(context.Background(), "SELECT fn || ' by ' || app FROM evil.calls WHERE app NOT LIKE $1 || '%'", pgtest.Tag(t))
	if err != nil {
		t.Fatal(err)
	}
	calls, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) > 0 {
		t.Fatalf("lookalikes called: %v", calls)
	}
	// The traps work: unqualified statements on such a connection fall
	// into them.
	plain := pgtest.Connect(t, dsn)
	var seen int
	if err := plain.QueryRow(pgtest.Context(t), "SELECT pg_catalog.count(*) FROM pg_stat_activity").Scan(&seen); err != nil || seen != 0 {
		t.Fatalf("the lookalike view is not in the way: %d sessions, %v", seen, err)
	}
	var n *int64
	var pid *int32
	if err := plain.QueryRow(pgtest.Context(t), "SELECT count(*), pg_backend_pid() FROM pg_catalog.pg_stat_activity").Scan(&n, &pid); err != nil || n != nil || pid != nil {
		t.Fatalf("the lookalike functions are not in the way: %v, %v, %v", n, pid, err)
	}
}
