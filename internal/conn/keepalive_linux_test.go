package conn_test

import (
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgreap/pgreap/internal/conn"
	"github.com/pgreap/pgreap/internal/pgtest"
)

// A Lease bounds both sides of a TCP connection: the server's keepalives
// and tcp_user_timeout (what ends the backend of a client the network
// lost), and pgreap's socket's, shorter; what the user sets wins: libpq's
// keywords on pgreap's side, options on the server's.
func TestLeaseKeepAlives(t *testing.T) {
	t.Parallel()
	c := pgtest.Shared(t)
	tcp := c.TCPDSN("postgres", pgtest.Superuser)
	for _, tc := range []struct {
		name string
		p    conn.Params
		guc  [4]string // tcp_keepalives_idle, _interval, _count, tcp_user_timeout
		sock [4]int    // TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT (ms)
		off  bool      // no keepalives (SO_KEEPALIVE 0): only the user timeout is compared
	}{
		{name: "lease 5s", p: conn.Params{DSN: tcp, Lease: 5 * time.Second},
			guc: [4]string{"1", "1", "4", "5000"}, sock: [4]int{1, 1, 4, 3000}},
		{name: "lease 15s", p: conn.Params{DSN: tcp, Lease: 15 * time.Second},
			guc: [4]string{"3", "3", "4", "15000"}, sock: [4]int{3, 3, 4, 9000}},
		{name: "the user's win", p: conn.Params{Lease: 5 * time.Second,
			DSN: tcp + " keepalives_idle=7 keepalives_count=2 tcp_user_timeout=1500 options='-c tcp_keepalives_idle=9 -c tcp_user_timeout=2500'"},
			guc: [4]string{"9", "1", "4", "2500"}, sock: [4]int{7, 1, 2, 1500}},
		{name: "keepalives off, a user timeout", p: conn.Params{DSN: tcp + " keepalives=0", Lease: 5 * time.Second},
			guc: [4]string{"1", "1", "4", "5000"}, sock: [4]int{0, 0, 0, 3000}, off: true},
		{name: "libpq's keywords without a lease", p: conn.Params{DSN: tcp + " keepalives_idle=6 keepalives_interval=2 keepalives_count=3 tcp_user_timeout=4000"},
			guc: [4]string{"0", "0", "0", "0"}, sock: [4]int{6, 2, 3, 4000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cn := connect(t, tc.p)
			var got [4]string
			for i, name := range []string{"tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout"} {
				if err := cn.QueryRow(pgtest.Context(t), "SELECT pg_catalog.current_setting($1)", name).Scan(&got[i]); err != nil {
					t.Fatal(err)
				}
			}
			// The server's defaults (0) read as the system's values.
			if tc.guc[0] != "0" && got != tc.guc {
				t.Errorf("server: %v, want %v", got, tc.guc)
			}
			raw, err := cn.PgConn().Conn().(*net.TCPConn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var sock [4]int
			var keepalive int
			var serr error
			if err := raw.Control(func(fd uintptr) {
				keepalive, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
				for i, opt := range []int{unix.TCP_KEEPIDLE, unix.TCP_KEEPINTVL, unix.TCP_KEEPCNT, unix.TCP_USER_TIMEOUT} {
					v, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, opt)
					sock[i], serr = v, errors.Join(serr, err)
				}
			}); err != nil || serr != nil {
				t.Fatal(err, serr)
			}
			if tc.off {
				sock[0], sock[1], sock[2] = 0, 0, 0
			}
			if sock != tc.sock || (keepalive == 0) != tc.off {
				t.Errorf("socket: %v, SO_KEEPALIVE %d; want %v, off %v", sock, keepalive, tc.sock, tc.off)
			}
		})
	}
}

// libpq's keepalive keywords are numbers, as libpq reads them.
func TestKeepAliveKeywordsChecked(t *testing.T) {
	t.Parallel()
	_, err := conn.Config(conn.Params{DSN: "host=/tmp keepalives_idle=soon"})
	if err == nil || err.Error() != `connection string: keepalives_idle="soon": not a non-negative integer` {
		t.Fatalf("err %v", err)
	}
}
