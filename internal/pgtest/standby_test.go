package pgtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// A table created on the primary is there on the standby once replay has
// caught up, and the standby is a hot standby: it answers, in recovery,
// and refuses writes.
func TestStandbyReplays(t *testing.T) {
	s := Standby(t)
	table := Name(t, "s_")
	Exec(t, "CREATE TABLE "+pgx.Identifier{table}.Sanitize()+" (id int)")
	WaitReplay(t, s, Shared(t))
	cn := Connect(t, s.DSN("postgres", Superuser))
	var inRecovery, there bool
	if err := cn.QueryRow(Context(t), "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.to_regclass($1) IS NOT NULL", table).Scan(&inRecovery, &there); err != nil {
		t.Fatal(err)
	}
	if !inRecovery || !there {
		t.Fatalf("standby: in recovery %v, table %s replayed %v; want both", inRecovery, table, there)
	}
	if _, err := cn.Exec(Context(t), "CREATE TABLE "+pgx.Identifier{table + "_w"}.Sanitize()+" (id int)"); SQLState(err) != "25006" {
		t.Fatalf("a write on the standby: %v, want read_only_sql_transaction (25006)", err)
	}
	if Standby(t) != s {
		t.Fatal("Standby must start one standby per package")
	}
}

// Stop leaves no process of the standby, no directory, and no
// replication slot on the primary behind.
func TestOwnStandbyStop(t *testing.T) {
	slots := func() (n int) {
		if err := Admin(t).QueryRow(Context(t), "SELECT count(*) FROM pg_catalog.pg_replication_slots").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := slots()
	s, err := Shared(t).StartStandby(Context(t), StandbyOptions{Prefix: "pgreap-test-standby-"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(s.DataDir(), "postmaster.pid"))
	if err != nil {
		s.Stop()
		t.Fatal(err)
	}
	pm, _ := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	if len(processesIn(s.Dir)) == 0 {
		s.Stop()
		t.Fatalf("no process works in %s: the scan below would prove nothing", s.Dir)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	// A zombie is gone: its parent (init, here) has yet to reap it.
	if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pm)); err == nil && !strings.Contains(string(stat), ") Z ") {
		t.Errorf("postmaster %d of the standby is still there: %s", pm, stat)
	}
	if left := processesIn(s.Dir); len(left) > 0 {
		t.Errorf("processes left: %v", left)
	}
	if n := slots(); n != before {
		t.Errorf("the primary has %d replication slots after Stop, %d before the standby: its slot was not dropped", n, before)
	}
	if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
		t.Errorf("%s left behind: %v", s.Dir, err)
	}
}
