package pgtest

import (
	"bytes"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
)

// Proxy is a TCP proxy on loopback in front of a server, for the faults
// of a network: it forwards bytes both ways until told to stall (stop
// forwarding, keep every connection open, as a dead link or a hung
// middlebox does: a close is held back too), to freeze the connections
// open now (a stall of those flows only: new ones pass, as when a
// middlebox loses its state for them) or to cut (close every
// connection). A trigger does either when a client sends given bytes:
// before they reach the server, or after (the server has the statement;
// its answer never arrives).
type Proxy struct {
	Port int // on 127.0.0.1

	target string
	ln     net.Listener

	mu       sync.Mutex
	cond     *sync.Cond
	stalled  bool
	closed   bool
	conns    map[net.Conn]*link // both ends of a connection share its link
	triggers []*trigger
}

// link is one client's connection through the proxy.
type link struct {
	frozen bool
	// cutOnAnswer: an After trigger that cuts when the server answers.
	cutOnAnswer *trigger
}

// Fault is what a trigger does.
type Fault int

const (
	Stall Fault = iota // stop forwarding; connections stay open
	Cut                // close every connection
)

// When says where a trigger acts on the bytes that fire it.
type When int

const (
	Before When = iota // held back: a cut drops them, a stall forwards them if it ends
	After              // the server gets them; nothing it answers reaches the client
)

type trigger struct {
	pattern []byte
	fault   Fault
	when    When
	fired   chan struct{}
}

// NewProxy starts a proxy in front of the server at target (host:port);
// the test's cleanup closes it and every connection through it.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Port: ln.Addr().(*net.TCPAddr).Port, target: target, ln: ln, conns: map[net.Conn]*link{}}
	p.cond = sync.NewCond(&p.mu)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// ProxyTo starts a proxy in front of the cluster's TCP port.
func ProxyTo(t testing.TB, c *Cluster) *Proxy {
	return NewProxy(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port)))
}

// DSN is a connection string through the proxy.
func (p *Proxy) DSN(db, user string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s user=%s sslmode=disable", p.Port, db, user)
}

// Stall stops forwarding in both directions, on every connection and on
// those still to come (they are accepted, and hang).
func (p *Proxy) Stall() {
	p.mu.Lock()
	p.stalled = true
	p.mu.Unlock()
}

// Freeze stalls the connections open now, both ways and their closes;
// connections made later pass.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	for _, l := range p.conns {
		l.frozen = true
	}
	p.mu.Unlock()
}

// Resume forwards again what a stall or a freeze held back.
func (p *Proxy) Resume() {
	p.mu.Lock()
	p.stalled = false
	for _, l := range p.conns {
		l.frozen = false
	}
	p.cond.Broadcast()
	p.mu.Unlock()
}

// Cut closes every connection through the proxy; new ones are accepted.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutLocked()
}

func (p *Proxy) cutLocked() {
	for c := range p.conns {
		_ = c.Close()
		delete(p.conns, c)
	}
	p.cond.Broadcast()
}

// On arms a fault for the first time a client sends bytes that contain
// pattern (within one read: keep it short); the channel is closed when it
// fired.
func (p *Proxy) On(pattern string, fault Fault, when When) <-chan struct{} {
	tr := &trigger{pattern: []byte(pattern), fault: fault, when: when, fired: make(chan struct{})}
	p.mu.Lock()
	p.triggers = append(p.triggers, tr)
	p.mu.Unlock()
	return tr.fired
}

// Close stops the proxy and closes every connection through it.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.cutLocked()
	p.mu.Unlock()
	_ = p.ln.Close()
}

func (p *Proxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = client.Close()
			_ = server.Close()
			return
		}
		l := &link{}
		p.conns[client], p.conns[server] = l, l
		p.mu.Unlock()
		go p.pipe(client, server, true)
		go p.pipe(server, client, false)
	}
}

// pipe copies src to dst, one read at a time, holding each read (and the
// end of src) while the proxy is stalled or the link frozen, until either
// side is closed.
func (p *Proxy) pipe(src, dst net.Conn, fromClient bool) {
	defer func() {
		p.mu.Lock()
		delete(p.conns, src)
		delete(p.conns, dst)
		p.cond.Broadcast()
		p.mu.Unlock()
		_ = src.Close()
		_ = dst.Close()
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.hold(buf[:n], fromClient, src) {
				return
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			p.mu.Lock()
			p.wait(src)
			p.mu.Unlock()
			return
		}
	}
}

// wait waits, p.mu held, while src's link is stalled or frozen, and says
// whether src is still open.
func (p *Proxy) wait(src net.Conn) bool {
	for {
		l := p.conns[src]
		if l == nil || p.closed {
			return false
		}
		if !p.stalled && !l.frozen {
			return true
		}
		p.cond.Wait()
	}
}

// hold decides about one read, and says whether to forward it: it fires
// the trigger the bytes match, and waits while the proxy is stalled.
func (p *Proxy) hold(b []byte, fromClient bool, src net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.conns[src]
	if l == nil {
		return false
	}
	if fromClient {
		for i, tr := range p.triggers {
			if !bytes.Contains(b, tr.pattern) {
				continue
			}
			p.triggers = append(p.triggers[:i:i], p.triggers[i+1:]...)
			switch {
			case tr.when == Before:
				p.fire(tr)
			case tr.fault == Stall:
				// Stalled before the server can answer; this read still
				// goes through.
				p.fire(tr)
				return true
			default:
				// Cut when the server answers on this connection: it has
				// run the statement.
				l.cutOnAnswer = tr
				return true
			}
			break
		}
	} else if tr := l.cutOnAnswer; tr != nil {
		l.cutOnAnswer = nil
		p.fire(tr)
		return false
	}
	return p.wait(src)
}

// fire does what a trigger says; p.mu is held.
func (p *Proxy) fire(tr *trigger) {
	close(tr.fired) // first: a client that sees the cut sees it fired
	switch tr.fault {
	case Stall:
		p.stalled = true
	case Cut:
		p.cutLocked()
	}
}
