package pgtest

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgreap/pgreap/internal/cluster"
)

// VictimOptions say where and as whom a victim session connects.
type VictimOptions struct {
	// DB is the database (default: postgres).
	DB string
	// User is the role (default: the superuser).
	User string
	// App is application_name (default: the test's Tag).
	App string
	// TCP connects over 127.0.0.1 instead of the unix socket, so the
	// session has a client_addr.
	TCP bool
	// Cluster is the server (default: the shared cluster), e.g. a
	// standby.
	Cluster *Cluster
}

// Victim is a client session a test opened, named by its identity.
type Victim struct {
	Conn         *pgx.Conn
	PID          int32
	BackendStart time.Time
	App          string

	t       testing.TB
	cluster *Cluster // nil: the shared cluster
	running chan error
	cancel  context.CancelFunc
}

// NewVictim opens a tagged client session, closed when the test ends.
func NewVictim(t testing.TB, opt VictimOptions) *Victim {
	t.Helper()
	c := opt.Cluster
	if c == nil {
		c = Shared(t)
	}
	if opt.DB == "" {
		opt.DB = "postgres"
	}
	if opt.User == "" {
		opt.User = Superuser
	}
	if opt.App == "" {
		opt.App = Tag(t)
	}
	dsn := c.DSN(opt.DB, opt.User)
	if opt.TCP {
		dsn = c.TCPDSN(opt.DB, opt.User)
	}
	dsn += " application_name=" + cluster.Quote(opt.App)
	conn := Connect(t, dsn)
	v := &Victim{Conn: conn, App: opt.App, t: t, cluster: opt.Cluster}
	err := conn.QueryRow(Context(t), `SELECT pid, backend_start FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid()`).
		Scan(&v.PID, &v.BackendStart)
	if err != nil {
		t.Fatalf("pgtest: victim identity: %v", err)
	}
	t.Cleanup(v.stop)
	return v
}

// Exec runs statements on the victim and fails the test on error.
func (v *Victim) Exec(sql string, args ...any) {
	v.t.Helper()
	if _, err := v.Conn.Exec(Context(v.t), sql, args...); err != nil {
		v.t.Fatalf("pgtest: victim %d: %s: %v", v.PID, sql, err)
	}
}

// Start runs a statement on the victim in the background (a long query, a
// lock wait). Wait collects its result; the test's end cancels it.
func (v *Victim) Start(sql string, args ...any) {
	v.t.Helper()
	if v.running != nil {
		v.t.Fatal("pgtest: victim already runs a statement")
	}
	ctx, cancel := context.WithCancel(context.Background())
	v.cancel = cancel
	v.running = make(chan error, 1)
	go func() {
		_, err := v.Conn.Exec(ctx, sql, args...)
		v.running <- err
	}()
}

// Wait waits for the statement Start began and returns its error.
func (v *Victim) Wait() error {
	v.t.Helper()
	if v.running == nil {
		return errors.New("pgtest: nothing started")
	}
	select {
	case err := <-v.running:
		v.running = nil
		v.cancel()
		return err
	case <-Context(v.t).Done():
		return Context(v.t).Err()
	}
}

func (v *Victim) stop() {
	if v.running != nil {
		v.cancel()
		select {
		case <-v.running:
		case <-time.After(10 * time.Second):
		}
		v.running = nil
	}
}

// queryRow runs a statement as the superuser on the victim's server.
func (v *Victim) queryRow(sql string, args []any, dest ...any) error {
	if v.cluster == nil {
		return Admin(v.t).QueryRow(Context(v.t), sql, args...).Scan(dest...)
	}
	conn, err := pgx.Connect(Context(v.t), v.cluster.DSN("postgres", Superuser))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.QueryRow(Context(v.t), sql, args...).Scan(dest...)
}

// WaitState polls pg_stat_activity (as the superuser) until the victim's
// state and wait_event_type are as given ("" matches any wait).
func (v *Victim) WaitState(state, waitEventType string) {
	v.t.Helper()
	Eventually(v.t, "victim "+v.App+" in state "+state, func() (bool, error) {
		var s, w *string
		err := v.queryRow(
			`SELECT state, wait_event_type FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND backend_start = $2`,
			[]any{v.PID, v.BackendStart}, &s, &w)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, errors.New("victim is gone")
		}
		if err != nil {
			return false, err
		}
		return s != nil && *s == state && (waitEventType == "" || (w != nil && *w == waitEventType)), nil
	})
}

// Alive reports whether the victim's session (pid, backend_start) is still
// in pg_stat_activity.
func (v *Victim) Alive() bool {
	v.t.Helper()
	var n int
	err := v.queryRow("SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND backend_start = $2",
		[]any{v.PID, v.BackendStart}, &n)
	if err != nil {
		v.t.Fatal(err)
	}
	return n == 1
}

// StartFastpathSleep calls pg_sleep(seconds) in the background through the
// protocol's function call, as libpq's PQfn and large object clients do:
// the session shows "fastpath function call", and its query_start stays
// that of its last statement. Wait collects the call's error.
func (v *Victim) StartFastpathSleep(seconds float64) {
	v.t.Helper()
	if v.running != nil {
		v.t.Fatal("pgtest: victim already runs a statement")
	}
	// pg_sleep's oid is fixed (2626) in every supported version: asking
	// for it here would be a statement, and move query_start.
	const fn = 2626
	arg := binary.BigEndian.AppendUint64(nil, math.Float64bits(seconds))
	ctx, cancel := context.WithCancel(context.Background())
	v.cancel = cancel
	v.running = make(chan error, 1)
	pc := v.Conn.PgConn()
	go func() {
		done, watched := make(chan struct{}), make(chan struct{})
		go func() { // the test's end cancels the call, as Exec's context would
			defer close(watched)
			select {
			case <-ctx.Done():
				_ = pc.CancelRequest(context.Background())
			case <-done:
			}
		}()
		err := fastpathCall(pc, fn, arg)
		// The watch ends before the result is handed over: Wait cancels
		// ctx once it has the result, and a cancel request sent then
		// would reach the session's next call (CI saw a second call
		// cancelled 10 ms after it began, by no one the test knew).
		close(done)
		<-watched
		v.running <- err
	}()
}

// fastpathCall sends a FunctionCall message and reads up to ReadyForQuery.
func fastpathCall(pc *pgconn.PgConn, fn uint32, arg []byte) error {
	fe := pc.Frontend()
	fe.Send(&pgproto3.FunctionCall{Function: fn, ArgFormatCodes: []uint16{1}, Arguments: [][]byte{arg}, ResultFormatCode: 1})
	if err := fe.Flush(); err != nil {
		return err
	}
	var callErr error
	for {
		msg, err := fe.Receive()
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			callErr = pgconn.ErrorResponseToPgError(m)
		case *pgproto3.ReadyForQuery:
			return callErr
		}
	}
}
