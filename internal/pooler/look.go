package pooler

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"
)

// Link is what a pooler says of one of its server connections: the backend
// it reaches, and the client it serves now, if any.
type Link struct {
	Pooler string
	// Served: a client uses the server connection now. Otherwise it is
	// idle in the pool, and the client fields are empty.
	Served bool
	// ClientAddr is the client's address as the pooler saw it; "" for a
	// client on the pooler's unix socket.
	ClientAddr      string
	ClientPort      int
	ApplicationName string
	// User is the client's user (the pool's, when no client is served).
	User     string
	PoolMode string

	// The server connection: the backend's pid, the database on the
	// server, the pooler's end of it (the backend's client_port, 0 over a
	// socket) and when the pooler opened it.
	PID         int32
	Datname     string
	Alias       string // the pooler's name of the database
	LocalPort   int
	ConnectTime time.Time
	State       string // the server connection's state in the pooler: active, idle, used, ...

	// Unknown: the backend's state changed after the pooler was asked, so
	// the client it serves now may be another than the one the pooler
	// named; the client fields are then empty. Set by the snapshot that
	// attaches the link to its backend (activity.Pooled), never by Take.
	Unknown bool
}

// Describe names the client for people: "pooled client 10.1.2.3:51234
// (app report, user alice) via pgb1:6432", "idle in the pool of
// pgb1:6432", or, when it is Unknown, only the pooler.
func (k *Link) Describe() string {
	switch {
	case k.Unknown:
		return "a server connection of " + k.Pooler + " (its client changed since the pooler was asked)"
	case !k.Served:
		return "idle in the pool of " + k.Pooler
	}
	addr := "local socket"
	if k.ClientAddr != "" {
		addr = net.JoinHostPort(k.ClientAddr, strconv.Itoa(k.ClientPort))
	}
	return fmt.Sprintf("pooled client %s (app %q, user %s) via %s", addr, k.ApplicationName, k.User, k.Pooler)
}

// Look is what every pooler said at one moment: their server connections,
// each with the client it serves, and the clients that wait.
type Look struct {
	links map[int32][]Link
	// servers counts each pooler's server connections (logged in) by the
	// pooler's name of their database.
	servers map[[2]string]int
	// Clients are every pooler's clients of each server database, by
	// pooler name.
	Clients map[string][]Client
	waiting map[string]int
	// Databases are the databases each pooler serves, by pooler name.
	Databases map[string][]Database
}

// Take asks each pooler, in parallel, for its servers, clients, pools and
// databases. One pooler that cannot be asked fails the whole look: a
// selection by client made without it would judge its backends by the
// pooler's own address.
func Take(ctx context.Context, admins []*Admin) (*Look, error) {
	type answer struct {
		servers []Server
		clients []Client
		pools   []Pool
		dbs     []Database
		err     error
	}
	answers := make([]answer, len(admins))
	var wg sync.WaitGroup
	for i, a := range admins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			an := &answers[i]
			if an.dbs, an.err = a.Databases(ctx); an.err != nil {
				return
			}
			if an.servers, an.err = a.Servers(ctx); an.err != nil {
				return
			}
			if an.clients, an.err = a.Clients(ctx); an.err != nil {
				return
			}
			an.pools, an.err = a.Pools(ctx)
		}()
	}
	wg.Wait()
	l := &Look{links: map[int32][]Link{}, servers: map[[2]string]int{}, Clients: map[string][]Client{}, waiting: map[string]int{}, Databases: map[string][]Database{}}
	for i, a := range admins {
		an := answers[i]
		if an.err != nil {
			return nil, an.err
		}
		name := a.Pooler.Name
		l.Databases[name] = an.dbs
		// A pooler's database is an alias of one on the server.
		onServer := map[string]string{}
		for _, d := range an.dbs {
			onServer[d.Name] = d.Database
			if d.Database == "" {
				onServer[d.Name] = d.Name
			}
		}
		real := func(alias string) string {
			if db, ok := onServer[alias]; ok {
				return db
			}
			return alias
		}
		mode := map[[2]string]string{}
		for _, p := range an.pools {
			mode[[2]string{p.Database, p.User}] = p.PoolMode
			if p.Database != AdminDB {
				l.waiting[real(p.Database)] += p.ClWaiting
			}
		}
		byPtr := map[string]Client{}
		for _, c := range an.clients {
			if c.Database == AdminDB {
				continue
			}
			byPtr[c.Ptr] = c
			l.Clients[name] = append(l.Clients[name], c)
		}
		for _, s := range an.servers {
			if s.RemotePID == 0 {
				continue // still logging in
			}
			l.servers[[2]string{name, s.Database}]++
			k := Link{
				Pooler: name, User: s.User, PoolMode: mode[[2]string{s.Database, s.User}],
				PID: s.RemotePID, Datname: real(s.Database), Alias: s.Database, ConnectTime: s.ConnectTime, State: s.State,
			}
			if s.LocalAddr != "unix" {
				k.LocalPort = s.LocalPort
			}
			if c, ok := byPtr[s.Link]; ok && s.Link != "" {
				k.Served = true
				k.User = c.User
				k.ApplicationName = c.ApplicationName
				k.ClientPort = c.Port
				if c.Addr != "unix" {
					k.ClientAddr = c.Addr
				}
			}
			l.links[s.RemotePID] = append(l.links[s.RemotePID], k)
		}
	}
	return l, nil
}

// linkWindow is how far apart a pooler's connect_time (whole seconds) and
// the backend's backend_start may be for the one to be the other: the
// pooler stamps the connection before the server forks the backend.
const linkWindow = 10 * time.Second

// Find is the pooler's server connection that is the backend (pid,
// clientPort, backendStart) of database datname, or nil. A pid alone could
// be another server's backend (a pooler may serve several) or an earlier
// backend with the same pid: over TCP the pooler's end of the connection
// must be the backend's client_port; over a socket (or when the server
// hides the port from us) the pooler must have opened it when the backend
// started. A NAT between pooler and server that rewrites ports hides the
// link: such a backend is judged by its own values.
func (l *Look) Find(pid int32, clientPort int, backendStart time.Time, datname string) *Link {
	if l == nil {
		return nil
	}
	for i := range l.links[pid] {
		k := &l.links[pid][i]
		if k.Datname != datname {
			continue
		}
		switch {
		case k.LocalPort != 0 && clientPort > 0:
			// Both ends over TCP: the pooler's port is the backend's.
			if k.LocalPort == clientPort {
				return k
			}
		case (k.LocalPort == 0) != (clientPort == -1) && clientPort != 0:
			// One over a socket, the other over TCP: not one connection.
		case !k.ConnectTime.IsZero() && !backendStart.IsZero() && opened(k.ConnectTime, backendStart):
			// Both over a socket (or the port hidden from us): by when
			// the pooler opened it.
			return k
		}
	}
	return nil
}

// opened reports whether a pooler that stamped a connection connect (whole
// seconds) opened the backend that started at start. A stamp in a zone
// pgreap does not know (the pooler's host is in another) is off by that
// zone's offset, a whole number of quarter hours (at most a day): it is
// compared modulo a quarter hour.
func opened(connect, start time.Time) bool {
	d := start.Sub(connect)
	if !zoneKnown(connect) {
		if d < -26*time.Hour || d > 26*time.Hour {
			return false
		}
		d = ((d+2*time.Second)%(15*time.Minute)+15*time.Minute)%(15*time.Minute) - 2*time.Second
	}
	return d > -2*time.Second && d < linkWindow
}

// PIDs are the pids of every server connection the poolers named.
func (l *Look) PIDs() []int32 {
	if l == nil {
		return nil
	}
	pids := make([]int32, 0, len(l.links))
	for pid := range l.links {
		pids = append(pids, pid)
	}
	return pids
}

// Links are the pooler's server connections to its database alias.
func (l *Look) Links(pooler, alias string) []Link {
	if l == nil {
		return nil
	}
	var out []Link
	for _, ks := range l.links {
		for _, k := range ks {
			if k.Pooler == pooler && k.Alias == alias {
				out = append(out, k)
			}
		}
	}
	return out
}

// Servers is how many server connections the pooler named pooler has to
// its database alias (its name of it), logged in.
func (l *Look) Servers(pooler, alias string) int {
	if l == nil {
		return 0
	}
	return l.servers[[2]string{pooler, alias}]
}

// Waiting is how many clients wait in the poolers for a server connection
// to database datname ("" for all databases).
func (l *Look) Waiting(datname string) int {
	if l == nil {
		return 0
	}
	if datname != "" {
		return l.waiting[datname]
	}
	n := 0
	for _, w := range l.waiting {
		n += w
	}
	return n
}
