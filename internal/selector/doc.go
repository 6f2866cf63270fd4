// Package selector turns the selectors of the command line and of a policy
// rule's match into one SQL predicate over pg_stat_activity, with every
// value a bound parameter: globs become escaped LIKE patterns, --client a
// CIDR containment, durations intervals measured by the server's clock.
//
// The same predicate serves the snapshot and, repeated inside an action's
// statement, the re-check at the instant of signalling. Only the query
// regular expression (RE2) is evaluated in Go, on the snapshot's text; an
// action stays safe because it also pins the session's query_start.
package selector
