//go:build !linux

package cluster

import "syscall"

// childAttr starts a child process as cred. Only Linux can have it ended
// when pgreap dies (Pdeathsig): elsewhere a killed demo may leave it.
func childAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred}
}
