package cli_test

import (
	"encoding/csv"
	"encoding/json"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// lsRows runs ls -o json with args and decodes its rows.
func lsRows(t *testing.T, code int, args ...string) []map[string]any {
	t.Helper()
	r := run(t, false, append([]string{"ls", "-o", "json"}, args...)...)
	r.wantCode(t, code)
	var rows []map[string]any
	if err := json.Unmarshal([]byte(r.out), &rows); err != nil {
		t.Fatalf("not a JSON array: %v\n%s", err, r.out)
	}
	return rows
}

func pids(rows []map[string]any) []int32 {
	var p []int32
	for _, r := range rows {
		if n, ok := r["pid"].(float64); ok {
			p = append(p, int32(n))
		}
	}
	return p
}

// TestLsStandby: on a standby whose replay waits for a query's lock, ls
// lists the replay first, blocked by that query, and marks it
// blocking_replay in every format; --blocking-replay chooses it alone.
func TestLsStandby(t *testing.T) {
	t.Parallel()
	h := pgtest.HoldReplay(t)
	dsn := h.Standby.DSN("postgres", pgtest.Superuser)
	tag := []string{"--app", pgtest.Tag(t), "-d", dsn}

	rows := lsRows(t, 0, tag...)
	if len(rows) != 3 {
		t.Fatalf("%d rows, want the replay and 2 sessions: %v", len(rows), rows)
	}
	startup := rows[0]
	if startup["backend_type"] != "startup" || !slices.Equal(pids(rows[1:]), []int32{min(h.Blocker.PID, h.Other.PID), max(h.Blocker.PID, h.Other.PID)}) {
		t.Fatalf("rows: want the startup process first, then the sessions: %v", rows)
	}
	if b, _ := startup["blocked_by"].([]any); len(b) != 1 || b[0] != float64(h.Blocker.PID) {
		t.Errorf("replay blocked_by %v, want [%d]", startup["blocked_by"], h.Blocker.PID)
	}
	replay, ok := startup["replay"].(map[string]any)
	if !ok {
		t.Fatalf("replay row has no replay object: %v", startup)
	}
	if lag, ok := replay["lag_seconds"].(float64); !ok || lag < 0 {
		t.Errorf("lag_seconds %v", replay["lag_seconds"])
	}
	if n, ok := replay["lag_bytes"].(float64); !ok || n <= 0 {
		t.Errorf("lag_bytes %v, want the drop received and not replayed", replay["lag_bytes"])
	}
	if h.Standby.Major >= 14 {
		if _, err := time.Parse(time.RFC3339Nano, replay["waiting_since"].(string)); err != nil {
			t.Errorf("waiting_since %v on %d: %v", replay["waiting_since"], h.Standby.Major, err)
		}
	} else if replay["waiting_since"] != nil {
		t.Errorf("waiting_since %v before 14", replay["waiting_since"])
	}
	if c, ok := replay["conflicts"].(map[string]any); !ok || c["lock"] != float64(0) || len(c) != 5 {
		t.Errorf("conflicts %v, want 5 counts, none cancelled", replay["conflicts"])
	}
	for _, row := range rows[1:] {
		want := row["pid"] == float64(h.Blocker.PID)
		if row["blocking_replay"] != want {
			t.Errorf("session %v: blocking_replay %v, want %v", row["pid"], row["blocking_replay"], want)
		}
	}

	rows = lsRows(t, 0, append(tag, "--blocking-replay")...)
	if len(rows) != 2 || rows[0]["backend_type"] != "startup" || rows[1]["pid"] != float64(h.Blocker.PID) {
		t.Errorf("--blocking-replay: %v, want the replay and %d", pids(rows), h.Blocker.PID)
	}

	// Nothing matched: exit 1, and the replay is still shown.
	rows = lsRows(t, 1, "--app", pgtest.Tag(t)+"-nobody", "-d", dsn)
	if len(rows) != 1 || rows[0]["backend_type"] != "startup" {
		t.Errorf("nothing matched: %v, want the replay alone", rows)
	}
	r := run(t, false, "ls", "--app", pgtest.Tag(t)+"-nobody", "-d", dsn)
	r.wantCode(t, 1)
	if strings.Count(r.out, "\n") != 2 || !strings.Contains(r.out, "WAL replay") || !strings.Contains(r.errOut, "no sessions matched") {
		t.Errorf("table, nothing matched: want the replay alone\n%s%s", r.out, r.errOut)
	}

	r = run(t, false, append([]string{"ls"}, tag...)...)
	r.wantCode(t, 0)
	lines := strings.Split(strings.TrimRight(r.out, "\n"), "\n")
	if len(lines) != 4 || !strings.Contains(lines[1], "WAL replay") {
		t.Fatalf("table: want a header, the replay, 2 sessions:\n%s", r.out)
	}
	cols := columns(lines[0], lines[1])
	if cols["STATE"] != "WAL replay" || cols["WAIT"] != "Lock:relation" || cols["BLOCKED BY"] != strconv.Itoa(int(h.Blocker.PID)) ||
		!strings.HasPrefix(cols["QUERY"], "lag ") || !strings.Contains(cols["QUERY"], "to replay") {
		t.Errorf("replay line %q: %q", lines[1], cols)
	}
	if h.Standby.Major >= 14 && cols["AGE"] == "" {
		t.Errorf("replay line: no wait age on %d: %q", h.Standby.Major, lines[1])
	}

	r = run(t, false, append([]string{"ls", "-o", "csv"}, tag...)...)
	r.wantCode(t, 0)
	recs, err := csv.NewReader(strings.NewReader(r.out)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	col := slices.Index(recs[0], "blocking_replay")
	if col < 0 || len(recs) != 4 {
		t.Fatalf("csv: want blocking_replay and 3 rows: %q", recs)
	}
	for _, rec := range recs[2:] {
		want := strconv.FormatBool(rec[0] == strconv.Itoa(int(h.Blocker.PID)))
		if rec[col] != want {
			t.Errorf("csv row %q: blocking_replay %q, want %s", rec, rec[col], want)
		}
	}
}

// columns cuts a table line into its cells by the header's columns.
func columns(header, line string) map[string]string {
	titles := []string{"PID", "DB", "USER", "APP", "CLIENT", "STATE", "AGE", "WAIT", "BLOCKED BY", "QUERY"}
	cells := map[string]string{}
	for i, title := range titles {
		from := strings.Index(header, title)
		to := len(line)
		if i+1 < len(titles) {
			to = min(strings.Index(header, titles[i+1]), len(line))
		}
		if from < 0 || from >= len(line) {
			continue
		}
		cells[title] = strings.TrimSpace(line[from:to])
	}
	return cells
}

// TestLsPrimaryHasNoReplay: on a primary, no replay row and no
// blocking_replay.
func TestLsPrimaryHasNoReplay(t *testing.T) {
	t.Parallel()
	v := pgtest.NewVictim(t, pgtest.VictimOptions{})
	v.Exec("BEGIN")
	v.Exec("SELECT 1")
	rows := lsRows(t, 0, "--app", pgtest.Tag(t))
	if len(rows) != 1 || rows[0]["pid"] != float64(v.PID) {
		t.Fatalf("rows %v, want %d alone", rows, v.PID)
	}
	if _, ok := rows[0]["blocking_replay"]; ok {
		t.Errorf("primary row has blocking_replay: %v", rows[0])
	}
	r := run(t, false, "ls", "--app", pgtest.Tag(t), "-o", "csv")
	r.wantCode(t, 0)
	if strings.Contains(r.out, "blocking_replay") || strings.Contains(r.out, "startup") {
		t.Errorf("primary csv: %q", r.out)
	}
}

// TestLsStandbyConflicts: the server cancels a query for replay (the
// standby waits 100ms at most); ls counts it among the conflicts.
func TestLsStandbyConflicts(t *testing.T) {
	t.Parallel()
	primary := pgtest.Own(t, pgtest.Options{})
	standby := pgtest.OwnStandby(t, primary, pgtest.StandbyOptions{Settings: map[string]string{"max_standby_streaming_delay": "100ms"}})
	p := pgtest.Connect(t, primary.DSN("postgres", pgtest.Superuser))
	ctx := pgtest.Context(t)
	if _, err := p.Exec(ctx, "CREATE TABLE dropped (x int)"); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitReplay(t, standby, primary)
	reader := pgtest.NewVictim(t, pgtest.VictimOptions{Cluster: standby})
	reader.Exec("BEGIN")
	reader.Exec("SELECT * FROM dropped")
	reader.Start("SELECT pg_catalog.pg_sleep(600)")
	if _, err := p.Exec(ctx, "DROP TABLE dropped"); err != nil {
		t.Fatal(err)
	}
	if err := reader.Wait(); pgtest.SQLState(err) != "40001" {
		t.Fatalf("reader: %v, want a cancel for replay (40001)", err)
	}
	// A backend reports its statistics when idle out of a transaction.
	reader.Exec("ROLLBACK")
	dsn := standby.DSN("postgres", pgtest.Superuser)
	pgtest.Eventually(t, "the cancel counted", func() (bool, error) {
		rows := lsRows(t, 0, "--app", pgtest.Tag(t), "-d", dsn)
		c := rows[0]["replay"].(map[string]any)["conflicts"].(map[string]any)
		return c["lock"].(float64) >= 1, nil
	})
	r := run(t, false, "ls", "--app", pgtest.Tag(t), "-d", dsn)
	r.wantCode(t, 0)
	if !strings.Contains(r.out, "cancelled for replay: 1 lock") {
		t.Errorf("table does not count the cancel:\n%s", r.out)
	}
}

// TestWatchCheckBlockingReplay: a policy's rule may choose the sessions
// that block WAL replay.
func TestWatchCheckBlockingReplay(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writePolicy(t, path, strings.Replace(watchPolicy, "match: {app: [\"TAG-a*\"], state: [active], query: \"pg_sleep\"}",
		"match: {app: [\"TAG-a*\"], blocking_replay: true, longer_than: 30s}", 1))
	r := run(t, false, "watch", "-c", path, "--check")
	r.wantCode(t, 0)
	if !strings.Contains(r.out, "blocking WAL replay") {
		t.Errorf("--check does not say the rule's choice:\n%s", r.out)
	}
}
