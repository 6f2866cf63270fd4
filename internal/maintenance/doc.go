// Package maintenance holds what a maintenance window needs beyond single
// actions, for the commands and the root package's API alike:
//
//   - for kick, Arrivals: the sessions that connected while a kick worked,
//     which it could not keep out;
//   - for drain and undrain, a database's connection Settings, the durable
//     Record of them that drain writes before it changes anything
//     (WriteRecord leaves the old record or the new one, never half of
//     one; ReadRecord trusts only a record that is the user's own, see
//     package ownfile), Block (ALLOW_CONNECTIONS false: superusers kept
//     out too, never CONNECTION LIMIT 0), Drain (its rounds, until the
//     database is empty or the timeout) and Restore;
//   - for unblock and top, the lock Waits and the Graph of who waits for
//     whom, with its roots (prepared transactions among them), and
//     Unblock, its rounds of ending roots.
//
// It ends sessions only through package action, with its guard,
// protections and outcomes; it never prints: what a command shows comes
// from its hooks and results.
package maintenance
