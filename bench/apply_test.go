package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgreap/pgreap/internal/pgtest"
)

// applyLive is how many of a plan's sessions are live idle sessions of the
// cluster; the server holds them (and so as many backends) throughout.
const applyLive = 1000

// applySizes are the plan sizes, in sessions, timed in every iteration.
var applySizes = []int{5000, 10000, 20000}

// floorApplySQL judges a plan's sessions by identity and application_name
// against one read of pg_stat_activity, joined by pid: the least a tool
// that carries out a plan can ask of the server. $1 pids, $2 backend_start,
// $3 application_name as planned.
const floorApplySQL = `SELECT c.n, a.pid IS NOT NULL AND a.application_name = c.app AS same
  FROM ROWS FROM (pg_catalog.unnest($1::integer[]), pg_catalog.unnest($2::timestamptz[]), pg_catalog.unnest($3::text[]))
       WITH ORDINALITY AS c(pid, backend_start, app, n)
  LEFT JOIN pg_catalog.pg_stat_activity AS a ON a.pid = c.pid AND a.backend_start = c.backend_start`

// BenchmarkApply carries out plans of 5,000, 10,000 and 20,000 sessions
// with `pgreap apply`, to show that its time grows in proportion to the
// plan (linear), against a floor in the same run. The cluster holds 1000
// idle sessions (pgx, application_name apply-live) throughout; every plan
// names those 1000 by their pids with another backend_start (so apply
// judges them against the live sessions and leaves them alone: changed,
// pid reused, and the next run finds them again), and the rest by pids no
// backend can have (above the kernel's pid_max: gone).
// Two sub-benchmarks:
//
//	plan=pid  a plan made by pid (no selection): every session is judged
//	          on the statement's one read of pg_stat_activity.
//	plan=app  a plan made with --app (a selection on application_name,
//	          which a session can change): every session is read afresh at
//	          its own signal, a copy of the server's whole status array.
//
// Per iteration and plan size, in an order that alternates:
//
//	pgreap  `pgreap apply PLAN -o json`, a fresh process, timed from start
//	        to exit; exit status 3, its JSON N rows: 1000 changed (pid
//	        reused), the rest gone; the 1000 sessions still there
//	        afterwards.
//	floor   in the benchmark process: read the plan with encoding/json,
//	        a fresh pgx connection, one statement that judges every
//	        session by identity and application_name (floorApplySQL),
//	        the results written as JSON; timed from reading the file to
//	        closing the connection.
//
// Metrics, per sub-benchmark (ns/op is ms/pgreap at 20,000):
//
//	ms/pgreap-N   mean wall time of pgreap at N sessions
//	ms/floor-N    mean wall time of the floor at N sessions
//	ratio         ms/pgreap-20000 / ms/floor-20000
//	scaling       the time per session at 20,000 over the time per session
//	              at 5,000: 1 is linear, 4 quadratic (fixed costs, such
//	              as starting the process, make it less than 1)
//	scaling/floor the same for the floor
func BenchmarkApply(b *testing.B) {
	bin := buildPgreap(b)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{
		MaxConnections: applyLive + 100,
		Settings:       map[string]string{"shared_buffers": "32MB"},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := c.Stop(); err != nil {
			b.Logf("stop cluster: %v", err)
		}
	})
	cfg, err := pgx.ParseConfig(c.DSN("postgres", pgtest.Superuser))
	if err != nil {
		b.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	live := cfg.Copy()
	live.RuntimeParams["application_name"] = "apply-live"
	conns := openVictims(b, live, applyLive)
	b.Cleanup(func() { closeAll(conns) })
	a := &applyBench{
		bin: bin,
		env: append([]string{"PATH=/usr/bin:/bin", "HOME=" + os.Getenv("HOME")}, c.Env()...),
		cfg: cfg,
		dir: b.TempDir(),
	}
	for _, kind := range []string{"pid", "app"} {
		b.Run("plan="+kind, func(b *testing.B) { a.bench(b, kind) })
	}
}

type applyBench struct {
	bin string
	env []string
	cfg *pgx.ConnConfig
	dir string
}

// bench times apply and the floor on plans of every size.
func (a *applyBench) bench(b *testing.B, kind string) {
	files := map[int]string{}
	for _, n := range applySizes {
		files[n] = a.plan(b, kind, n)
	}
	pgreapTimes := map[int][]time.Duration{}
	floorTimes := map[int][]time.Duration{}
	i := 0
	for b.Loop() {
		var line []string
		for _, n := range applySizes {
			runs := []func(){
				func() { pgreapTimes[n] = append(pgreapTimes[n], a.pgreap(b, files[n], n)) },
				func() { floorTimes[n] = append(floorTimes[n], a.floor(b, files[n], n)) },
			}
			if i%2 == 1 {
				runs[0], runs[1] = runs[1], runs[0]
			}
			for _, run := range runs {
				run()
			}
			line = append(line, fmt.Sprintf("%d: pgreap %.1f ms, floor %.1f ms", n,
				float64(pgreapTimes[n][i])/float64(time.Millisecond), float64(floorTimes[n][i])/float64(time.Millisecond)))
		}
		b.Logf("iteration %d: %s", i, strings.Join(line, "; "))
		i++
	}
	first, last := applySizes[0], applySizes[len(applySizes)-1]
	for _, n := range applySizes {
		b.ReportMetric(meanMS(pgreapTimes[n]), fmt.Sprintf("ms/pgreap-%d", n))
		b.ReportMetric(meanMS(floorTimes[n]), fmt.Sprintf("ms/floor-%d", n))
	}
	perSession := func(times map[int][]time.Duration, n int) float64 { return meanMS(times[n]) / float64(n) }
	b.ReportMetric(meanMS(pgreapTimes[last])*float64(time.Millisecond), "ns/op")
	b.ReportMetric(meanMS(pgreapTimes[last])/meanMS(floorTimes[last]), "ratio")
	b.ReportMetric(perSession(pgreapTimes, last)/perSession(pgreapTimes, first), "scaling")
	b.ReportMetric(perSession(floorTimes, last)/perSession(floorTimes, first), "scaling/floor")
	b.Logf("%d iterations; median ms at %d / %d: pgreap %.1f / %.1f, floor %.1f / %.1f", i, first, last,
		medianMS(pgreapTimes[first]), medianMS(pgreapTimes[last]), medianMS(floorTimes[first]), medianMS(floorTimes[last]))
}

// plan writes a plan of n sessions: the live ones (with another
// backend_start), then pids no backend has. It starts from the plan
// pgreap itself prints, so the file is one apply reads.
func (a *applyBench) plan(b *testing.B, kind string, n int) string {
	b.Helper()
	args := []string{"terminate", "--app", "apply-live", "--dry-run", "-o", "json"}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(a.bin, args...)
	cmd.Env = a.env
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		b.Fatalf("pgreap %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	rows := lines[1 : len(lines)-1] // between [ and ]
	if len(rows) != applyLive {
		b.Fatalf("the dry run planned %d sessions, want %d", len(rows), applyLive)
	}
	// Every row of a plan repeats its header: the selection goes with the
	// kind of plan.
	if kind == "pid" {
		for k := range rows {
			rows[k] = strings.Replace(rows[k], `"selection":{"app":["apply-live"]}`, `"selection":null`, 1)
		}
	}
	maxPID := pidMax(b)
	pid := regexp.MustCompile(`"pid":[0-9]+`)
	backendStart := regexp.MustCompile(`"backend_start":"[^"]+"`)
	var out []string
	for k := range n {
		row := strings.TrimSuffix(rows[k%applyLive], ",")
		if k >= applyLive {
			row = pid.ReplaceAllString(row, `"pid":`+strconv.Itoa(maxPID+k))
		}
		out = append(out, backendStart.ReplaceAllString(row, `"backend_start":"2001-02-03T04:05:06.789Z"`))
	}
	file := filepath.Join(a.dir, fmt.Sprintf("plan-%s-%d.json", kind, n))
	if err := os.WriteFile(file, []byte("[\n"+strings.Join(out, ",\n")+"\n]\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	return file
}

// pidMax is the kernel's pid_max: no process has a pid above it.
func pidMax(b *testing.B) int {
	b.Helper()
	text, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		b.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(text)))
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// applyRow is what the floor reads of a plan, and the benchmark of
// pgreap's results.
type applyRow struct {
	PID             int32     `json:"pid"`
	BackendStart    time.Time `json:"backend_start"`
	ApplicationName string    `json:"application_name"`
	Outcome         string    `json:"outcome"`
	Detail          string    `json:"detail"`
}

// pgreap applies the plan and checks what it reports.
func (a *applyBench) pgreap(b *testing.B, file string, n int) time.Duration {
	b.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(a.bin, "apply", file, "-o", "json")
	cmd.Env = a.env
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	if cmd.ProcessState == nil {
		b.Fatalf("pgreap apply: %v", err)
	}
	if code := cmd.ProcessState.ExitCode(); code != 3 {
		b.Fatalf("pgreap apply: exit %d (%v), want 3\n%s", code, err, stderr.Bytes())
	}
	var rows []applyRow
	if err := json.Unmarshal(stdout.Bytes(), &rows); err != nil {
		b.Fatalf("pgreap apply output: %v\n%s", err, head(stdout.Bytes()))
	}
	changed, gone := 0, 0
	for _, r := range rows {
		switch {
		case r.Outcome == "changed" && r.ApplicationName == "apply-live" && strings.HasPrefix(r.Detail, "pid reused"):
			changed++
		case r.Outcome == "gone":
			gone++
		}
	}
	if len(rows) != n || changed != applyLive || gone != n-applyLive {
		b.Fatalf("pgreap apply: %d rows, %d changed, %d gone; want %d, %d, %d:\n%s",
			len(rows), changed, gone, n, applyLive, n-applyLive, head(stdout.Bytes()))
	}
	a.checkLive(b)
	return wall
}

// floor reads the plan, judges its sessions in one statement and writes
// the results.
func (a *applyBench) floor(b *testing.B, file string, n int) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	text, err := os.ReadFile(file)
	if err != nil {
		b.Fatal(err)
	}
	var rows []applyRow
	if err := json.Unmarshal(text, &rows); err != nil {
		b.Fatal(err)
	}
	pids := make([]int32, len(rows))
	starts := make([]time.Time, len(rows))
	apps := make([]string, len(rows))
	for k, r := range rows {
		pids[k], starts[k], apps[k] = r.PID, r.BackendStart, r.ApplicationName
	}
	cfg := a.cfg.Copy()
	cfg.RuntimeParams["application_name"] = "bench-floor"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	res, err := conn.Query(ctx, floorApplySQL, pids, starts, apps)
	if err != nil {
		b.Fatal(err)
	}
	type result struct {
		N    int64 `json:"n"`
		Same *bool `json:"same"`
	}
	var results []result
	for res.Next() {
		var r result
		if err := res.Scan(&r.N, &r.Same); err != nil {
			b.Fatal(err)
		}
		results = append(results, r)
	}
	if err := res.Err(); err != nil {
		b.Fatal(err)
	}
	var out bytes.Buffer
	if err := json.NewEncoder(&out).Encode(results); err != nil {
		b.Fatal(err)
	}
	err = conn.Close(ctx)
	wall := time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	if len(results) != n {
		b.Fatalf("floor: %d results, want %d", len(results), n)
	}
	return wall
}

// checkLive fails unless the live sessions are all still there.
func (a *applyBench) checkLive(b *testing.B) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, a.cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	var left int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE application_name = 'apply-live'").Scan(&left); err != nil {
		b.Fatal(err)
	}
	if left != applyLive {
		b.Fatalf("%d live sessions after apply, want %d", left, applyLive)
	}
}
