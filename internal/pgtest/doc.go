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
package pgtest
