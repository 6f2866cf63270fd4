package pgtest

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Link is two network namespaces of the test's own joined by a veth pair:
// A has AddrA on DevA, B has AddrB on DevB, nothing else but their
// loopback. A network cut without a close (Cut) is what it is for: the
// host's namespace drops veth traffic on some machines, and netem is not
// everywhere. Removed when the test ends.
type Link struct {
	A, B         string // names for ip netns
	DevA, DevB   string
	AddrA, AddrB string
}

// NewLink creates a Link. It needs root and ip (iproute2): without them the
// test is skipped, or fails when CI=true (CI must run it: .ci/run installs
// iproute2 and runs as root).
func NewLink(t testing.TB) *Link {
	t.Helper()
	need := func(why string) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("pgtest: %s (CI must run this test: as root, with iproute2)", why)
		}
		t.Skipf("pgtest: %s; skipped (CI=true fails instead)", why)
	}
	if os.Geteuid() != 0 {
		need("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		need("no ip command (iproute2)")
	}
	id := fmt.Sprintf("pgrp%d%03d", os.Getpid()%100000, rand.N(1000))
	l := &Link{A: id + "a", B: id + "b", DevA: id + "a", DevB: id + "b",
		AddrA: fmt.Sprintf("10.213.%d.1", rand.N(256)), AddrB: ""}
	l.AddrB = strings.TrimSuffix(l.AddrA, ".1") + ".2"
	if out, err := exec.Command("ip", "netns", "add", l.A).CombinedOutput(); err != nil {
		need(fmt.Sprintf("ip netns add: %v: %s", err, strings.TrimSpace(string(out))))
	}
	t.Cleanup(func() { ip(t, "netns", "del", l.A) })
	ip(t, "netns", "add", l.B)
	t.Cleanup(func() { ip(t, "netns", "del", l.B) }) // the veth pair goes with it
	ip(t, "link", "add", l.DevA, "netns", l.A, "type", "veth", "peer", "name", l.DevB, "netns", l.B)
	for _, s := range []struct{ ns, dev, addr string }{{l.A, l.DevA, l.AddrA}, {l.B, l.DevB, l.AddrB}} {
		ip(t, "-n", s.ns, "addr", "add", s.addr+"/30", "dev", s.dev)
		ip(t, "-n", s.ns, "link", "set", s.dev, "up")
		ip(t, "-n", s.ns, "link", "set", "lo", "up")
	}
	return l
}

// Cut takes B's end of the link down: nothing passes any more, and no
// close reaches either side.
func (l *Link) Cut(t testing.TB) {
	t.Helper()
	ip(t, "-n", l.B, "link", "set", l.DevB, "down")
}

// Exec is a cluster.Options.Exec that runs the command in namespace ns:
// the server it starts listens there.
func (l *Link) Exec(ns string) func(*exec.Cmd) error {
	return func(cmd *exec.Cmd) error { return InNetNS(ns, cmd.Run) }
}

// InNetNS calls f on an OS thread that joined the network namespace ns (ip
// netns): a process f starts lives in it. The thread is never given back
// to the runtime (a goroutine that ends locked ends its thread).
func InNetNS(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := syscall.Open("/run/netns/"+ns, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer syscall.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

func ip(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Errorf("pgtest: ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		if args[1] != "del" { // removing goes on: the other namespace too
			t.FailNow()
		}
	}
}
