package watch_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgreap/pgreap/internal/pgtest"
	"github.com/pgreap/pgreap/internal/watch"
)

// failoverPolicy: one rule that cancels the test's queries past 2 s, one
// snapshot a second.
const failoverPolicy = `
targets: [{name: TAG, dsn: "DSN"}]
interval: 1s
audit_log: AUDIT
metrics_addr: "off"
rules:
  - name: slow
    match: {app: [TAG], state: [active], longer_than: 2s}
    action: cancel
`

// The leader's network vanishes: replica 1 leads over TCP from a network
// namespace of its own (B) to the server in another (A); replica 2 stands
// by on the host, over the server's unix socket. The link goes down in B:
// no close reaches the server, which without keepalives would keep
// replica 1's backend, and the election lock, for hours. With the lease's
// keepalives the server ends it, replica 2 leads and acts within the
// bound (3 intervals + 15 s), replica 1 gives its connection up, and no
// session is acted on twice (audit of both replicas; and client-side, a
// victim's next query is never cancelled).
func TestLeaderNetworkCut(t *testing.T) {
	t.Parallel()
	link := pgtest.NewLink(t)
	c := pgtest.Own(t, pgtest.Options{Listen: link.AddrA, Exec: link.Exec(link.A),
		HBA: []string{"host all all " + link.AddrB + "/32 trust"}})
	bin := filepath.Join(t.TempDir(), "pgreap")
	build := exec.Command("go", "build", "-o", bin, "github.com/pgreap/pgreap/cmd/pgreap")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	// Replica 1, in B, leads.
	dir := t.TempDir()
	r1 := &daemon{path: filepath.Join(dir, "policy.yaml"), audit: filepath.Join(dir, "audit.jsonl")}
	dsn := fmt.Sprintf("host=%s port=%d dbname=postgres user=%s sslmode=disable connect_timeout=2", link.AddrA, c.Port, pgtest.Superuser)
	if err := os.WriteFile(r1.path, []byte(policyText(t, dsn, r1.audit, failoverPolicy)), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "replica1.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "watch", "-c", r1.path, "--log-format", "json")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := pgtest.InNetNS(link.B, cmd.Start); err != nil {
		t.Fatalf("start replica 1: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("replica 1 log:\n%s", b)
		}
	})
	r1log := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	pgtest.Eventually(t, "replica 1 leading", func() (bool, error) {
		return strings.Contains(r1log(), "leading: this replica acts on the target"), nil
	})

	// Replica 2, on the host, stands by.
	r2 := startDaemon(t, c.DSN("postgres", pgtest.Superuser), failoverPolicy)
	pgtest.Eventually(t, "replica 2 standing by", func() (bool, error) {
		return strings.Contains(r2.logs.String(), "standing by"), nil
	})

	// Sessions to act on, one every 300 ms.
	vs := feedVictims(t, c.DSN("postgres", pgtest.Superuser)+" application_name="+pgtest.Tag(t))
	pgtest.Eventually(t, "replica 1 acting", func() (bool, error) { return len(r1.entries(t)) >= 2, nil })

	cut := time.Now()
	link.Cut(t)
	bound := 3*time.Second + 15*time.Second // 3 intervals + 15 s
	var led time.Duration
	for {
		since := time.Since(cut)
		if led == 0 && testutil.ToFloat64(r2.Metrics().Leader.WithLabelValues(pgtest.Tag(t))) == 1 {
			led = since
		}
		if got := r2.entries(t); len(got) > 0 {
			acted := got[0].Time.Sub(cut)
			t.Logf("after the cut: replica 2 leads in %v, acts in %v (bound %v)", led.Round(time.Millisecond), acted.Round(time.Millisecond), bound)
			if acted > bound {
				t.Errorf("replica 2 acted %v after the cut, over the bound %v", acted, bound)
			}
			break
		}
		if since > bound+10*time.Second {
			t.Fatalf("replica 2 did not act within %v of the cut (leading: %v)", since, led > 0)
		}
		time.Sleep(20 * time.Millisecond)
	}
	pgtest.Eventually(t, "replica 1 giving up its connection", func() (bool, error) {
		for _, l := range strings.Split(r1log(), "\n") {
			var line struct {
				Time time.Time `json:"time"`
				Msg  string    `json:"msg"`
			}
			if json.Unmarshal([]byte(l), &line) == nil && line.Msg == "connection lost" {
				t.Logf("after the cut: replica 1 gives up its connection in %v", line.Time.Sub(cut).Round(time.Millisecond))
				return true, nil
			}
		}
		return false, nil
	})
	pgtest.Eventually(t, "replica 2 acting on 3 sessions", func() (bool, error) { return len(r2.entries(t)) >= 3, nil })
	victims := vs.stop(t)

	// No session acted on twice, by either replica; every cancel audited
	// happened. A signal in flight at the cut is audited by replica 1 as
	// maybe sent ("survived", not verified): the server never ran it
	// (replica 2 then acted), or ran it while replica 1 still held the
	// lock (replica 2 then found nothing to do).
	seen := map[string]string{}
	cancels := map[string]int{}
	for _, v := range victims {
		cancels[fmt.Sprint(v.pid, v.start.UnixMicro())] = v.cancels
		if v.cancels > 1 {
			t.Errorf("session %d cancelled %d times", v.pid, v.cancels)
		}
	}
	for _, r := range []struct {
		name string
		e    []watch.Entry
	}{{"replica 1", r1.entries(t)}, {"replica 2", r2.entries(t)}} {
		for _, e := range r.e {
			k := fmt.Sprint(e.PID, e.BackendStart.UnixMicro())
			if e.Outcome != "cancelled" {
				t.Logf("%s: session %d %s: %s", r.name, e.PID, e.Outcome, e.Detail)
				continue
			}
			if prev, ok := seen[k]; ok {
				t.Errorf("session %d cancelled by %s and by %s", e.PID, prev, r.name)
			}
			seen[k] = r.name
			if cancels[k] != 1 {
				t.Errorf("%s audits session %d cancelled; the client saw %d cancels", r.name, e.PID, cancels[k])
			}
		}
	}
	t.Logf("%d sessions, %d acted on", len(victims), len(seen))
}

// victimFeed opens a tagged session every 300 ms that runs pg_sleep(60)
// once, then a query no rule matches (pg_sleep(1), under the threshold):
// that one cancelled is a session acted on twice.
type victimFeed struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	done   []fedVictim
	errs   []error
}

type fedVictim struct {
	pid     int32
	start   time.Time
	cancels int
}

func feedVictims(t *testing.T, dsn string) *victimFeed {
	ctx, cancel := context.WithCancel(pgtest.Context(t))
	vctx, vcancel := context.WithCancel(pgtest.Context(t))
	f := &victimFeed{cancel: cancel}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		tick := time.NewTicker(300 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				v, err := f.victim(vctx, dsn)
				f.mu.Lock()
				defer f.mu.Unlock()
				if err != nil {
					f.errs = append(f.errs, err)
					return
				}
				f.done = append(f.done, v)
			}()
		}
	}()
	t.Cleanup(func() { cancel(); vcancel(); f.wg.Wait() })
	return f
}

func (f *victimFeed) victim(ctx context.Context, dsn string) (fedVictim, error) {
	var v fedVictim
	cn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return v, err
	}
	defer cn.Close(context.Background())
	if err := cn.QueryRow(ctx, `SELECT pid, backend_start FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid()`).
		Scan(&v.pid, &v.start); err != nil {
		return v, err
	}
	for _, q := range []string{"SELECT pg_catalog.pg_sleep(60)", "SELECT pg_catalog.pg_sleep(1)"} {
		_, err := cn.Exec(ctx, q)
		switch {
		case pgtest.SQLState(err) == "57014":
			v.cancels++
		case err != nil:
			return v, fmt.Errorf("victim %d: %s: %w", v.pid, q, err)
		}
	}
	return v, nil
}

// stop stops opening sessions, waits for those open to be acted on and
// end, and returns them.
func (f *victimFeed) stop(t *testing.T) []fedVictim {
	t.Helper()
	f.cancel()
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := errors.Join(f.errs...); err != nil {
		t.Fatal(err)
	}
	return f.done
}
