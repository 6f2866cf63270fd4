// Package ownfile opens the files pgreap trusts (drain records, the audit
// log) only when they are its user's own, as OpenSSH treats ~/.ssh: owned
// by the user who runs pgreap, writable by no one else, never a symbolic
// link, never a FIFO or device. Root is no exception: a file another uid
// owns is refused even for root, which could otherwise be made to trust
// or append to a file a shell user planted.
//
// Every check is made on the opened file (fstat), not on its name, so a
// file swapped between the check and the open is never the one used. A
// directory of records is checked with each directory above it: one that
// another user can write could let them swap the records' directory.
package ownfile
