package action_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/cluster"
	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/pooler"
	"github.com/pgreap/pgreap/internal/selector"
)

// A server connection chosen by the client it served (terminate --app A
// behind a pooler) is handed to client B between the choice and the
// signal: the signalling statement judges it again, by the pooled client
// and the state it was chosen in, and leaves B alone. PgBouncer does not
// reset application_name for a client that set none: the backend's own
// application_name still says A while it serves B.
func TestPooledSessionHandedOverIsLeftAlone(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t)
	b, db, connect := pgtest.OneServerConnection(t)
	appA := "A-" + pgtest.Tag(t)
	a, bc := connect(appA), connect("")
	pidOf := func(cn *pgx.Conn) int32 { return pgtest.BackendPID(t, cn) }
	if _, err := a.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	pid := pidOf(a)

	p, err := pooler.Parse(b.AdminDSN(cluster.AdminUser))
	if err != nil {
		t.Fatal(err)
	}
	adm, err := p.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	conn := open(t, pgtest.Superuser)
	pooled, err := activity.TakePooled(ctx, conn, []*pooler.Admin{adm})
	if err != nil {
		t.Fatal(err)
	}
	sel := mustSelector(t, selector.Spec{DB: []string{db}, App: []string{appA}}).WithPooled(pooled)
	plan, err := action.Choose(ctx, conn, action.Request{Action: action.Terminate, Selector: sel})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Results) != 1 || plan.Results[0].PID != pid || plan.Results[0].Outcome != action.Planned {
		t.Fatalf("plan: %+v, want pid %d planned", plan.Results, pid)
	}
	if k := plan.Results[0].Pooler; k == nil || k.ApplicationName != appA {
		t.Fatalf("pooled client of the chosen session: %+v", k)
	}

	// A's transaction ends; B's begins on the same server connection.
	if _, err := a.Exec(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	if _, err := bc.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if got := pidOf(bc); got != pid {
		t.Fatalf("B's backend %d, want A's %d (a pool of one)", got, pid)
	}
	results, err := action.Execute(ctx, conn, plan, action.Options{Wait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if results[0].Outcome != action.Changed {
		t.Errorf("outcome %s (%s), want changed", results[0].Outcome, results[0].Detail)
	}
	if _, err := bc.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("B's transaction: %v (SQLSTATE %s), want it alive", err, pgtest.SQLState(err))
	}
	if _, err := bc.Exec(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
}

// The poolers' look is no selection: with nothing else chosen, an action
// still refuses to read it as "every session".
func TestPooledLookAloneChoosesNothing(t *testing.T) {
	t.Parallel()
	sel := (&selector.Selector{}).WithPooled(&activity.Pooled{})
	_, err := action.Choose(pgtest.Context(t), open(t, pgtest.Superuser), action.Request{Action: action.Terminate, Selector: sel})
	if err != action.ErrNothingChosen {
		t.Fatalf("err %v, want ErrNothingChosen", err)
	}
}
