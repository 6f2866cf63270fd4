package cli_test

import (
	"encoding/csv"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/cluster"
	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/pooler"
	"github.com/pgreap/pgreap/internal/selector"
)

// pooledClient connects to db through the pooler over 127.0.0.1 as the
// superuser, with application_name app ("": none), and returns the
// connection and its port (the pooler's client_port of it).
func pooledClient(t *testing.T, b *cluster.PgBouncer, db, app string) (*pgx.Conn, int) {
	t.Helper()
	dsn := b.DSN(db, cluster.Superuser) + " default_query_exec_mode=exec"
	if app != "" {
		dsn += " application_name=" + cluster.Quote(app)
	}
	cn := pgtest.Connect(t, dsn)
	return cn, cn.PgConn().Conn().LocalAddr().(*net.TCPAddr).Port
}

func backendPID(t *testing.T, cn *pgx.Conn) int32 {
	t.Helper()
	var pid int32
	if err := cn.QueryRow(pgtest.Context(t), "SELECT pg_catalog.pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

func rowOf(t *testing.T, rows []map[string]any, pid int32) map[string]any {
	t.Helper()
	for _, r := range rows {
		if r["pid"] == float64(pid) {
			return r
		}
	}
	t.Fatalf("no row of pid %d in %v", pid, rows)
	return nil
}

// Behind a pooler, ls shows the client that uses a server connection now
// (its address, port, application_name and user, via the pooler), and a
// server connection idle in the pool as such; asked with the stats user,
// which may only SHOW.
func TestLsShowsPooledClients(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			b := pgtest.PgBouncer(t, mode)
			ctx := pgtest.Context(t)
			db := pgtest.NewDB(t)
			admin := b.AdminDSN(b.StatsUser)
			name := fmt.Sprintf("127.0.0.1:%d", b.Port)
			app := "pooled-" + mode

			// A client in a transaction holds its server connection.
			cn, port := pooledClient(t, b, db, app)
			if _, err := cn.Exec(ctx, "BEGIN"); err != nil {
				t.Fatal(err)
			}
			pid := backendPID(t, cn)

			r := run(t, false, "ls", "--db", db, "--pgbouncer", admin, "-o", "json")
			r.wantCode(t, 0)
			row := rowOf(t, jsonRows(t, r.out), pid)
			want := map[string]any{"pooler": name, "client_addr": "127.0.0.1", "client_port": float64(port),
				"application_name": app, "user": cluster.Superuser, "pool_mode": mode, "serving": "client"}
			p, ok := row["pooler"].(map[string]any)
			if !ok {
				t.Fatalf("pooler: %v in %v", row["pooler"], row)
			}
			for k, v := range want {
				if p[k] != v {
					t.Errorf("pooler.%s = %v, want %v (%v)", k, p[k], v, p)
				}
			}
			if _, ok := row["client_port"]; !ok {
				t.Errorf("no client_port: %v", row)
			}

			// --client and --user match the pooled client: the backend's
			// own address is the pooler's end (a unix socket here).
			r = run(t, false, "ls", "--db", db, "--client", "127.0.0.1/32", "--user", cluster.Superuser, "--pgbouncer", admin, "-o", "json")
			r.wantCode(t, 0)
			rowOf(t, jsonRows(t, r.out), pid)
			run(t, false, "ls", "--db", db, "--client", "127.0.0.1/32").wantCode(t, 1)

			r = run(t, true, "ls", "--db", db, "--pgbouncer", admin)
			r.wantCode(t, 0)
			line := lineOf(t, r.out, pid)
			if !strings.Contains(line, "127.0.0.1 via "+name) || !strings.Contains(line, app) {
				t.Errorf("table row of %d, want CLIENT 127.0.0.1 via %s and APP %s:\n%s", pid, name, app, r.out)
			}

			r = run(t, false, "ls", "--db", db, "--pgbouncer", admin, "-o", "csv")
			r.wantCode(t, 0)
			rec := csvRowOf(t, r.out, pid)
			if rec["pooler"] != name || rec["pooler_client_port"] != strconv.Itoa(port) || rec["pooler_application_name"] != app {
				t.Errorf("CSV row of %d: %v", pid, rec)
			}

			// Its transaction ended (or, in session mode, its client
			// left), the server connection waits idle in the pool.
			if _, err := cn.Exec(ctx, "COMMIT"); err != nil {
				t.Fatal(err)
			}
			if mode == "session" {
				cn.Close(ctx)
			}
			pgtest.Eventually(t, "server connection idle in the pool", func() (bool, error) {
				r = run(t, false, "ls", "--db", db, "--pgbouncer", admin, "-o", "json")
				if r.code != 0 {
					t.Logf("ls: exit %d: %s", r.code, r.errOut)
					return false, nil
				}
				for _, row := range jsonRows(t, r.out) {
					if p, ok := row["pooler"].(map[string]any); ok && row["pid"] == float64(pid) && p["serving"] == "none" {
						return p["client_addr"] == nil && p["application_name"] == nil, nil
					}
				}
				t.Logf("not yet idle in the pool:\n%s", r.out)
				return false, nil
			})
			r = run(t, true, "ls", "--db", db, "--pgbouncer", admin)
			if line := lineOf(t, r.out, pid); !strings.Contains(line, "pooled, idle") {
				t.Errorf("table row of %d, want pooled, idle:\n%s", pid, r.out)
			}

			// Without --pgbouncer, as ever: no pooler, no client_port.
			r = run(t, false, "ls", "--db", db, "-o", "json")
			r.wantCode(t, 0)
			row = rowOf(t, jsonRows(t, r.out), pid)
			if _, ok := row["pooler"]; ok {
				t.Errorf("pooler without --pgbouncer: %v", row)
			}
			if _, ok := row["client_port"]; ok {
				t.Errorf("client_port without --pgbouncer: %v", row)
			}
		})
	}
}

func lineOf(t *testing.T, out string, pid int32) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == strconv.Itoa(int(pid)) {
			return l
		}
	}
	t.Fatalf("no line of pid %d:\n%s", pid, out)
	return ""
}

func csvRowOf(t *testing.T, out string, pid int32) map[string]string {
	t.Helper()
	recs, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil || len(recs) == 0 {
		t.Fatalf("CSV: %v\n%s", err, out)
	}
	for _, rec := range recs[1:] {
		if rec[0] == strconv.Itoa(int(pid)) {
			m := map[string]string{}
			for i, h := range recs[0] {
				m[h] = rec[i]
			}
			return m
		}
	}
	t.Fatalf("no CSV row of pid %d:\n%s", pid, out)
	return nil
}

// query runs sql on cn in the background; its error (nil: completed) comes
// on the channel.
func query(t *testing.T, cn *pgx.Conn, sql string) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := cn.Exec(pgtest.Context(t), sql)
		done <- err
	}()
	return done
}

// Two clients of different applications take turns on one server
// connection (transaction mode, a pool of one). cancel --app A judges the
// backend by the client it serves: while B's query runs on it, A's name is
// not B's, and once A's runs, A's query is cancelled and B's never was.
// The clients say which query was cancelled.
func TestCancelByPooledAppCancelsThatClientOnly(t *testing.T) {
	t.Parallel()
	b := pgtest.OwnPgBouncer(t, pgtest.Shared(t), pgtest.PgBouncerOptions{
		PoolMode: "transaction", Settings: map[string]string{"default_pool_size": "1"}})
	ctx := pgtest.Context(t)
	db := pgtest.NewDB(t)
	admin := b.AdminDSN(cluster.AdminUser)
	appA := "A-" + pgtest.Tag(t)
	a, _ := pooledClient(t, b, db, appA)
	bc, _ := pooledClient(t, b, db, "")
	// A's transaction first: the server connection is made for A.
	pid := backendPID(t, a)

	// B waits on a lock the test holds, on the one server connection.
	hold := pgtest.Connect(t, pgtest.Shared(t).DSN(db, cluster.Superuser))
	if _, err := hold.Exec(ctx, "SELECT pg_catalog.pg_advisory_lock(19)"); err != nil {
		t.Fatal(err)
	}
	bDone := query(t, bc, "SELECT pg_catalog.pg_advisory_lock(19) /* B */")
	waitQuery(t, pid, "/* B */")
	var own string
	if err := pgtest.Admin(t).QueryRow(ctx, "SELECT application_name FROM pg_catalog.pg_stat_activity WHERE pid = $1", pid).Scan(&own); err != nil {
		t.Fatal(err)
	}
	t.Logf("the backend's own application_name while it serves B: %q", own)
	// A queues in the pooler behind B.
	aDone := query(t, a, "SELECT pg_catalog.pg_sleep(600) /* A */")

	r := run(t, false, "cancel", "--db", db, "--app", appA, "--pgbouncer", admin, "--yes", "-o", "json")
	if r.code == 0 {
		t.Fatalf("cancel --app %s while B's query runs: exit 0, want nothing done\n%s", appA, r.out)
	}
	if _, err := hold.Exec(ctx, "SELECT pg_catalog.pg_advisory_unlock(19)"); err != nil {
		t.Fatal(err)
	}
	if err := <-bDone; err != nil {
		t.Fatalf("B's query: %v (SQLSTATE %s), want it done", err, pgtest.SQLState(err))
	}
	waitQuery(t, pid, "/* A */")

	r = run(t, false, "cancel", "--db", db, "--app", appA, "--pgbouncer", admin, "--yes", "-o", "json")
	r.wantCode(t, 0)
	if err := <-aDone; pgtest.SQLState(err) != "57014" {
		t.Fatalf("A's query: %v, want cancelled (57014)", err)
	}
	rows := jsonRows(t, r.out)
	if len(rows) != 1 || rows[0]["outcome"] != "cancelled" {
		t.Fatalf("rows: %v", rows)
	}
	if p, _ := rows[0]["pooler"].(map[string]any); p == nil || p["application_name"] != appA {
		t.Errorf("pooler of the cancelled session: %v", rows[0]["pooler"])
	}
}

// waitQuery waits until the backend pid runs a query containing marker.
func waitQuery(t *testing.T, pid int32, marker string) {
	t.Helper()
	pgtest.Eventually(t, "backend "+strconv.Itoa(int(pid))+" runs "+marker, func() (bool, error) {
		var q string
		err := pgtest.Admin(t).QueryRow(pgtest.Context(t),
			"SELECT query FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND state = 'active'", pid).Scan(&q)
		if err == pgx.ErrNoRows {
			return false, nil
		}
		return strings.Contains(q, marker), err
	})
}

// A lock held by a pooled client: unblock's root is the pooler's server
// connection, and its detail names the client whose transaction it holds.
func TestUnblockNamesThePooledClientOfARoot(t *testing.T) {
	t.Parallel()
	b := pgtest.PgBouncer(t, "transaction")
	ctx := pgtest.Context(t)
	db := pgtest.NewDB(t)
	app := "holder-" + strconv.Itoa(b.Port)
	cn, port := pooledClient(t, b, db, app)
	if _, err := cn.Exec(ctx, "CREATE TABLE t (id int)"); err != nil {
		t.Fatal(err)
	}
	if _, err := cn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := cn.Exec(ctx, "LOCK TABLE t"); err != nil {
		t.Fatal(err)
	}
	pid := backendPID(t, cn)
	waiter := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db})
	waiter.Start("SELECT count(*) FROM t")
	waiter.WaitState("active", "Lock")

	r := run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--dry-run", "-o", "json",
		"--pgbouncer", b.AdminDSN(b.StatsUser))
	r.wantCode(t, 0)
	row := rowOf(t, jsonRows(t, r.out), pid)
	want := fmt.Sprintf("pooled client 127.0.0.1:%d (app %q, user %s) via 127.0.0.1:%d", port, app, cluster.Superuser, b.Port)
	if row["outcome"] != "planned" || !strings.Contains(fmt.Sprint(row["detail"]), want) {
		t.Fatalf("root row %v, want detail %q", row, want)
	}
	r = run(t, false, "unblock", "--longer-than", "0s", "--db", db, "--dry-run", "--pgbouncer", b.AdminDSN(b.StatsUser))
	r.wantCode(t, 0)
	if !strings.Contains(lineOf(t, r.out, pid), fmt.Sprintf("%s  127.0.0.1 via 127.0.0.1:%d idle in transaction", app, b.Port)) {
		t.Fatalf("tree:\n%s", r.out)
	}
}

// A pooler that cannot be asked stops the command: one line naming it,
// exit 2, nothing listed or done (a selection made without it would judge
// its clients by the pooler's address).
func TestPoolerThatCannotBeAskedIsOneLine(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"ls", "--pgbouncer", "host=127.0.0.1 port=1 user=x password=s3cret connect_timeout=5"},
		{"cancel", "--app", pgtest.Tag(t), "--yes", "--pgbouncer", "host=127.0.0.1 port=1 user=x password=s3cret connect_timeout=5"},
		{"ls", "--pgbouncer", "host=127.0.0.1 port=notaport password=s3cret"},
	} {
		r := run(t, false, args...)
		r.wantCode(t, 2)
		if !strings.Contains(r.errOut, "pgbouncer") || strings.Count(strings.TrimSpace(r.errOut), "\n") > 0 ||
			strings.Contains(r.errOut, "s3cret") || r.out != "" {
			t.Errorf("%v: stdout %q stderr %q", args, r.out, r.errOut)
		}
	}
}

// A plan made behind a pooler with a selection by the pooled client is
// applied only with the poolers (apply --pgbouncer), which judge each
// session again by the client it serves now; without them apply refuses
// it whole, one line, exit 2, nothing done. The plan's pooler fields are
// read (a plan is written with them) and never acted on.
func TestApplyPlanMadeBehindAPooler(t *testing.T) {
	t.Parallel()
	b := pgtest.PgBouncer(t, "session")
	db := pgtest.NewDB(t)
	admin := b.AdminDSN(cluster.AdminUser)
	app := "A-" + pgtest.Tag(t)
	a, _ := pooledClient(t, b, db, app)
	pid := backendPID(t, a)
	aDone := query(t, a, "SELECT pg_catalog.pg_sleep(600) /* A */")
	waitQuery(t, pid, "/* A */")

	r := run(t, false, "terminate", "--db", db, "--app", app, "--pgbouncer", admin, "--dry-run", "-o", "json")
	r.wantCode(t, 0)
	plan := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(plan, []byte(r.out), 0o600); err != nil {
		t.Fatal(err)
	}
	r = run(t, false, "apply", plan)
	r.wantCode(t, 2)
	if lines := strings.Split(strings.TrimSpace(r.errOut), "\n"); len(lines) != 1 || !strings.Contains(r.errOut, "--pgbouncer") {
		t.Fatalf("apply without the poolers: %q", r.errOut)
	}
	select {
	case err := <-aDone:
		t.Fatalf("A's query ended: %v", err)
	default:
	}
	r = run(t, false, "apply", plan, "--pgbouncer", admin, "-o", "json")
	r.wantCode(t, 0)
	if err := <-aDone; pgtest.SQLState(err) != "57P01" {
		t.Fatalf("A's query: %v, want terminated (57P01)", err)
	}
	rows := jsonRows(t, r.out)
	if len(rows) != 1 || rows[0]["outcome"] != "terminated" || rows[0]["pid"] != float64(pid) {
		t.Fatalf("rows: %v", rows)
	}
	if p, _ := rows[0]["pooler"].(map[string]any); p == nil || p["application_name"] != app {
		t.Fatalf("apply shows the session without its pooled client: %v", rows[0]["pooler"])
	}
}

// A server connection the pooler opens after pgreap asked it is no direct
// client: the pooler did not name it, and its client is unknown to us. A
// selection by client chooses it neither by the pooler's facts nor by its
// own (the pooler's address), nor lets it through an exclusion.
func TestNewServerConnectionIsNotJudgedAsDirect(t *testing.T) {
	t.Parallel()
	c := pgtest.Shared(t)
	ctx := pgtest.Context(t)
	db := pgtest.NewDB(t)
	conn := pgtest.PgreapDSN(t, c.DSN(db, cluster.Superuser))
	b := pgtest.PgBouncer(t, "transaction")
	p, err := pooler.Parse(b.AdminDSN(cluster.AdminUser))
	if err != nil {
		t.Fatal(err)
	}
	admins, err := pooler.ConnectAll(ctx, []*pooler.Pooler{p})
	if err != nil {
		t.Fatal(err)
	}
	defer pooler.CloseAll(admins)
	app0 := "A-" + pgtest.Tag(t)
	unnamed := pgtest.NewVictim(t, pgtest.VictimOptions{DB: db, App: app0, TCP: true})
	pooled, err := activity.TakePooled(ctx, conn, admins)
	if err != nil {
		t.Fatal(err)
	}
	// Now a client comes, and the pooler opens a server connection for it;
	// and a backend the poolers did not name (a server connection still
	// logging in when they were asked looks so) runs a statement.
	app := "A-" + pgtest.Tag(t)
	a, _ := pooledClient(t, b, db, app)
	pid := backendPID(t, a)
	unnamed.Exec("SELECT 1")

	for _, spec := range []selector.Spec{{DB: []string{db}, ExcludeApp: []string{app}}, {DB: []string{db}, App: []string{app}}, {DB: []string{db}, Client: []string{"127.0.0.1"}}} {
		sel, err := selector.Parse(spec)
		if err != nil {
			t.Fatal(err)
		}
		snap, err := sel.WithPooled(pooled).Take(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range snap.Sessions {
			if s.PID == pid {
				t.Errorf("%+v chose the server connection %d opened after the poolers were asked", spec, pid)
			}
			if s.PID == unnamed.PID {
				t.Errorf("%+v chose the backend %d the poolers did not name, whose state began after they were asked", spec, s.PID)
			}
		}
	}
}

// watch names its poolers per target, in the policy: --pgbouncer on its
// command line would be ignored, and its rules would judge pooled clients
// by the pooler's address; it is refused, one line, exit 2.
func TestWatchRefusesThePgbouncerFlag(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte("targets: [{name: a, dsn: \"host=/nonexistent\"}]\nrules: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := run(t, false, "watch", "-c", path, "--check", "--pgbouncer", "host=127.0.0.1 port=1")
	r.wantCode(t, 2)
	if lines := strings.Split(strings.TrimSpace(r.errOut), "\n"); len(lines) != 1 || !strings.Contains(r.errOut, "pgbouncer:") {
		t.Fatalf("stderr: %q", r.errOut)
	}
}
