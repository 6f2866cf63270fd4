package action_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/pgreap/pgreap/internal/action"
)

// planRow is one row as --dry-run -o json writes it.
const planRow = `{"pid":18809,"leader_pid":null,"datname":"shop","usename":"postgres","application_name":"etl","client_addr":null,"backend_type":"client backend","state":"idle in transaction","backend_start":"2026-11-26T02:40:06.81281Z","xact_start":"2026-11-26T02:40:06.813946Z","query_start":"2026-11-26T02:40:06.813946Z","state_change":"2026-11-26T02:40:06.830168Z","wait_event_type":"Client","wait_event":"ClientRead","query":"BEGIN; SELECT 1","query_id":null,"blocked_by":[],"action":"terminate","outcome":"planned","detail":null,"guard":["pid","backend_start"],"plan":{"version":3,"host":"/tmp/x","port":5432,"system_identifier":"7714390963482790414","postmaster_start_time":"2026-11-26T02:40:06.361902Z","selection":null}}`

// Any plan file: ReadPlan never panics; what it accepts names every
// session it will act on by a pid and a backend_start, with a cancel or a
// terminate and a guard, all on one server run named by its
// system_identifier.
func FuzzReadPlan(f *testing.F) {
	f.Add([]byte("[" + planRow + "]"))
	f.Add([]byte("[" + planRow + "," + strings.Replace(planRow, "18809", "18810", 1) + "]"))
	f.Add([]byte("[" + strings.Replace(planRow, `"guard":["pid","backend_start"]`, `"guard":["pid"]`, 1) + "]"))
	f.Add([]byte("[" + strings.Replace(planRow, `"action":"terminate"`, `"action":"vacuum"`, 1) + "]"))
	f.Add([]byte("[" + strings.Replace(planRow, `"pid":18809`, `"pid":18809,"pid":1`, 1) + "]"))
	f.Add([]byte("[" + strings.Replace(planRow, `"selection":null`, `"selection":{"app":["a\u0022"],"db":[]}`, 1) + "]"))
	f.Add([]byte(`[{"pid":1}]`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"a":`))
	f.Fuzz(func(t *testing.T, data []byte) {
		plan, err := action.ReadPlan(bytes.NewReader(data))
		if err != nil {
			return // the CLI prints it on one line (cli.Message), exit 2
		}
		for _, r := range plan.Results {
			if r.PID <= 0 || r.BackendStart.IsZero() || (r.Action != action.Cancel && r.Action != action.Terminate) || r.Outcome != action.Planned {
				t.Fatalf("accepted a row it cannot act on safely: %+v", r)
			}
			if r.Action == action.Cancel && !r.Guard.Query {
				t.Fatalf("a cancel without its query pinned: %+v", r)
			}
		}
		if len(plan.Results) > 0 && (plan.Server.Started.IsZero() || plan.Server.SystemID == 0) {
			t.Fatalf("no server run: %+v", plan.Server)
		}
	})
}

// TestReadPlanLockConflict: a plan's lock_conflict (clear's, exec's) is
// read as written, and a name it does not have is refused, at any depth,
// as anywhere in a plan.
func TestReadPlanLockConflict(t *testing.T) {
	const lock = `"selection":{"lock_conflict":{"objects":[{"locktype":"relation","database":5,"relation":16384,"page":null,"tuple":null,"virtualxid":null,"transactionid":null,"classid":null,"objid":null,"objsubid":null}],"mode":"AccessExclusiveLock"}}`
	row := strings.Replace(planRow, `"blocked_by":[]`, `"blocked_by":[],"blocked_by_prepared":[],"gid":null`, 1)
	good := "[" + strings.Replace(row, `"selection":null`, lock, 1) + "]"
	if _, err := action.ReadPlan(strings.NewReader(good)); err != nil {
		t.Fatalf("refused: %v", err)
	}
	for _, bad := range []struct{ from, to, msg string }{
		{`"mode":"AccessExclusiveLock"`, `"mode":"AccessExclusiveLock","modes":"x"`, `"lock_conflict": unknown field "modes"`},
		{`"objsubid":null`, `"objsubid":null,"pid":1`, `"objects": unknown field "pid"`},
		{`"mode":"AccessExclusiveLock"`, `"mode":"SuperLock"`, `not a table lock mode`},
		{`"locktype":"relation"`, `"locktype":"table"`, `not one of pg_locks'`},
	} {
		_, err := action.ReadPlan(strings.NewReader(strings.Replace(good, bad.from, bad.to, 1)))
		if err == nil || !strings.Contains(err.Error(), bad.msg) {
			t.Errorf("%s: got %v, want %q", bad.to, err, bad.msg)
		}
	}
}
