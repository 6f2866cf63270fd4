package watch_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgreap/pgreap/internal/watch"
)

// A peer of the metrics port holds no connection for ever: keep-alive
// connections left idle, one that says nothing and one whose request body
// never comes are closed by the server within its limits; headers over
// the limit are refused.
func TestMetricsServerLimits(t *testing.T) {
	t.Parallel()
	const pol = `
targets:
  - {name: TAG, dsn: "DSN"}
interval: 1s
audit_log: AUDIT
metrics_addr: 127.0.0.1:0
rules:
  - name: slow
    match: {app: [TAG], state: [active], longer_than: 1h}
    action: cancel
`
	lim := watch.ServerLimits{ReadHeader: 500 * time.Millisecond, Read: 500 * time.Millisecond,
		Write: 2 * time.Second, Idle: 500 * time.Millisecond, MaxHeaderBytes: 4 << 10}
	d := startDaemonOpts(t, dsn(t), pol, watch.Options{ServerLimits: lim})

	type peer struct {
		name string
		c    net.Conn
		r    *bufio.Reader
	}
	dial := func(name, request string) peer {
		c, err := net.Dial("tcp", d.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := io.WriteString(c, request); err != nil {
			t.Fatal(err)
		}
		return peer{name, c, bufio.NewReader(c)}
	}
	var peers []peer
	for i := range 20 {
		p := dial(fmt.Sprintf("keep-alive %d", i), "GET /livez HTTP/1.1\r\nHost: pgreap\r\n\r\n")
		resp, err := http.ReadResponse(p.r, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil || resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("%s: %d close=%v %v", p.name, resp.StatusCode, resp.Close, err)
		}
		peers = append(peers, p)
	}
	peers = append(peers,
		dial("silent", ""),
		dial("short body", "POST /livez HTTP/1.1\r\nHost: pgreap\r\nContent-Length: 1000\r\n\r\nshort"))

	big := dial("big headers", "GET /livez HTTP/1.1\r\nHost: pgreap\r\nX-Big: "+strings.Repeat("x", 16<<10)+"\r\n\r\n")
	resp, err := http.ReadResponse(big.r, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("16 KiB of headers: %d, want 431", resp.StatusCode)
	}

	// Closed by the server: reading ends (an answer may come first). The
	// deadline is many times the limits, for a loaded machine; without
	// them, the connections stay open and the deadline passes.
	deadline := time.Now().Add(30 * time.Second)
	var wg sync.WaitGroup
	for _, p := range peers {
		if err := p.c.SetReadDeadline(deadline); err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			if _, err := io.Copy(io.Discard, p.r); errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("%s: still open after 30 s, limits %+v", p.name, lim)
			}
		})
	}
	wg.Wait()
}
