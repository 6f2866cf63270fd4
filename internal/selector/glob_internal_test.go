package selector

import (
	"testing"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// globRegexp (what --test and the client-side checks use) matches exactly
// what the server's LIKE matches with likePattern (what the daemon's
// snapshot uses): a name may hold a newline ("svc\nx" is a valid role
// name), and %, _ and \ are no wildcards in a glob.
func TestGlobMatchesAsLike(t *testing.T) {
	values := []string{"svc", "svcx", "svc\nx", "x\nsvc", "svc\n", "a%b", "a_b", `a\b`, "axb", "", "é*", "ab\r\ncd"}
	globs := []string{"svc*", "*svc", "svc", "a%b", "a_b", `a\b`, "a*b", "*", "", "é*", "ab*cd", "*\n*"}
	for _, v := range values {
		for _, g := range globs {
			var like bool
			if err := pgtest.Admin(t).QueryRow(pgtest.Context(t), "SELECT $1::text LIKE $2::text", v, likePattern(g)).Scan(&like); err != nil {
				t.Fatal(err)
			}
			if got := globRegexp(g).MatchString(v); got != like {
				t.Errorf("glob %q on %q: %v, the server's LIKE says %v", g, v, got, like)
			}
		}
	}
}
