package ownfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// ErrNotOwn is wrapped by every refusal: the file or directory could have
// been planted or changed by another user.
var ErrNotOwn = errors.New("pgreap trusts only files of its own user that no one else can write")

// refuse says why path is not trusted.
func refuse(path, why string, args ...any) error {
	return fmt.Errorf("%s %s: %w", path, fmt.Sprintf(why, args...), ErrNotOwn)
}

// mode is st_mode's permission bits, setuid, setgid and sticky included,
// as chmod takes them.
func mode(st *syscall.Stat_t) uint32 { return uint32(st.Mode) & 0o7777 }

// own refuses st unless the user running pgreap owns it and neither its
// group nor others may write it.
func own(path string, st *syscall.Stat_t) error {
	if uid := os.Geteuid(); int(st.Uid) != uid {
		return refuse(path, "is owned by uid %d, not by uid %d that runs pgreap", st.Uid, uid)
	}
	if mode(st)&0o022 != 0 {
		return refuse(path, "is writable by its group or others (mode %04o; chmod go-w it)", mode(st))
	}
	return nil
}

func stat(fi os.FileInfo) *syscall.Stat_t { return fi.Sys().(*syscall.Stat_t) }

// Dir checks a directory pgreap keeps files in: the user's own, not a
// symbolic link, and every directory above it (links resolved) owned by
// root or the user and writable by no one else, unless sticky (/tmp: no
// one may rename or remove there what is not theirs). A directory that
// does not exist is an error wrapping os.ErrNotExist.
func Dir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return refuse(dir, "is a symbolic link")
	}
	if !fi.IsDir() {
		return refuse(dir, "is not a directory")
	}
	if err := own(dir, stat(fi)); err != nil {
		return err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	above, err := filepath.EvalSymlinks(filepath.Dir(abs))
	if err != nil {
		return err
	}
	uid := os.Geteuid()
	for p := above; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		st := stat(fi)
		if st.Uid != 0 && int(st.Uid) != uid {
			return refuse(dir, "is in %s, owned by uid %d (neither root nor uid %d that runs pgreap)", p, st.Uid, uid)
		}
		if mode(st)&0o022 != 0 && mode(st)&0o1000 == 0 {
			return refuse(dir, "is in %s, writable by its group or others and not sticky (mode %04o)", p, mode(st))
		}
		if parent := filepath.Dir(p); parent == p {
			return nil
		}
	}
}

// open opens path without following a symbolic link, and without waiting
// for a writer if it is a FIFO, then checks what it opened.
func open(path string, flag int, perm os.FileMode) (*os.File, *syscall.Stat_t, error) {
	f, err := os.OpenFile(path, flag|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, perm)
	if err != nil {
		switch {
		case errors.Is(err, syscall.ELOOP):
			return nil, nil, refuse(path, "is a symbolic link")
		case errors.Is(err, syscall.ENXIO): // a FIFO no one reads, opened to write
			return nil, nil, refuse(path, "is not a regular file")
		}
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	st := stat(fi)
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, refuse(path, "is not a regular file")
	}
	if err := own(path, st); err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, st, nil
}

// ReadFile reads a file pgreap wrote itself; an error wrapping
// os.ErrNotExist when there is none.
func ReadFile(path string) ([]byte, error) {
	f, _, err := open(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// ReadSecret reads a file of secrets: pgreap's user's own, one name, and
// neither readable nor writable by its group or others (as libpq asks of
// a password file). A file of others' secrets pgreap's user may read (a
// system file readable by a group) is not taken.
func ReadSecret(path string) ([]byte, error) {
	f, st, err := open(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := oneName(path, st); err != nil {
		return nil, err
	}
	if mode(st)&0o077 != 0 {
		return nil, refuse(path, "is open to its group or others (mode %04o; chmod 600 it)", mode(st))
	}
	return io.ReadAll(io.LimitReader(f, maxSecret))
}

// maxSecret bounds what ReadSecret reads: a few headers.
const maxSecret = 1 << 20

// CheckAppend says whether OpenAppend would take path, without creating
// or writing it: a file not there yet is fine (it would be created 0600).
// watch --check refuses what the daemon will.
func CheckAppend(path string) error {
	f, st, err := open(path, os.O_RDONLY, 0)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return err
	}
	defer f.Close()
	return oneName(path, st)
}

// oneName refuses a file with another name: a hard link planted in the
// log's directory would have pgreap append to another file.
func oneName(path string, st *syscall.Stat_t) error {
	if st.Nlink != 1 {
		return refuse(path, "has %d names (hard links)", st.Nlink)
	}
	return nil
}

// OpenAppend opens a log for appending, creating it 0600. An existing file
// may be readable by its group (0640, a group the operator chose) but
// writable by no one else, and have no other name (a hard link planted in
// the log's directory would have pgreap append to another file).
func OpenAppend(path string) (*os.File, error) {
	f, st, err := open(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := oneName(path, st); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
