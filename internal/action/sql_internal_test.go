package action

import (
	"strings"
	"testing"
)

// The columns of newer servers are put in on those servers, and only there:
// what is printed of a session (leader_pid, query_id) comes from the
// signalling statement.
func TestVersionedSQL(t *testing.T) {
	for _, tt := range []struct {
		version    int
		has, lacks []string
	}{
		{120000, []string{"/*13+ j.leader_pid*/ NULL::integer AS leader_pid", "/*14+ j.query_id*/ NULL::bigint AS query_id"}, nil},
		{130000, []string{"j.leader_pid AS leader_pid", "/*14+ j.query_id*/ NULL::bigint AS query_id"}, []string{"/*13+"}},
		{180000, []string{"j.leader_pid AS leader_pid", "j.query_id AS query_id"}, []string{"/*13+", "/*14+"}},
	} {
		sql := versionedSQL(actSQL, tt.version)
		for _, s := range tt.has {
			if !strings.Contains(sql, s) {
				t.Errorf("%d: no %q", tt.version, s)
			}
		}
		for _, s := range tt.lacks {
			if strings.Contains(sql, s) {
				t.Errorf("%d: still %q", tt.version, s)
			}
		}
	}
}
