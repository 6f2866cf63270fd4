package action

import (
	"context"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// FailSetStatements makes every action statement for more than one session
// raise an error in the server (division by zero), as a signal the judging
// did not foresee would; statements for one session run as they are.
func FailSetStatements() (restore func()) {
	testHookSQL = func(sql string, sessions int) string {
		if sessions < 2 {
			return sql
		}
		return strings.Replace(sql, "WHEN me.rolsuper THEN 'ok'", "WHEN me.rolsuper AND 1 / (c.n - c.n) = 1 THEN 'ok'", 1)
	}
	return func() { testHookSQL = nil }
}

// BeforeStatement calls f before the n-th action statement (from 1).
func BeforeStatement(n int, f func()) (restore func()) {
	calls := 0
	testHookSQL = func(sql string, _ int) string {
		if calls++; calls == n {
			f()
		}
		return sql
	}
	return func() { testHookSQL = nil }
}

// FailSetAfterSignalThen makes the statement for a whole set fail in the
// server after it signalled its first session, and calls f before the
// first statement of the session-by-session retry.
func FailSetAfterSignalThen(f func()) (restore func()) {
	calls := 0
	testHookSQL = func(sql string, sessions int) string {
		if calls++; calls == 2 {
			f()
		}
		if sessions < 2 {
			return sql
		}
		return strings.Replace(sql, "END AS sent,", "END AND (1 / (1 - c.n)) IS NOT NULL AS sent,", 1)
	}
	return func() { testHookSQL = nil }
}

// SignalWindow is when the signalling statement read the session for its
// verdict, and when the signal call began and returned: the kernel's kill()
// was sent in between. Zero for a session not read afresh.
func SignalWindow(r *Result) (read, sent, returned time.Time) {
	return r.at.read, r.at.sent, r.at.returned
}

// Judge runs the action statement on the plan's sessions without
// signalling, reading them afresh or not, on a connection that may be in
// a transaction (Execute refuses one), and returns each verdict.
func Judge(ctx context.Context, conn *pgx.Conn, p *Plan, fresh bool) ([]string, error) {
	idx := make([]int, len(p.Results))
	for i := range idx {
		idx[i] = i
	}
	vs, err := p.statement(ctx, conn, idx, nil, false, func(*Result, string) bool { return fresh })
	var codes []string
	for _, v := range vs {
		codes = append(codes, v.code)
	}
	return codes, err
}

// SkipServerCheck leaves out Execute's look at the server before the
// signalling statement, as if the server changed between the two (a
// failover behind a pooler or a moved address).
func SkipServerCheck() (restore func()) {
	testSkipServerCheck = true
	return func() { testSkipServerCheck = false }
}
