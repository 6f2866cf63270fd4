package cli

import (
	"errors"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// openNoLinks opens path to read, refusing a symbolic link in any of its
// components (ELOOP) in the same system call: RESOLVE_NO_SYMLINKS, so that
// no link can be swapped in between a check and the open. A kernel
// without openat2 (before 5.6) says ENOSYS; the seccomp filter of an older
// container runtime, not knowing the call, says EPERM: then the portable
// way.
func openNoLinks(path string) (*os.File, error) {
	how := &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_NONBLOCK | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS}
	for {
		fd, err := unix.Openat2(unix.AT_FDCWD, path, how)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EPERM):
			return openCheckLinks(path)
		case err != nil:
			return nil, &fs.PathError{Op: "open", Path: path, Err: err}
		}
		return os.NewFile(uintptr(fd), path), nil
	}
}
