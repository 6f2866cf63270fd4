package conn

import (
	"fmt"
	"net"
	"strconv"
	"time"
)

// keepAlive is how pgreap's side of a TCP connection finds a silent peer:
// libpq's keepalives, keepalives_idle, keepalives_interval,
// keepalives_count and tcp_user_timeout; a zero field is unset.
type keepAlive struct {
	off                  bool // keepalives=0
	idle, interval       time.Duration
	count                int
	userTimeout          time.Duration
	userTimeoutSet, used bool
}

// libpqKeepAlive takes libpq's client-side keepalive keywords off the
// startup packet (pgx would send them to the server, which refuses
// unknown parameters) and reads them as libpq does.
func libpqKeepAlive(rp map[string]string) (keepAlive, error) {
	var ka keepAlive
	for _, k := range []string{"keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout"} {
		v, ok := rp[k]
		if !ok {
			continue
		}
		delete(rp, k)
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return ka, fmt.Errorf("connection string: %s=%q: not a non-negative integer", k, v)
		}
		ka.used = true
		switch k {
		case "keepalives":
			ka.off = n == 0
		case "keepalives_idle":
			ka.idle = time.Duration(n) * time.Second
		case "keepalives_interval":
			ka.interval = time.Duration(n) * time.Second
		case "keepalives_count":
			ka.count = n
		case "tcp_user_timeout":
			ka.userTimeout, ka.userTimeoutSet = time.Duration(n)*time.Millisecond, true
		}
	}
	return ka, nil
}

// leaseKeepAlive are the settings that give up a silent peer within about
// lease: probes after lease/5 of silence, every lease/5 (at least a
// second: the settings count in seconds), four of them; and a TCP user
// timeout that gives up unacknowledged data, or unanswered probes, after
// lease on the server's side and 3/5 of it on pgreap's, so that pgreap
// gives a connection up before the server does.
func leaseKeepAlive(lease time.Duration) (idle time.Duration, count int, server, client time.Duration) {
	idle = max(lease/5, time.Second).Truncate(time.Second)
	return idle, 4, lease, lease * 3 / 5
}

// withLease fills what the user did not set with the settings of lease.
func (ka keepAlive) withLease(lease time.Duration) keepAlive {
	idle, count, _, client := leaseKeepAlive(lease)
	if ka.idle == 0 {
		ka.idle = idle
	}
	if ka.interval == 0 {
		ka.interval = idle
	}
	if ka.count == 0 {
		ka.count = count
	}
	if !ka.userTimeoutSet {
		ka.userTimeout = client
	}
	ka.used = true
	return ka
}

// dialer dials with these keepalives (for a TCP connection; a unix socket
// has none).
func (ka keepAlive) dialer() *net.Dialer {
	d := &net.Dialer{Control: userTimeoutControl(ka.userTimeout)}
	if ka.off {
		d.KeepAlive = -1
		return d
	}
	d.KeepAliveConfig = net.KeepAliveConfig{Enable: true, Idle: ka.idle, Interval: ka.interval, Count: ka.count}
	if ka.idle == 0 {
		d.KeepAliveConfig.Idle = -1 // the system's
	}
	if ka.interval == 0 {
		d.KeepAliveConfig.Interval = -1
	}
	if ka.count == 0 {
		d.KeepAliveConfig.Count = -1
	}
	return d
}
