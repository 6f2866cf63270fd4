package cluster

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// StandbyOptions tune a standby before it starts.
type StandbyOptions struct {
	// Prefix names the temporary directory (default "pgreap-standby-").
	Prefix string
	// Settings are extra postgresql.conf lines of the standby, name to
	// value (e.g. max_standby_streaming_delay); the rest is the primary's.
	Settings map[string]string
}

// StartStandby starts a hot standby of c that streams from it, in a
// temporary directory of its own, on its own port, run as c's user. The
// base backup is taken in Go with the low-level backup API, as
// pg_basebackup -R would take it (backup_label, standby.signal,
// primary_conninfo): the server binaries pgtest fetches for 12 to 18 are
// initdb, pg_ctl and postgres only, without pg_basebackup. The standby
// streams through a physical replication slot of the primary, made before
// the backup, so no WAL it needs is removed; Stop drops it. The primary
// needs wal_level replica or logical, a free max_wal_senders and
// max_replication_slots (the defaults), and the replication lines Start
// puts in pg_hba.conf. Stop the standby like any cluster, before c.
func (c *Cluster) StartStandby(ctx context.Context, opt StandbyOptions) (*Cluster, error) {
	prefix := opt.Prefix
	if prefix == "" {
		prefix = "pgreap-standby-"
	}
	dir, err := newDir(prefix, c.cred)
	if err != nil {
		return nil, err
	}
	s := &Cluster{Dir: dir, BinDir: c.BinDir, Major: c.Major, cred: c.cred, primary: c,
		// MkdirTemp's random part is digits: a valid slot name, unique
		// as the directory is.
		slot: "pgreap_standby_" + strings.TrimPrefix(filepath.Base(dir), prefix)}
	ok := false
	defer func() {
		if !ok {
			s.abandon()
			_ = s.dropSlot()
		}
	}()
	conninfo := fmt.Sprintf("host=%s port=%d user=%s application_name=%s", Quote(c.Dir), c.Port, Superuser, s.slot)
	// The walreceiver's connection, tried first: a standby that cannot
	// stream never reaches a consistent state (its WAL is on the primary)
	// and pg_ctl start would wait out its timeout.
	rc, err := pgconn.Connect(ctx, conninfo+" replication=true")
	if err != nil {
		return nil, fmt.Errorf("standby: a replication connection to the primary: %w", err)
	}
	rc.Close(context.Background())
	pc, err := pgconn.Connect(ctx, c.DSN("postgres", Superuser)+" application_name=pgreap-standby-backup")
	if err != nil {
		return nil, fmt.Errorf("standby: primary: %w", err)
	}
	defer pc.Close(context.Background())
	label, err := s.backup(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("standby: base backup: %w", err)
	}
	files := map[string]string{
		"backup_label":   label[0],
		"tablespace_map": label[1],
		"standby.signal": "",
	}
	for name, text := range files {
		if name == "tablespace_map" && text == "" {
			continue
		}
		if err := s.writeFile(filepath.Join(s.DataDir(), name), text); err != nil {
			return nil, err
		}
	}
	settings := map[string]string{
		"hot_standby":       "on",
		"primary_conninfo":  "'" + strings.ReplaceAll(conninfo, "'", "''") + "'",
		"primary_slot_name": "'" + s.slot + "'",
	}
	for k, v := range opt.Settings {
		settings[k] = v
	}
	var conf strings.Builder
	conf.WriteString("\n# pgreap standby\n")
	for _, k := range sortedKeys(settings) {
		fmt.Fprintf(&conf, "%s = %s\n", k, settings[k])
	}
	if err := appendFile(filepath.Join(s.DataDir(), "postgresql.conf"), conf.String()); err != nil {
		return nil, err
	}
	if err := s.start(ctx); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

// backup makes the standby's slot on the primary and copies the
// primary's data directory into the standby's between the start and the
// stop of a non-exclusive backup on pc (which must stay open between
// them). It returns the backup_label and tablespace_map the stop returns.
func (s *Cluster) backup(ctx context.Context, pc *pgconn.PgConn) ([2]string, error) {
	start, stop := "SELECT pg_catalog.pg_backup_start('pgreap standby', true)",
		"SELECT labelfile, spcmapfile FROM pg_catalog.pg_backup_stop(false)"
	if s.Major < 15 {
		start, stop = "SELECT pg_catalog.pg_start_backup('pgreap standby', true, false)",
			"SELECT labelfile, spcmapfile FROM pg_catalog.pg_stop_backup(false, false)"
	}
	if err := pc.ExecParams(ctx, "SELECT pg_catalog.pg_create_physical_replication_slot($1, true)",
		[][]byte{[]byte(s.slot)}, nil, nil, nil).Read().Err; err != nil {
		return [2]string{}, err
	}
	if _, err := pc.Exec(ctx, start).ReadAll(); err != nil {
		return [2]string{}, err
	}
	if err := s.copyData(s.primary.DataDir(), s.DataDir()); err != nil {
		return [2]string{}, err
	}
	res, err := pc.Exec(ctx, stop).ReadAll()
	if err != nil {
		return [2]string{}, err
	}
	row := res[0].Rows[0]
	return [2]string{string(row[0]), string(row[1])}, nil
}

// copyData copies a running server's data directory as pg_basebackup
// does: without what the server remakes or a standby must not inherit
// (its pid file, WAL, slots, temporary and shared-memory state). Files
// that go while it copies are skipped: the WAL replayed from the backup's
// start makes the copy consistent.
func (s *Cluster) copyData(from, to string) error {
	emptied := map[string]bool{"pg_wal": true, "pg_replslot": true, "pg_dynshmem": true, "pg_notify": true,
		"pg_serial": true, "pg_snapshots": true, "pg_stat_tmp": true, "pg_subtrans": true}
	skipped := map[string]bool{"postmaster.pid": true, "postmaster.opts": true, "backup_label": true,
		"tablespace_map": true, "standby.signal": true, "recovery.signal": true}
	return filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		dest := filepath.Join(to, rel)
		name := d.Name()
		switch {
		case d.IsDir():
			if err := s.mkdir(dest); err != nil {
				return err
			}
			if emptied[rel] {
				if rel == "pg_wal" {
					if err := s.mkdir(filepath.Join(dest, "archive_status")); err != nil {
						return err
					}
				}
				return fs.SkipDir
			}
			if strings.HasPrefix(name, "pgsql_tmp") {
				return fs.SkipDir
			}
			return nil
		case skipped[rel] || name == "pg_internal.init" || strings.HasPrefix(name, "pgsql_tmp"):
			return nil
		case !d.Type().IsRegular():
			return fmt.Errorf("%s: not a regular file (tablespaces are not copied)", path)
		}
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		return s.writeFile(dest, string(b))
	})
}

// mkdir and writeFile make what the server's user owns, with the modes
// initdb gives.
func (s *Cluster) mkdir(path string) error {
	if err := os.Mkdir(path, 0o700); err != nil {
		return err
	}
	return s.own(path)
}

func (s *Cluster) writeFile(path, text string) error {
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return err
	}
	return s.own(path)
}

func (s *Cluster) own(path string) error {
	if s.cred == nil {
		return nil
	}
	return os.Chown(path, int(s.cred.Uid), int(s.cred.Gid))
}

// dropSlot drops a standby's slot on its primary once the standby is
// down and the walsender that used the slot has gone. A primary that does
// not answer is gone itself, with its slots.
func (s *Cluster) dropSlot() error {
	if s.primary == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pc, err := pgconn.Connect(ctx, s.primary.DSN("postgres", Superuser)+" application_name=pgreap-standby-stop")
	if err != nil {
		return nil
	}
	defer pc.Close(context.Background())
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		res := pc.ExecParams(ctx, `SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots
		   WHERE slot_name = $1 AND NOT active`, [][]byte{[]byte(s.slot)}, nil, nil, nil).Read()
		if res.Err != nil {
			return fmt.Errorf("drop slot %s on the primary: %w", s.slot, res.Err)
		}
		left := pc.ExecParams(ctx, "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
			[][]byte{[]byte(s.slot)}, nil, nil, nil).Read()
		if left.Err != nil {
			return fmt.Errorf("drop slot %s on the primary: %w", s.slot, left.Err)
		}
		if len(left.Rows) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drop slot %s on the primary: still active: %w", s.slot, ctx.Err())
		case <-time.After(delay):
		}
	}
}

// WaitReplay waits until c, a standby of primary, has replayed the WAL
// that primary had written when WaitReplay began. It takes the primary's
// insert position (pg_current_wal_insert_lsn), not pg_current_wal_lsn: the
// clusters commit with synchronous_commit off, so the commit of a
// transaction that has returned may not be written yet.
func (c *Cluster) WaitReplay(ctx context.Context, primary *Cluster) error {
	pc, err := pgconn.Connect(ctx, primary.DSN("postgres", Superuser)+" application_name=pgreap-wait-replay")
	if err != nil {
		return fmt.Errorf("wait replay: primary: %w", err)
	}
	rows, err := pc.Exec(ctx, "SELECT pg_catalog.pg_current_wal_insert_lsn()").ReadAll()
	pc.Close(context.Background())
	if err != nil {
		return fmt.Errorf("wait replay: primary: %w", err)
	}
	target := string(rows[0].Rows[0][0])
	sc, err := pgconn.Connect(ctx, c.DSN("postgres", Superuser)+" application_name=pgreap-wait-replay")
	if err != nil {
		return fmt.Errorf("wait replay: standby: %w", err)
	}
	defer sc.Close(context.Background())
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		res := sc.ExecParams(ctx, "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.pg_last_wal_replay_lsn() >= $1::pg_catalog.pg_lsn, pg_catalog.pg_last_wal_replay_lsn()",
			[][]byte{[]byte(target)}, nil, nil, nil).Read()
		if res.Err != nil {
			return fmt.Errorf("wait replay: standby: %w", res.Err)
		}
		row := res.Rows[0]
		if string(row[0]) != "t" {
			return fmt.Errorf("wait replay: %s is not a standby", c.Dir)
		}
		if string(row[1]) == "t" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait replay: at %s, waiting for %s: %w", row[2], target, ctx.Err())
		case <-time.After(delay):
		}
	}
}
