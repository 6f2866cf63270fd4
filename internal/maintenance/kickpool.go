package maintenance

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pooler"
	"github.com/pgreap/pgreap/internal/selector"
)

//go:embed sql/databases.sql
var databasesSQL string

// Databases are the server's databases that the globs name (as --db and
// --exclude-db take them), matched by the server as a kick's statement
// matches its sessions.
func Databases(ctx context.Context, conn *pgx.Conn, dbs, exclude []string) ([]string, error) {
	where, args := (&selector.Selector{DB: dbs, ExcludeDB: exclude}).Compile("a", 1)
	sql := strings.Replace(databasesSQL, "/*selection*/ true", "("+where+")", 1)
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("databases: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("databases: %w", err)
	}
	return names, nil
}

// PoolerKill is what a kick does to one of a pooler's databases: KILL (the
// pooler drops its clients and server connections, and pauses it), then
// RESUME, unless it was paused before, by someone else.
type PoolerKill struct {
	Pooler string
	// Database is the pooler's name of it; Datname the server's.
	Database, Datname string
	// Clients are its clients before the KILL.
	Clients []pooler.Client
	// PausedBefore: paused when the kick came; it stays paused.
	PausedBefore bool
	// After the KILL: Left are the clients still connected (a KILL that
	// did not end them); Resumed, whether RESUME was sent.
	Left    []pooler.Client
	Killed  bool
	Resumed bool
}

// PlanKill is what a kick of the server databases dbs does on each
// pooler: every name under which the pooler serves one of them, with its
// clients now.
func PlanKill(ctx context.Context, admins []*pooler.Admin, dbs []string, here *Here) ([]PoolerKill, error) {
	var out []PoolerKill
	for _, a := range admins {
		list, err := a.Databases(ctx)
		if err != nil {
			return nil, err
		}
		clients, err := a.Clients(ctx)
		if err != nil {
			return nil, err
		}
		var served []pooler.Database
		for _, db := range dbs {
			s, err := servedBy(a, list, db, here)
			if err != nil {
				return nil, err
			}
			served = append(served, s...)
		}
		for _, d := range served {
			datname := d.Database
			if datname == "" {
				datname = d.Name
			}
			k := PoolerKill{Pooler: a.Pooler.Name, Database: d.Name, Datname: datname, PausedBefore: d.Paused}
			for _, c := range clients {
				if c.Database == d.Name {
					k.Clients = append(k.Clients, c)
				}
			}
			out = append(out, k)
		}
	}
	return out, nil
}

// Kill sends KILL to each, then looks which of its clients are still
// connected, then RESUMEs the ones that were not paused before; the
// kills come back filled in. RESUME is sent even when ctx is cancelled
// after the KILL: a pooler left paused by a kick is an outage.
func Kill(ctx context.Context, admins []*pooler.Admin, kills []PoolerKill) ([]PoolerKill, error) {
	byName := map[string]*pooler.Admin{}
	for _, a := range admins {
		byName[a.Pooler.Name] = a
	}
	out := slices.Clone(kills)
	var errs []error
	for i := range out {
		k := &out[i]
		a := byName[k.Pooler]
		if err := a.Kill(ctx, k.Database); err != nil && !errors.Is(err, pooler.ErrNoDatabase) {
			errs = append(errs, err)
			continue
		}
		k.Killed = true
		clients, err := a.Clients(context.WithoutCancel(ctx))
		if err != nil {
			errs = append(errs, err)
		}
		for _, c := range k.Clients {
			// A ptr is an address the pooler reuses: the client is the
			// same one only with the same port and connect time.
			if slices.ContainsFunc(clients, func(n pooler.Client) bool {
				return n.Ptr == c.Ptr && n.Port == c.Port && n.Addr == c.Addr && n.ConnectTime.Equal(c.ConnectTime)
			}) {
				k.Left = append(k.Left, c)
			}
		}
		if k.PausedBefore {
			continue
		}
		if err := a.Resume(context.WithoutCancel(ctx), k.Database); err != nil && !errors.Is(err, pooler.ErrNotPaused) {
			errs = append(errs, err)
			continue
		}
		k.Resumed = true
	}
	return out, errors.Join(errs...)
}
