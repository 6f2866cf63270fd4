package action_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/action"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// A plan names its server by system_identifier and the postmaster's start
// time. A dry run learns the first from its statement; Execute refuses a
// plan of another server as a whole, and the signalling statement itself
// leaves every session alone (changed) should the server change after that
// look.
//
// Not parallel: it leaves out the look before the statement.
func TestStatementRefusesAnotherServer(t *testing.T) {
	ctx := pgtest.Context(t)
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	cn := open(t, pgtest.Superuser)
	var id int64
	if err := cn.QueryRow(ctx, "SELECT system_identifier FROM pg_catalog.pg_control_system()").Scan(&id); err != nil {
		t.Fatal(err)
	}
	choose := func() *action.Plan {
		t.Helper()
		p, err := action.Choose(ctx, cn, action.Request{Action: action.Terminate, PIDs: []int32{v.PID}})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	p := choose()
	if _, err := action.Execute(ctx, cn, p, action.Options{DryRun: true}); err != nil {
		t.Fatal(err)
	}
	if p.Server.SystemID != uint64(id) || *p.Header().SystemIdentifier != strconv.FormatUint(uint64(id), 10) {
		t.Fatalf("the dry run's plan names server %d (%q), want %d", p.Server.SystemID, *p.Header().SystemIdentifier, id)
	}

	tests := []struct {
		name, detail string
		edit         func(*action.Plan)
	}{
		{"another system_identifier", "the plan was made on another server (system_identifier 42, this server's " + strconv.FormatUint(uint64(id), 10) + "): left alone",
			func(p *action.Plan) { p.Server.SystemID = 42 }},
		{"restarted since", "the plan was made on another server of this cluster (a primary or standby of it) or before a restart (postmaster started ",
			func(p *action.Plan) { p.Server.Started = p.Server.Started.Add(-time.Second) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := choose()
			p.Server.SystemID = uint64(id)
			tt.edit(p)
			res, err := action.Execute(ctx, cn, p, action.Options{Wait: 5 * time.Second})
			if !errors.Is(err, action.ErrOtherServer) || res[0].Outcome != action.Planned {
				t.Fatalf("Execute: %v, %s; want ErrOtherServer and nothing done", err, res[0].Outcome)
			}

			defer action.SkipServerCheck()()
			p = choose()
			p.Server.SystemID = uint64(id)
			tt.edit(p)
			res, err = action.Execute(ctx, cn, p, action.Options{Wait: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if res[0].Outcome != action.Changed || !strings.Contains(res[0].Detail, tt.detail) {
				t.Fatalf("%s (%s), want changed (%s)", res[0].Outcome, res[0].Detail, tt.detail)
			}
			if !v.Alive() {
				t.Fatal("the session was ended")
			}
		})
	}
}
