// Package activity takes snapshots of pg_stat_activity: one statement per
// snapshot, kept in sql/ with a variant per server version (12: no
// leader_pid; 13: leader_pid; 14+: query_id), all returning the same
// columns.
//
// It guarantees that a snapshot never lists pgreap's own backend nor a row
// with datname IS NULL (those are not clients), that every name it sends is
// pg_catalog-qualified, that blocked_by is computed only for sessions waiting
// on a lock, and that each parallel worker follows its leader.
package activity
