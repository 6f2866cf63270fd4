// Package pgtest starts throwaway PostgreSQL clusters for tests: initdb and
// pg_ctl on real server binaries of any supported major version, data and
// unix socket in a temporary directory that is removed afterwards, the
// server run as an unprivileged user when the tests run as root.
//
// One cluster serves a test package (Main from TestMain). Each test gets
// its own databases (NewDB), roles (NewRole) and client sessions (NewVictim)
// tagged with its name in application_name (Tag), so parallel tests never
// touch each other's sessions. It only ever ends sessions of the clusters it
// started.
//
// PgBouncer puts a real PgBouncer (the pgbouncer binary: Debian's package
// pgbouncer, /usr/sbin/pgbouncer) in front of the package's cluster, one per
// pool mode, stopped with the cluster; OwnPgBouncer starts one for a single
// test. Tests that need it are skipped with a message when the binary is
// missing, and fail when CI=true: CI (.ci/run) installs it. Their config,
// log and socket live in a temporary directory; they listen on a free port
// of 127.0.0.1, never on 6432, and run as the server's unprivileged user.
//
// Standby is a hot standby of the package's cluster, streaming from it,
// started by the first test that asks and stopped before the cluster;
// OwnStandby starts one of any cluster for a single test. WaitReplay
// waits until a standby has replayed what its primary has written.
//
// NewLink (Linux) makes two network namespaces of the test's own joined by
// a veth pair, removed when the test ends, for a network cut without a
// close (Link.Cut); Own with Link.Exec starts a server in one of them. It
// needs root and ip (iproute2): the test is skipped without them, and
// fails when CI=true.
package pgtest
