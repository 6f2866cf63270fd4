package maintenance

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/ownfile"
)

// Record is what drain writes before it changes anything: the database's
// settings as they were, so that undrain can restore exactly them, even
// after the drain was killed at any moment.
type Record struct {
	Host             string    `json:"host"`
	Port             uint16    `json:"port"`
	Database         string    `json:"database"`
	AllowConnections bool      `json:"datallowconn"`
	ConnectionLimit  int32     `json:"datconnlimit"`
	RecordedAt       time.Time `json:"recorded_at"`
	// Poolers are the drain's pauses of the database on PgBouncers, each
	// recorded before its PAUSE is sent: undrain resumes exactly those
	// that are its own (PoolerPause.Ours).
	Poolers []PoolerPause `json:"poolers,omitempty"`
	// RestoredAt is set by undrain once the settings are back; the
	// record stays, so a second undrain knows there is nothing to do.
	RestoredAt *time.Time `json:"restored_at,omitempty"`
}

// Records is where drain records live: $PGREAP_STATE_DIR, else
// $XDG_STATE_HOME/pgreap/drain, else ~/.local/state/pgreap/drain. A local
// file of the user who drained, because it must outlive the drain process
// (SIGKILL) and a lost connection, and pgreap creates nothing in the
// database.
func Records() (string, error) {
	if d := os.Getenv("PGREAP_STATE_DIR"); d != "" {
		return d, nil
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "pgreap", "drain"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no place for drain records: %w (set PGREAP_STATE_DIR)", err)
	}
	return filepath.Join(home, ".local", "state", "pgreap", "drain"), nil
}

// RecordPath is the record of a database on a server (host and port as
// pgreap connected to them).
func RecordPath(dir, host string, port uint16, db string) string {
	name := url.PathEscape(host) + "_" + strconv.Itoa(int(port)) + "_" + url.PathEscape(db) + ".json"
	return filepath.Join(dir, name)
}

// ErrBusy: another drain or undrain of the database runs on this host.
var ErrBusy = errors.New("another pgreap drain or undrain of it is running on this host")

// LockRecord takes the record's lock, held until unlock (or the process's
// end, however it ends: the kernel drops a dead process's locks). One
// drain or undrain of a database at a time: a second drain would take
// the first one's pauses, still waiting, for its own, and roll them back
// (and the first would then end a transaction for a pause already lifted).
// It is ErrBusy when another process holds it.
//
// The lock names the database by port and name only, not by host: one
// server is reached under several names (127.0.0.1, localhost, its socket
// directory), and each has a record of its own (Elsewhere finds the
// others). Two servers on different hosts with the same port and database
// name cannot be drained from one host at once: the second is ErrBusy,
// nothing done, the safe side.
func LockRecord(dir string, port uint16, db string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := ownfile.Dir(dir); err != nil {
		return nil, fmt.Errorf("drain records' directory %w", err)
	}
	f, err := ownfile.OpenAppend(filepath.Join(dir, strconv.Itoa(int(port))+"_"+url.PathEscape(db)+".lock"))
	if err != nil {
		return nil, fmt.Errorf("drain record's lock %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, ErrBusy
		}
		return nil, fmt.Errorf("drain record's lock: %w", err)
	}
	return func() { f.Close() }, nil
}

// Elsewhere is a drain of database db on port not undone yet, recorded
// under another host name than path's (the same server reached as
// 127.0.0.1, localhost or its socket has a record per name), or nil.
func Elsewhere(path string, port uint16, db string) *Record {
	others, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "*_"+strconv.Itoa(int(port))+"_"+url.PathEscape(db)+".json"))
	for _, o := range others {
		if o == path {
			continue
		}
		if r, err := ReadRecord(o); err == nil && r.RestoredAt == nil && r.Database == db && r.Port == port {
			return r
		}
	}
	return nil
}

// ReadRecord reads a record; an error wrapping os.ErrNotExist when there
// is none, ownfile.ErrNotOwn when the record or its directory is not the
// user's own: a record another user could plant would have drain keep,
// and undrain restore, settings of their choosing.
func ReadRecord(path string) (*Record, error) {
	if err := ownfile.Dir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("drain records' directory %w", err)
	}
	b, err := ownfile.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("drain record %w", err)
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("drain record %s: %w", path, err)
	}
	if err := CheckPauses(r.Poolers); err != nil {
		return nil, fmt.Errorf("drain record %s: %w: edited? (pgreap acts only on what it recorded)", path, err)
	}
	return &r, nil
}

// WriteRecord writes a record (0600, its directory 0700) durably: to a temporary file, synced, renamed
// over the record, and the directory synced, so that a crash leaves either
// the old record or the new one, never half of one.
func WriteRecord(path string, r *Record) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := ownfile.Dir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("drain records' directory %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".record-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}

// Settings are a database's connection settings as pg_database has them.
type Settings struct {
	AllowConnections bool
	ConnectionLimit  int32
	// MayAlter: the role is a superuser or the database's owner, the
	// privilege ALTER DATABASE needs.
	MayAlter bool
}

// ErrNoDatabase: no database of that name.
var ErrNoDatabase = errors.New("no such database")

//go:embed sql/settings.sql
var settingsSQL string

// ReadSettings reads a database's connection settings.
func ReadSettings(ctx context.Context, conn *pgx.Conn, db string) (*Settings, error) {
	var s Settings
	err := conn.QueryRow(ctx, settingsSQL, db).Scan(&s.AllowConnections, &s.ConnectionLimit, &s.MayAlter)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("database %q: %w", db, ErrNoDatabase)
	}
	if err != nil {
		return nil, fmt.Errorf("database %q: %w", db, err)
	}
	return &s, nil
}

// ErrStandby: the server is a hot standby, where drain and undrain have
// nothing to change: pg_database is the primary's, replicated (a standby
// refuses ALTER DATABASE), so a block set on the primary reaches every
// standby by replication, and is lifted on them the same way.
var ErrStandby = errors.New("standby")

// Primary is ErrStandby, wrapped with what to do instead of verb ("drain"
// or "undrain"), when conn's server is in recovery. Drain and undrain ask
// it before they record, lock or change anything.
func Primary(ctx context.Context, conn *pgx.Conn, verb string) error {
	var standby bool
	if err := conn.QueryRow(ctx, "SELECT pg_catalog.pg_is_in_recovery()").Scan(&standby); err != nil {
		return fmt.Errorf("is the server a standby: %w", err)
	}
	if !standby {
		return nil
	}
	what := "the block reaches"
	if verb == "undrain" {
		what = "the restored settings reach"
	}
	return fmt.Errorf("%w: %s on the primary; %s every standby by replication", ErrStandby, verb, what)
}

// Block refuses new connections to the database, superusers' included
// (ALLOW_CONNECTIONS false; CONNECTION LIMIT 0 would let superusers in).
// On a standby it is ErrStandby, nothing sent.
func Block(ctx context.Context, conn *pgx.Conn, db string) error {
	if err := Primary(ctx, conn, "drain"); err != nil {
		return err
	}
	_, err := conn.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" WITH ALLOW_CONNECTIONS false")
	if err != nil {
		return fmt.Errorf("block connections to %q: %w", db, err)
	}
	return nil
}

// Restore sets the database's connection settings to the recorded ones.
// On a standby it is ErrStandby, nothing sent.
func Restore(ctx context.Context, conn *pgx.Conn, db string, allow bool, limit int32) error {
	if err := Primary(ctx, conn, "undrain"); err != nil {
		return err
	}
	// Both are literals pgreap formats itself (a boolean and an integer):
	// ALTER DATABASE takes no parameters.
	sql := fmt.Sprintf("ALTER DATABASE %s WITH ALLOW_CONNECTIONS %t CONNECTION LIMIT %d", pgx.Identifier{db}.Sanitize(), allow, limit)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("restore %q: %w", db, err)
	}
	return nil
}
