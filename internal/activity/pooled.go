package activity

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgreap/pgreap/internal/pooler"
)

// Pooled is what the poolers in front of the server said of its backends
// at one moment: for each backend that is a server connection of one, by
// (pid, backend_start), the client it served then. A snapshot taken right
// after is matched against it (Attach), and so are the selections that
// choose by client (package selector), in the snapshot and again in the
// signalling statement.
//
// Two systems cannot be asked in one instant. A server connection may be
// handed to another client after the pooler was asked: the state of its
// backend then changes (the new client's first statement, or the
// server_reset_query of a session pool). So a backend whose state changed
// after Asked is not known to serve the client named (Link.Unknown), and
// no selection by client chooses it.
type Pooled struct {
	// Asked is the server's clock just before the poolers were asked.
	Asked time.Time
	// Look is what the poolers said (clients waiting, databases).
	Look  *pooler.Look
	links map[backend]*pooler.Link
	// seen: the poolers' server connections' pids found on this server
	// with their database, whether or not pgreap's role may see more of
	// them (backend_start, client_port) to tell the link.
	seen map[seenKey]bool
}

type seenKey struct {
	pid     int32
	datname string
}

// backend names one backend: pids are reused.
type backend struct {
	pid   int32
	start int64 // backend_start in microseconds: a time.Time key would compare its zone too
}

// TakePooled asks each pooler which client each of its server connections
// serves, and finds those backends on the server by pid, client_port and
// start time (pooler.Look.Find). Nil admins: no poolers, a nil Pooled.
func TakePooled(ctx context.Context, conn *pgx.Conn, admins []*pooler.Admin) (*Pooled, error) {
	if len(admins) == 0 {
		return nil, nil
	}
	p := &Pooled{links: map[backend]*pooler.Link{}, seen: map[seenKey]bool{}}
	if err := conn.QueryRow(ctx, pooledAskedSQL).Scan(&p.Asked); err != nil {
		return nil, fmt.Errorf("poolers: %w", err)
	}
	look, err := pooler.Take(ctx, admins)
	if err != nil {
		return nil, err
	}
	p.Look = look
	rows, err := conn.Query(ctx, pooledSQL, look.PIDs())
	if err != nil {
		return nil, fmt.Errorf("poolers: %w", err)
	}
	var (
		pid     int32
		start   pgtype.Timestamptz
		port    pgtype.Int4
		datname string
	)
	_, err = pgx.ForEachRow(rows, []any{&pid, &start, &port, &datname}, func() error {
		p.seen[seenKey{pid, datname}] = true
		if k := look.Find(pid, int(port.Int32), start.Time, datname); k != nil && start.Valid {
			p.links[backend{pid, start.Time.UnixMicro()}] = k
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("poolers: %w", err)
	}
	return p, nil
}

// Serves says how many server connections the pooler named pooler has to
// its database alias, and how many of them may be backends of this
// server: a backend of that pid and database is here (pgreap's role may
// not see enough of it to tell the link, but another server's is not).
func (p *Pooled) Serves(pooler, alias string) (servers, here int) {
	if p == nil {
		return 0, 0
	}
	for _, k := range p.Look.Links(pooler, alias) {
		if p.seen[seenKey{k.PID, k.Datname}] {
			here++
		}
	}
	return p.Look.Servers(pooler, alias), here
}

// Link is the pooler's link of a session seen after the poolers were
// asked, or nil for a direct client (or no poolers). When the session's
// state changed after they were asked, the link's client is Unknown.
func (p *Pooled) Link(s *Session) *pooler.Link {
	if p == nil || s.IsPrepared() {
		return nil
	}
	k := p.links[backend{s.PID, s.BackendStart.UnixMicro()}]
	if k == nil {
		return nil
	}
	l := *k
	if !p.Known(s) {
		l.Unknown = true
		l.ClientAddr, l.ClientPort, l.ApplicationName, l.User = "", 0, "", ""
	}
	return &l
}

// Known reports whether the session's current state began before the
// poolers were asked: the client they named is then the one it serves.
// StateChange is the zero time when the server does not show it to us.
func (p *Pooled) Known(s *Session) bool {
	return !s.StateChange.IsZero() && !s.StateChange.After(p.Asked)
}

// Attach sets the Pooler of each session of the snapshot, taken right
// after p, and records p in it (nil p: none).
func (p *Pooled) Attach(snap *Snapshot) {
	if p == nil {
		return
	}
	snap.Pooled = p
	for i := range snap.Sessions {
		snap.Sessions[i].Pooler = p.Link(&snap.Sessions[i])
	}
}

// Facts are the links as bound arrays, one element per backend, for a
// statement that judges sessions by their pooled client (the selector's
// predicate): a client on the pooler's socket has a NULL address, a server
// connection that serves no client NULL client facts.
type Facts struct {
	Asked       time.Time
	PIDs        []int32
	Starts      []time.Time
	Served      []bool
	Addrs       []*string
	Apps, Users []*string
}

// Facts are the links as bound arrays; the zero Facts for no links.
func (p *Pooled) Facts() Facts {
	if p == nil {
		return Facts{}
	}
	f := Facts{Asked: p.Asked}
	for b, k := range p.links {
		f.PIDs = append(f.PIDs, b.pid)
		f.Starts = append(f.Starts, time.UnixMicro(b.start).UTC())
		f.Served = append(f.Served, k.Served)
		var addr, app, user *string
		if k.Served {
			if a, err := netip.ParseAddr(k.ClientAddr); err == nil {
				s := a.String()
				addr = &s
			}
			app, user = &k.ApplicationName, &k.User
		}
		f.Addrs, f.Apps, f.Users = append(f.Addrs, addr), append(f.Apps, app), append(f.Users, user)
	}
	return f
}
