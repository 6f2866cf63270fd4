// Package watch is the policy daemon, `pgreap watch` (PRODUCT.md section
// 4): per target, one snapshot per interval tells which sessions a rule
// matches or will match once a duration passes; a timer armed for the
// instant each crosses sends the guarded action statement, whose predicate,
// evaluated by the server at that instant, decides. Every attempt is a line
// in the audit log and a count in the metrics. A lost server is reconnected
// with backoff; replicas elect, per target, the one that acts with a
// session-level advisory lock held on the connection that acts.
package watch
