package cluster

import "syscall"

// childAttr starts a child process as cred, and has the kernel send it
// SIGTERM when pgreap (a test binary, the demo) dies, so that none is left
// behind. Go sets Pdeathsig after the credentials, which would clear it.
func childAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGTERM}
}
