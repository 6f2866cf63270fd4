package output_test

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/activity"
	"github.com/pgreap/pgreap/internal/golden"
	"github.com/pgreap/pgreap/internal/output"
)

var now = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

func ago(d time.Duration) time.Time { return now.Add(-d) }

// sessions is a fixed picture with every kind of row the table shows.
func sessions() []activity.Session {
	return []activity.Session{
		{
			PID: 101, Datname: "shop", Usename: "web", ApplicationName: "checkout",
			ClientAddr: netip.MustParseAddr("10.0.0.7"), BackendType: "client backend", State: "active",
			BackendStart: ago(3 * time.Hour), XactStart: ago(6*time.Minute + 12*time.Second + 500*time.Microsecond),
			QueryStart: ago(6*time.Minute + 12*time.Second), StateChange: ago(6*time.Minute + 12*time.Second),
			Query:   "SELECT o.*\n  FROM orders o\n  JOIN lines l USING (order_id)\n WHERE o.created > now() - interval '30 days' AND l.sku LIKE 'A%' ORDER BY o.created DESC",
			QueryID: -4242424242,
		},
		{
			PID: 105, LeaderPID: 101, Datname: "shop", Usename: "web", ApplicationName: "checkout",
			BackendType: "parallel worker", State: "active",
			BackendStart: ago(6 * time.Minute), XactStart: ago(6*time.Minute + 12*time.Second),
			QueryStart: ago(6*time.Minute + 12*time.Second), StateChange: ago(6 * time.Minute),
			Query: "SELECT o.*\n  FROM orders o\n  JOIN lines l USING (order_id)\n WHERE o.created > now() - interval '30 days' AND l.sku LIKE 'A%' ORDER BY o.created DESC",
		},
		{
			PID: 202, Datname: "shop", Usename: "batch", ApplicationName: "nightly-\x1b[31mjob",
			BackendType: "client backend", State: "idle in transaction",
			BackendStart: ago(26 * time.Hour), XactStart: ago(25*time.Hour + 3*time.Minute),
			QueryStart: ago(25 * time.Hour), StateChange: ago(25 * time.Hour),
			WaitEventType: "Client", WaitEvent: "ClientRead",
			Query: "UPDATE stock SET n = n - 1 WHERE sku = 'A1'\x1b]0;pwned\x07\r\n-- done",
		},
		{
			PID: 303, Datname: "shop", Usename: "web", ApplicationName: "",
			ClientAddr: netip.MustParseAddr("2001:db8::5"), BackendType: "client backend", State: "active",
			BackendStart: ago(time.Minute), XactStart: ago(2 * time.Second), QueryStart: ago(2 * time.Second),
			StateChange: ago(2 * time.Second), WaitEventType: "Lock", WaitEvent: "relation", WaitStart: ago(1500 * time.Millisecond),
			Query: "SELECT count(*) FROM stock", BlockedBy: []int32{202},
			// A GID is any text its owner chose.
			BlockedByPrepared: []string{"2pc-\x1b[2J7"},
		},
		{
			// Another role's session, as a role without pg_read_all_stats sees it.
			PID: 404, Datname: "postgres", Usename: "admin", ApplicationName: "psql",
			Query: "<insufficient privilege>",
		},
	}
}

func render(t *testing.T, f output.Format, opt output.Options) string {
	t.Helper()
	var b bytes.Buffer
	opt.Now = now
	if err := output.Write(&b, f, sessions(), opt); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestGolden(t *testing.T) {
	tests := []struct {
		name   string
		format output.Format
		opt    output.Options
	}{
		{"table_terminal", output.Table, output.Options{Color: true, Width: 120}},
		{"table_narrow", output.Table, output.Options{Width: 60}},
		{"table_piped", output.Table, output.Options{}},
		{"json", output.JSON, output.Options{QueryID: true}},
		{"json_pg13", output.JSON, output.Options{}},
		{"csv", output.CSV, output.Options{QueryID: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			golden.Check(t, tt.name+".golden", render(t, tt.format, tt.opt))
		})
	}
}

func TestTableIsSafeOnATerminal(t *testing.T) {
	for _, opt := range []output.Options{{Width: 120}, {}} {
		out := render(t, output.Table, opt)
		for _, bad := range []string{"\x1b", "\x07", "\r"} {
			if strings.Contains(out, bad) {
				t.Errorf("width %d: control character %q reached the table:\n%q", opt.Width, bad, out)
			}
		}
		if n := strings.Count(out, "\n"); n != len(sessions())+1 {
			t.Errorf("width %d: %d lines, want one per session and a header", opt.Width, n)
		}
	}
	huge := sessions()[:1]
	huge[0].Query = strings.Repeat("x", 1<<20)
	var b bytes.Buffer
	if err := output.Write(&b, output.Table, huge, output.Options{Now: now, Width: 100}); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if w := len([]rune(line)); w > 100 {
			t.Errorf("line of %d columns on a 100-column terminal", w)
		}
	}
}

func TestJSONRoundTrip(t *testing.T) {
	var rows []map[string]any
	if err := json.Unmarshal([]byte(render(t, output.JSON, output.Options{QueryID: true})), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(sessions()) {
		t.Fatalf("%d rows", len(rows))
	}
	bs, err := time.Parse(time.RFC3339Nano, rows[0]["backend_start"].(string))
	if err != nil || !bs.Equal(sessions()[0].BackendStart) {
		t.Errorf("backend_start %v does not carry the exact identity: %v", rows[0]["backend_start"], err)
	}
	if rows[1]["leader_pid"] != float64(101) || rows[0]["leader_pid"] != nil {
		t.Errorf("leader_pid: %v %v", rows[0]["leader_pid"], rows[1]["leader_pid"])
	}
	if rows[4]["backend_start"] != nil || rows[4]["state"] != nil || rows[4]["client_addr"] != nil {
		t.Errorf("hidden fields must be null: %v", rows[4])
	}
}

func TestAge(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, ""},
		{850 * time.Millisecond, "850ms"},
		{42 * time.Second, "42s"},
		{3*time.Minute + 7*time.Second, "3m07s"},
		{2*time.Hour + 5*time.Minute, "2h05m"},
		{76 * time.Hour, "3d04h"},
	}
	for _, tt := range tests {
		if got := output.Age(tt.d); got != tt.want {
			t.Errorf("%v: got %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestParseFormat(t *testing.T) {
	for _, ok := range []string{"table", "json", "csv"} {
		if _, err := output.ParseFormat(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	if _, err := output.ParseFormat("yaml"); err == nil || !strings.Contains(err.Error(), "table, json, csv") {
		t.Errorf("yaml: %v", err)
	}
}
