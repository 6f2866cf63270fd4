package selector_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/golden"
	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/selector"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Options{})
}

func open(t *testing.T) *pgx.Conn { return pgtest.Pgreap(t, pgtest.Superuser) }

// pids selects with spec and returns the pids it keeps among the test's own
// sessions (those carrying its tag), sorted.
func pids(t *testing.T, cn *pgx.Conn, spec selector.Spec) []int32 {
	t.Helper()
	sel, err := selector.Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := sel.Take(pgtest.Context(t), cn)
	if err != nil {
		t.Fatal(err)
	}
	var got []int32
	for i := range snap.Sessions {
		if s := &snap.Sessions[i]; strings.HasPrefix(s.ApplicationName, pgtest.Tag(t)) {
			got = append(got, s.PID)
		}
	}
	slices.Sort(got)
	return got
}

func want(vs ...*pgtest.Victim) []int32 {
	var p []int32
	for _, v := range vs {
		p = append(p, v.PID)
	}
	slices.Sort(p)
	return p
}

func check(t *testing.T, name string, got, want []int32) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s: got %v, want %v", name, got, want)
	}
}

// TestNames covers the name selectors, their globs and exclusions, alone
// and combined.
func TestNames(t *testing.T) {
	t.Parallel()
	shop, shopArchive := pgtest.NewDB(t), pgtest.NewDB(t)
	alice, bob := pgtest.NewRole(t, ""), pgtest.NewRole(t, "")
	tag := pgtest.Tag(t)
	a := pgtest.NewVictim(t, pgtest.VictimOptions{DB: shop, User: alice, App: tag + "-web"})
	b := pgtest.NewVictim(t, pgtest.VictimOptions{DB: shop, User: bob, App: tag + "-report_1"})
	c := pgtest.NewVictim(t, pgtest.VictimOptions{DB: shopArchive, User: alice, App: tag + "-reportX1"})
	d := pgtest.NewVictim(t, pgtest.VictimOptions{DB: shopArchive, User: bob, App: tag + "-100%"})
	cn := open(t)
	// Both databases are named t_testnames_N: a glob on the common part.
	both := shop[:strings.LastIndex(shop, "_")+1] + "*"

	tests := []struct {
		name string
		spec selector.Spec
		want []int32
	}{
		{"everything of the test", selector.Spec{}, want(a, b, c, d)},
		{"db exact", selector.Spec{DB: []string{shop}}, want(a, b)},
		{"db glob", selector.Spec{DB: []string{both}}, want(a, b, c, d)},
		{"two dbs", selector.Spec{DB: []string{shop, shopArchive}}, want(a, b, c, d)},
		{"user", selector.Spec{User: []string{alice}}, want(a, c)},
		{"exclude user", selector.Spec{ExcludeUser: []string{alice}}, want(b, d)},
		{"exclude db", selector.Spec{ExcludeDB: []string{shop}}, want(c, d)},
		{"app glob", selector.Spec{App: []string{tag + "-report*"}}, want(b, c)},
		// _ and % are literal in a glob, not LIKE wildcards.
		{"app underscore is literal", selector.Spec{App: []string{tag + "-report_1"}}, want(b)},
		{"app percent is literal", selector.Spec{App: []string{tag + "-100%"}}, want(d)},
		{"exclude app glob", selector.Spec{ExcludeApp: []string{"*-report*"}}, want(a, d)},
		{"user and db", selector.Spec{User: []string{bob}, DB: []string{shopArchive}}, want(d)},
		{"db minus user minus app", selector.Spec{DB: []string{both}, ExcludeUser: []string{bob}, ExcludeApp: []string{"*web"}}, want(c)},
		{"backend type", selector.Spec{BackendType: []string{"client*"}}, want(a, b, c, d)},
		{"backend type worker", selector.Spec{BackendType: []string{"parallel worker"}}, nil},
		{"nothing", selector.Spec{User: []string{"nobody-here"}}, nil},
	}
	for _, tt := range tests {
		check(t, tt.name, pids(t, cn, tt.spec), tt.want)
	}
}

func TestStateAndQuery(t *testing.T) {
	t.Parallel()
	idle := pgtest.NewVictim(t, pgtest.VictimOptions{})
	idle.Exec("SELECT 'alpha'")
	inTx := pgtest.NewVictim(t, pgtest.VictimOptions{})
	inTx.Exec("BEGIN")
	inTx.Exec("SELECT 'beta'")
	active := pgtest.NewVictim(t, pgtest.VictimOptions{})
	active.Start("SELECT pg_catalog.pg_sleep(60), 'Alpha'")
	active.WaitState("active", "")
	cn := open(t)

	tests := []struct {
		name string
		spec selector.Spec
		want []int32
	}{
		{"idle", selector.Spec{State: []string{"idle"}}, want(idle)},
		{"idle in transaction", selector.Spec{State: []string{"idle in transaction"}}, want(inTx)},
		{"underscores for spaces", selector.Spec{State: []string{"idle_in_transaction"}}, want(inTx)},
		{"glob", selector.Spec{State: []string{"idle*"}}, want(idle, inTx)},
		{"two states", selector.Spec{State: []string{"active", "idle"}}, want(idle, active)},
		{"regex", selector.Spec{Query: "alpha"}, want(idle)},
		{"regex case-insensitive", selector.Spec{Query: "(?i)alpha"}, want(idle, active)},
		{"regex anchored", selector.Spec{Query: `^SELECT 'beta'$`}, want(inTx)},
		{"regex and state", selector.Spec{Query: "(?i)alpha", State: []string{"active"}}, want(active)},
	}
	for _, tt := range tests {
		check(t, tt.name, pids(t, cn, tt.spec), tt.want)
	}
}

// serverAge is how long the victim's current state and transaction have
// lasted, by the server's clock.
func serverAge(t *testing.T, v *pgtest.Victim) (state, xact time.Duration) {
	t.Helper()
	var s, x *time.Duration
	err := pgtest.Admin(t).QueryRow(pgtest.Context(t), `
		SELECT statement_timestamp() - CASE WHEN state = 'active' THEN query_start ELSE state_change END,
		       statement_timestamp() - xact_start
		  FROM pg_catalog.pg_stat_activity WHERE pid = $1`, v.PID).Scan(&s, &x)
	if err != nil {
		t.Fatal(err)
	}
	if s != nil {
		state = *s
	}
	if x != nil {
		xact = *x
	}
	return state, xact
}

func TestDurations(t *testing.T) {
	t.Parallel()
	const d = time.Second
	// old: a transaction open for more than d whose current state (a new
	// statement just ran) is young. idle: idle for more than d.
	// active: a query running for more than d.
	old := pgtest.NewVictim(t, pgtest.VictimOptions{})
	old.Exec("BEGIN")
	old.Exec("SELECT 1")
	idle := pgtest.NewVictim(t, pgtest.VictimOptions{})
	active := pgtest.NewVictim(t, pgtest.VictimOptions{})
	active.Start("SELECT pg_catalog.pg_sleep(60)")
	active.WaitState("active", "")
	pgtest.Eventually(t, "victims older than 1s", func() (bool, error) {
		_, x := serverAge(t, old)
		s1, _ := serverAge(t, idle)
		s2, _ := serverAge(t, active)
		return x > d && s1 > d && s2 > d, nil
	})
	old.Exec("SELECT 2") // the state begins anew; the transaction does not
	young := pgtest.NewVictim(t, pgtest.VictimOptions{})
	young.Exec("BEGIN")
	cn := open(t)

	check(t, "longer than", pids(t, cn, selector.Spec{LongerThan: "1s"}), want(idle, active))
	check(t, "xact longer than", pids(t, cn, selector.Spec{XactLongerThan: "1s"}), want(old, active))
	check(t, "active longer than", pids(t, cn, selector.Spec{LongerThan: "1s", State: []string{"active"}}), want(active))
	check(t, "longer than an hour", pids(t, cn, selector.Spec{LongerThan: "1h"}), nil)
}

func TestLocks(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder, waiter := pgtest.LockWait(t, db)
	bystander := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	bystander.Exec("SELECT 1")
	cn := open(t)

	check(t, "waiting", pids(t, cn, selector.Spec{Waiting: true}), want(waiter))
	check(t, "blocking", pids(t, cn, selector.Spec{Blocking: true}), want(holder))
	check(t, "blocking and idle in transaction", pids(t, cn, selector.Spec{Blocking: true, State: []string{"idle in transaction"}}), want(holder))
	check(t, "blocking and active", pids(t, cn, selector.Spec{Blocking: true, State: []string{"active"}}), nil)
}

func TestClient(t *testing.T) {
	t.Parallel()
	tcp := pgtest.NewVictim(t, pgtest.VictimOptions{TCP: true})
	socket := pgtest.NewVictim(t, pgtest.VictimOptions{})
	socket.Exec("SELECT 1") // a unix socket session: no client_addr
	cn := open(t)
	check(t, "CIDR", pids(t, cn, selector.Spec{Client: []string{"127.0.0.0/8"}}), want(tcp))
	check(t, "address", pids(t, cn, selector.Spec{Client: []string{"127.0.0.1"}}), want(tcp))
	check(t, "other network", pids(t, cn, selector.Spec{Client: []string{"10.0.0.0/8"}}), nil)
	check(t, "either", pids(t, cn, selector.Spec{Client: []string{"10.0.0.0/8", "127.0.0.1/32"}}), want(tcp))
	check(t, "IPv6 only", pids(t, cn, selector.Spec{Client: []string{"::1"}}), nil)
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name  string
		spec  selector.Spec
		field string
	}{
		{"bad duration", selector.Spec{LongerThan: "5x"}, "longer_than"},
		{"number without unit", selector.Spec{XactLongerThan: "300"}, "xact_longer_than"},
		{"negative duration", selector.Spec{LongerThan: "-5m"}, "longer_than"},
		{"zero duration", selector.Spec{LongerThan: "0s"}, "longer_than"},
		{"bad regex", selector.Spec{Query: "select (("}, "query"},
		{"perl regex", selector.Spec{Query: `(?<=a)b`}, "query"},
		{"bad CIDR", selector.Spec{Client: []string{"10.0.0.0/33"}}, "client"},
		{"host name", selector.Spec{Client: []string{"db.example.com"}}, "client"},
		{"bad state", selector.Spec{State: []string{"running"}}, "state"},
		{"glob matching no state", selector.Spec{State: []string{"wait*"}}, "state"},
		{"empty db", selector.Spec{DB: []string{""}}, "db"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := selector.Parse(tt.spec)
			var se *selector.Error
			if !errors.As(err, &se) || se.Field != tt.field {
				t.Fatalf("got %v, want a selector.Error on %s", err, tt.field)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error has several lines: %q", err)
			}
		})
	}
}

// TestCompileGolden pins the SQL each selector compiles to, and that every
// value is a bound parameter, never text in the statement.
func TestCompileGolden(t *testing.T) {
	spec := selector.Spec{
		DB:             []string{"shop", "shop_*"},
		User:           []string{"app"},
		App:            []string{"web-*"},
		Client:         []string{"10.1.2.3/8", "192.0.2.7"},
		State:          []string{"idle_in_transaction", "active"},
		BackendType:    []string{"client backend"},
		ExcludeDB:      []string{"postgres"},
		ExcludeUser:    []string{"replicator"},
		ExcludeApp:     []string{"pg_dump*"},
		Query:          "(?i)^select",
		LongerThan:     "5m",
		XactLongerThan: "1h30m",
		Waiting:        true,
		Blocking:       true,
	}
	sel, err := selector.Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	where, args := sel.Compile("a", 3)
	var b strings.Builder
	b.WriteString(where + "\n-- args from $3:\n")
	for i, a := range args {
		fmt.Fprintf(&b, "-- $%d = %v\n", i+3, a)
	}
	golden.Check(t, "compile_all.golden", b.String())
	for _, lit := range []string{"shop", "replicator", "pg_dump", "10.0.0.0", "web-"} {
		if strings.Contains(where, lit) {
			t.Errorf("value %q spliced into the SQL", lit)
		}
	}
	if where, args := (&selector.Selector{}).Compile("a", 1); where != "true" || len(args) != 0 {
		t.Errorf("empty selector: %q %v", where, args)
	}
}

// Any selection: Parse never panics; what it refuses is said on one line
// (as the CLI prints it) with the field; what it accepts compiles to SQL
// whose text does not depend on the values (they are bound parameters,
// one per placeholder), and every value is text the server takes.
func FuzzParseCompile(f *testing.F) {
	f.Add("shop*", "report*", "10.0.0.0/8", "idle_in_transaction", `(?i)^select`, "5m", "1h30m", "app\x00", true)
	f.Add("", "", "::1", "active", "(", "-1s", "90", "\xff", false)
	f.Add("%_\\", "*", "fe80::/10", "idle*", "", "0s", "", "' OR true --", true)
	f.Fuzz(func(t *testing.T, db, app, client, state, query, longer, xact, user string, waiting bool) {
		spec := selector.Spec{Query: query, LongerThan: longer, XactLongerThan: xact, Waiting: waiting, Blocking: !waiting}
		for _, v := range []struct {
			in  string
			out *[]string
		}{{db, &spec.DB}, {app, &spec.App}, {client, &spec.Client}, {state, &spec.State}, {user, &spec.ExcludeUser}} {
			if v.in != "" {
				*v.out = []string{v.in}
			}
		}
		sel, err := selector.Parse(spec)
		if err != nil {
			var se *selector.Error
			if !errors.As(err, &se) || se.Field == "" {
				t.Fatalf("error %v is not a selector.Error with its field", err)
			}
			return
		}
		where, args := sel.Compile("a", 1)
		if n := strings.Count(where, "$"); n != len(args) {
			t.Fatalf("%d placeholders, %d values: %s", n, len(args), where)
		}
		// The same selection with other values compiles to the same text.
		other := *sel
		for _, l := range []*[]string{&other.DB, &other.App, &other.State, &other.ExcludeUser} {
			if len(*l) > 0 {
				*l = []string{"x"}
			}
		}
		if w, _ := other.Compile("a", 1); w != where {
			t.Fatalf("the SQL depends on the values:\n%s\n%s", where, w)
		}
		for _, a := range args {
			if ss, ok := a.([]string); ok {
				for _, s := range ss {
					if strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s) {
						t.Fatalf("a value the server refuses: %q", s)
					}
				}
			}
		}
	})
}

// Text the server would refuse (an SQL error, late) is bad input at once.
func TestParseRefusesTextTheServerCannotTake(t *testing.T) {
	tests := []struct {
		name   string
		spec   selector.Spec
		field  string
		reason string
	}{
		{"NUL in a glob", selector.Spec{App: []string{"a\x00b"}}, "app", "contains a NUL byte"},
		{"invalid UTF-8 in a glob", selector.Spec{ExcludeDB: []string{"\xffshop"}}, "exclude_db", "not valid UTF-8"},
		{"NUL in a regexp", selector.Spec{Query: "select\x00"}, "query", "contains a NUL byte"},
		// Found by FuzzParseCompile: the state's glob became a regexp
		// that regexp.MustCompile refused, a panic.
		{"invalid UTF-8 in a state", selector.Spec{State: []string{"\xfa"}}, "state", "not valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := selector.Parse(tt.spec)
			var se *selector.Error
			if !errors.As(err, &se) || se.Field != tt.field || se.Reason != tt.reason {
				t.Fatalf("error %v, want %s: %s", err, tt.field, tt.reason)
			}
		})
	}
}

// blocking_longer_than in a signalling statement (CompileEach): true for
// the holder of a wait older than D, not for the waiter, nor when D is
// longer than the wait; BlockingWaiters narrows it to the waits named
// behind the session judged, not behind another one.
func TestBlockingLongerThanEach(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	holder, waiter := pgtest.LockWait(t, db)
	cn := open(t)
	ctx := pgtest.Context(t)
	pgtest.Eventually(t, "the wait older than 300ms", func() (bool, error) {
		var old bool
		err := pgtest.Admin(t).QueryRow(ctx, `SELECT now() - query_start > interval '300ms' FROM pg_catalog.pg_stat_activity WHERE pid = $1`, waiter.PID).Scan(&old)
		return old, err
	})
	eval := func(sel selector.Selector, pid int32) bool {
		t.Helper()
		where, args := sel.CompileEach("a", 2)
		var ok bool
		if err := cn.QueryRow(ctx, "SELECT "+where+" FROM pg_catalog.pg_stat_activity AS a WHERE a.pid = $1", append([]any{pid}, args...)...).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	for _, tt := range []struct {
		name string
		sel  selector.Selector
		pid  int32
		want bool
	}{
		{"the holder", selector.Selector{BlockingLongerThan: 300 * time.Millisecond}, holder.PID, true},
		{"the waiter", selector.Selector{BlockingLongerThan: 300 * time.Millisecond}, waiter.PID, false},
		{"a wait younger than D", selector.Selector{BlockingLongerThan: time.Hour}, holder.PID, false},
		{"the waiter named", selector.Selector{BlockingLongerThan: 300 * time.Millisecond, BlockingWaiters: map[int32][]int32{holder.PID: {waiter.PID}}}, holder.PID, true},
		{"another backend named", selector.Selector{BlockingLongerThan: 300 * time.Millisecond, BlockingWaiters: map[int32][]int32{holder.PID: {holder.PID}}}, holder.PID, false},
		{"the waiter named behind another session", selector.Selector{BlockingLongerThan: 300 * time.Millisecond, BlockingWaiters: map[int32][]int32{holder.PID: {holder.PID}, waiter.PID: {waiter.PID}}}, holder.PID, false},
	} {
		if got := eval(tt.sel, tt.pid); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}
