package action

import "strings"

// FailSetStatements makes every action statement for more than one session
// raise an error in the server (division by zero), as a signal the judging
// did not foresee would; statements for one session run as they are.
func FailSetStatements() (restore func()) {
	testHookSQL = func(sql string, sessions int) string {
		if sessions < 2 {
			return sql
		}
		return strings.Replace(sql, "ORDER BY j.n", "ORDER BY j.n / 0", 1)
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
		return strings.Replace(sql, "END AS sent,", "END AND (1 / (1 - j.n)) IS NOT NULL AS sent,", 1)
	}
	return func() { testHookSQL = nil }
}
