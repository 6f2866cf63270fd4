package action

import (
	"strings"
	"testing"
)

// Each server gets the file of its version, and the files differ only in
// the columns a version has: what is printed of a session (leader_pid,
// query_id) comes from the signalling statement, and a fix to one file
// that misses another fails here.
func TestActSQLPerVersion(t *testing.T) {
	for _, tt := range []struct {
		version int
		want    string
	}{
		{120000, act12SQL}, {120022, act12SQL}, {130000, act13SQL}, {140000, act14SQL}, {180000, act14SQL},
	} {
		if actSQL(tt.version) != tt.want {
			t.Errorf("%d: not its file", tt.version)
		}
	}
	// Each file with its version's columns made the oldest's: the same
	// statement, comments aside.
	older := strings.NewReplacer("j.leader_pid,", "NULL::integer AS leader_pid,", "j.query_id,", "NULL::bigint AS query_id,")
	v12 := withoutComments(act12SQL)
	for name, sql := range map[string]string{"act.v13.sql": act13SQL, "act.v14.sql": act14SQL} {
		if got := older.Replace(withoutComments(sql)); got != v12 {
			t.Errorf("%s differs from act.v12.sql in more than leader_pid and query_id", name)
		}
		if withoutComments(sql) == v12 {
			t.Errorf("%s is act.v12.sql", name)
		}
	}
	if !strings.Contains(act13SQL, "j.leader_pid,") || strings.Contains(act13SQL, "j.query_id") ||
		!strings.Contains(act14SQL, "j.query_id,") {
		t.Error("a version's columns are missing")
	}
}

func withoutComments(sql string) string {
	var b strings.Builder
	for _, l := range strings.Split(sql, "\n") {
		if code, _, _ := strings.Cut(l, "--"); strings.TrimSpace(code) != "" {
			b.WriteString(code + "\n")
		}
	}
	return b.String()
}
