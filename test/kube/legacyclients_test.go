package kube_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	coordinationv1 "k8s.io/api/coordination/v1"

	"github.com/mpsync/mpsync"
)

// Metaparticle Sync's four clients, as they were deployed: one elector per
// simulated pod on the kubernetes backend, one client process per pod. The
// programs in testdata/legacy speak what each original speaks (its
// requests, what it does on each status code; see each file's header),
// written anew in the original's language and run with its runtime: node,
// python3, the JDK and Mono. hack/test.sh installs what is missing.
//
// Periods and the legacy TTL are shortened (the originals renew every 10 s
// against a 30 s TTL) so that a takeover takes seconds.
const (
	legacyPeriod = time.Second
	legacyTTL    = 3 * time.Second
	// restartPeriod is the renew period of the client under which the
	// elector restarts: the restart must fit between two of its renewals,
	// as it would between the originals' 10 s ones.
	restartPeriod = 2 * time.Second
)

// legacyLang is one client's runtime: build compiles its program (if it
// needs compiling) into dir and returns the command before its arguments
// BASE_URL NAME PERIOD_MS lock|election.
type legacyLang struct {
	name  string
	build func(t *testing.T, dir string) []string
}

var legacyLangs = []legacyLang{
	{"javascript", func(t *testing.T, _ string) []string {
		return []string{tool(t, "node"), testdataLegacy("lock.js")}
	}},
	{"python", func(t *testing.T, _ string) []string {
		return []string{tool(t, "python3"), testdataLegacy("lock.py")}
	}},
	{"java", func(t *testing.T, dir string) []string {
		compile(t, tool(t, "javac"), "-d", dir, testdataLegacy("Lock.java"))
		return []string{tool(t, "java"), "-cp", dir, "Lock"}
	}},
	{"dotnet", func(t *testing.T, dir string) []string {
		exe := filepath.Join(dir, "lock.exe")
		compile(t, tool(t, "mcs"), "-nologo", "-r:System.Net.Http", "-out:"+exe, testdataLegacy("Lock.cs"))
		return []string{tool(t, "mono"), exe}
	}},
}

func testdataLegacy(file string) string { return filepath.Join("testdata", "legacy", file) }

// tool is the path of a command the suite needs; its absence fails the
// test (hack/test.sh installs it), it is not skipped.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (hack/test.sh installs it): %v", name, err)
	}
	return p
}

func compile(t *testing.T, argv ...string) {
	t.Helper()
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
}

// TestLegacyClients runs each of Metaparticle Sync's clients through the
// scenarios its users relied on, against electors on the kubernetes
// backend.
func TestLegacyClients(t *testing.T) {
	needControlPlane(t)
	for _, lang := range legacyLangs {
		t.Run(lang.name, func(t *testing.T) {
			prog := legacyProgram(lang.build(t, t.TempDir()))
			t.Run("lock pair: the second waits, then takes over", func(t *testing.T) { legacyLockPair(t, prog) })
			t.Run("election trio: one leader, a takeover after SIGKILL", func(t *testing.T) { legacyElectionTrio(t, prog) })
			t.Run("elector SIGKILLed and restarted under a holder", func(t *testing.T) { legacyElectorRestart(t, prog) })
			t.Run("a v1 holder excludes it", func(t *testing.T) { legacyUnderV1(t, prog) })
			t.Run("it excludes a v1 client", func(t *testing.T) { v1UnderLegacy(t, prog) })
			t.Run("served through ::1 and through 127.0.0.1", func(t *testing.T) { legacyBothLoopbacks(t, prog) })
		})
	}
}

// legacyPod starts an elector as a pod's sidecar would run on the
// kubernetes backend: identity id, both loopback addresses (the default's
// form) on a free port unless listen says one, the tests' legacy TTL.
func legacyPod(t *testing.T, ns, id, listen string) *elector {
	t.Helper()
	if listen == "" {
		listen = "localhost:0"
	}
	return startElector(t, ns, id, 15*time.Second, "--listen", listen, "--test-legacy-ttl", legacyTTL.String())
}

// localhostURL is the elector's address as the clients say it:
// http://localhost:PORT.
func localhostURL(e *elector) string {
	_, port, _ := net.SplitHostPort(e.Addr)
	return "http://localhost:" + port
}

func legacyLockPair(t *testing.T, prog legacyProgram) {
	ns := namespace(t)
	const name = "pair"
	ea, eb := legacyPod(t, ns, "pod-a", ""), legacyPod(t, ns, "pod-b", "")
	a := prog.start(t, localhostURL(ea), name, legacyPeriod, "lock")
	a.waitFor(t, "ACQUIRED")
	b := prog.start(t, localhostURL(eb), name, legacyPeriod, "lock")
	b.waitCount(t, "PUT 409", 2)
	killed := a.kill()
	last := getLease(t, cp.admin(t), ns, name)
	got := b.waitFor(t, "ACQUIRED")
	require.Truef(t, got.at.After(killed), "pod-b's client acquired at %v, before pod-a's client was killed at %v", got.at, killed)
	took := checkTakeover(t, ns, name, last, "pod-b")
	t.Logf("measured: the holder stops renewing (SIGKILL) -> the other pod's client holds: %v after the last renewal (TTL %v, period %v)", took, legacyTTL, legacyPeriod)
	b.noneOf(t, "LOST", "ERROR")
}

func legacyElectionTrio(t *testing.T, prog legacyProgram) {
	ns := namespace(t)
	const name = "trio"
	ids := []string{"pod-a", "pod-b", "pod-c"}
	clients := map[string]*legacyProc{}
	for _, id := range ids {
		clients[id] = prog.start(t, localhostURL(legacyPod(t, ns, id, "")), name, legacyPeriod, "election")
	}
	leader := legacyLeader(t, clients, nil)
	for id, c := range clients {
		if id != leader {
			c.waitCount(t, "PUT 409", 2)
		}
	}
	require.Truef(t, len(leaders(clients)) == 1, "leaders %v, want only %s", leaders(clients), leader)
	killed := clients[leader].kill()
	last := getLease(t, cp.admin(t), ns, name)
	next := legacyLeader(t, clients, map[string]bool{leader: true})
	took := checkTakeover(t, ns, name, last, next)
	// A second leader would say so within a period or two of the first.
	time.Sleep(2 * legacyPeriod)
	got := leaders(clients)
	require.Truef(t, slices.Equal(got, []string{leader, next}) || slices.Equal(got, []string{next, leader}),
		"leaders %v after the takeover, want only %s (and the killed %s)", got, next, leader)
	t.Logf("measured: SIGKILL of the leader -> %s leads (killed at %v): %v after the last renewal (TTL %v)",
		next, killed.Format(time.StampMilli), took, legacyTTL)
}

// legacyLeader waits until a client not in gone says LEADER and returns its
// pod.
func legacyLeader(t *testing.T, clients map[string]*legacyProc, gone map[string]bool) string {
	t.Helper()
	var leader string
	require.Eventually(t, func() bool {
		for id, c := range clients {
			if _, ok := c.first("LEADER"); ok && !gone[id] {
				leader = id
				return true
			}
		}
		return false
	}, waitFor, 20*time.Millisecond, "a leader")
	return leader
}

// leaders are the pods whose client has said LEADER, in order.
func leaders(clients map[string]*legacyProc) []string {
	var ids []string
	for id, c := range clients {
		if _, ok := c.first("LEADER"); ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// checkTakeover checks that the Lease's next holder, the identity who (a
// legacy client holds in its pod's name), took it no sooner
// than the validity of the last renewal in last (the Lease read after the
// holder stopped) allowed, D*(1-2*rho) for rho = 1%, and returns how long
// after that renewal it did.
func checkTakeover(t *testing.T, ns, name string, last *coordinationv1.Lease, who string) time.Duration {
	t.Helper()
	var next *coordinationv1.Lease
	require.Eventually(t, func() bool {
		next = getLease(t, cp.admin(t), ns, name)
		return strings.HasPrefix(holderOf(next), who+"@")
	}, waitFor, 20*time.Millisecond, who+" named in the Lease")
	renewed := last.Spec.RenewTime.Time
	acquired := next.Spec.AcquireTime.Time
	require.Truef(t, !acquired.Before(renewed.Add(legacyTTL*98/100)),
		"%s acquired at %v, %v after the last renewal, within the TTL %v", who, acquired, acquired.Sub(renewed), legacyTTL)
	require.Truef(t, transitionsOf(next) > transitionsOf(last), "token %d after %d", transitionsOf(next), transitionsOf(last))
	return acquired.Sub(renewed)
}

func legacyElectorRestart(t *testing.T, prog legacyProgram) {
	ns := namespace(t)
	const name = "restart"
	ea := legacyPod(t, ns, "pod-a", "")
	c := prog.start(t, localhostURL(ea), name, restartPeriod, "lock")
	c.waitFor(t, "ACQUIRED")
	before := getLease(t, cp.admin(t), ns, name)
	// Kill it just after a renewal, and start it again on the same port.
	n := c.count("PUT 200")
	c.waitCount(t, "PUT 200", n+1)
	ea.Kill()
	killed := time.Now()
	_, port, _ := net.SplitHostPort(ea.Addr)
	restarted := legacyPod(t, ns, "pod-a", "localhost:"+port)
	t.Logf("elector SIGKILLed and serving again in %v", time.Since(killed))
	c.waitCount(t, "PUT 200", n+4)
	after := getLease(t, cp.admin(t), ns, name)

	// Never refused: every answer the client had since it held was a 200.
	acquired, _ := c.first("ACQUIRED")
	for _, l := range c.all() {
		if l.at.After(acquired.at) && !strings.HasSuffix(l.text, " 200") {
			t.Errorf("the client had %q at %v (the elector was killed at %v)", l.text, l.at.Format(time.StampMilli), killed.Format(time.StampMilli))
		}
	}
	require.Truef(t, transitionsOf(after) == transitionsOf(before), "token %d after the restart, %d before: the restart rule keeps it", transitionsOf(after), transitionsOf(before))
	require.Truef(t, restarted.Logged("lock acquired", map[string]any{"name": name}), "the restarted elector did not take the lock again")
	gap := c.longestWithout(" 200", killed)
	t.Logf("measured: elector SIGKILLed and restarted under a holding client: the client went %v without a 200 (its renew period %v)", gap, restartPeriod)
}

func legacyUnderV1(t *testing.T, prog legacyProgram) {
	ns := namespace(t)
	const name = "v1-first"
	ea, eb := legacyPod(t, ns, "pod-a", ""), legacyPod(t, ns, "pod-b", "")
	v1 := newLock(t, ea, name, "v1-client")
	if _, err := v1.Lock(lockCtx(t)); err != nil {
		t.Fatal(err)
	}
	c := prog.start(t, localhostURL(eb), name, legacyPeriod, "lock")
	c.waitCount(t, "PUT 409", 2)
	unlocked := time.Now()
	if err := v1.Unlock(); err != nil {
		t.Fatal(err)
	}
	got := c.waitFor(t, "ACQUIRED")
	require.Truef(t, got.at.After(unlocked), "the legacy client acquired at %v, before the v1 holder's Unlock at %v", got.at, unlocked)
}

func v1UnderLegacy(t *testing.T, prog legacyProgram) {
	ns := namespace(t)
	const name = "legacy-first"
	ea, eb := legacyPod(t, ns, "pod-a", ""), legacyPod(t, ns, "pod-b", "")
	c := prog.start(t, localhostURL(ea), name, legacyPeriod, "lock")
	c.waitFor(t, "ACQUIRED")
	v1 := newLock(t, eb, name, "v1-client")
	if _, err := v1.TryLock(lockCtx(t)); !errors.Is(err, mpsync.ErrLocked) {
		t.Fatalf("v1 TryLock over the legacy holder: %v, want ErrLocked", err)
	}
	got := make(chan time.Time, 1)
	go func() {
		_, err := v1.Lock(lockCtx(t))
		if err != nil {
			t.Errorf("v1 Lock: %v", err)
		}
		got <- time.Now()
	}()
	require.Eventually(t, func() bool { return eb.waiters() == "1" }, waitFor, 20*time.Millisecond, "the v1 client waiting")
	c.waitCount(t, "PUT 200", c.count("PUT 200")+2) // renewals go on while it waits
	killed := c.kill()
	last := getLease(t, cp.admin(t), ns, name)
	at := <-got
	require.Truef(t, at.After(killed), "v1 client granted at %v, before the legacy client was killed at %v", at, killed)
	took := checkTakeover(t, ns, name, last, "v1-client")
	t.Logf("measured: legacy holder SIGKILLed -> the waiting v1 client holds %v after the last renewal (TTL %v)", took, legacyTTL)
	_ = v1.Unlock()
}

// legacyBothLoopbacks: the elector, started with its default's form,
// serves the client that dials ::1 and the one that dials 127.0.0.1.
func legacyBothLoopbacks(t *testing.T, prog legacyProgram) {
	ns := namespace(t)
	e := legacyPod(t, ns, "pod-a", "")
	_, port, _ := net.SplitHostPort(e.Addr)
	for _, host := range []string{"[::1]", "127.0.0.1"} {
		c := prog.start(t, "http://"+host+":"+port, "loopback-"+strings.Trim(host, "[]:."), legacyPeriod, "lock")
		c.waitFor(t, "ACQUIRED")
		c.kill()
	}
}

// legacyProgram is the command that runs one client's program.
type legacyProgram []string

// legacyProc is a running client: what it printed, with when.
type legacyProc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	stderr strings.Builder

	mu    sync.Mutex
	lines []legacyLine
}

type legacyLine struct {
	at   time.Time
	text string
}

// start runs the program against the elector at base, for lock name, with
// the given renew period and mode. It is killed at the end of the test,
// and what it printed is logged if the test failed.
func (prog legacyProgram) start(t *testing.T, base, name string, period time.Duration, mode string) *legacyProc {
	t.Helper()
	args := append(slices.Clone(prog[1:]), base, name, fmt.Sprint(period.Milliseconds()), mode)
	p := &legacyProc{cmd: exec.Command(prog[0], args...), exited: make(chan struct{})}
	p.cmd.Stderr = &p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, legacyLine{time.Now(), s.Text()})
			p.mu.Unlock()
		}
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s %s printed:\n%s\nstderr:\n%s", filepath.Base(prog[len(prog)-1]), strings.Join(args, " "), p.transcript(), p.stderr.String())
		}
	})
	return p
}

// kill SIGKILLs the client, waits for it to end and returns when it did.
func (p *legacyProc) kill() time.Time {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
	return time.Now()
}

func (p *legacyProc) all() []legacyLine {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.lines)
}

func (p *legacyProc) first(text string) (legacyLine, bool) {
	for _, l := range p.all() {
		if l.text == text {
			return l, true
		}
	}
	return legacyLine{}, false
}

func (p *legacyProc) count(text string) int {
	n := 0
	for _, l := range p.all() {
		if l.text == text {
			n++
		}
	}
	return n
}

// waitCount waits until the client has printed text n times, failing the
// test if it exits first or waitFor passes.
func (p *legacyProc) waitCount(t *testing.T, text string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	for p.count(text) < n {
		select {
		case <-p.exited:
			if p.count(text) < n {
				t.Fatalf("the client exited having printed %q %d times, want %d", text, p.count(text), n)
			}
		case <-ctx.Done():
			t.Fatalf("the client printed %q %d times in %v, want %d", text, p.count(text), waitFor, n)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitFor waits for the client's first line text and returns it.
func (p *legacyProc) waitFor(t *testing.T, text string) legacyLine {
	t.Helper()
	p.waitCount(t, text, 1)
	l, _ := p.first(text)
	return l
}

// noneOf fails the test if the client printed a line that begins with
// any of prefixes.
func (p *legacyProc) noneOf(t *testing.T, prefixes ...string) {
	t.Helper()
	for _, l := range p.all() {
		for _, pre := range prefixes {
			if strings.HasPrefix(l.text, pre) {
				t.Errorf("the client printed %q at %v", l.text, l.at.Format(time.StampMilli))
			}
		}
	}
}

// longestWithout is the longest time between two consecutive lines ending
// in suffix that spans since.
func (p *legacyProc) longestWithout(suffix string, since time.Time) time.Duration {
	var prev time.Time
	var longest time.Duration
	for _, l := range p.all() {
		if !strings.HasSuffix(l.text, suffix) {
			continue
		}
		if !prev.IsZero() && l.at.After(since) && !prev.After(since) {
			longest = max(longest, l.at.Sub(prev))
		}
		prev = l.at
	}
	return longest
}

func (p *legacyProc) transcript() string {
	var b strings.Builder
	for _, l := range p.all() {
		fmt.Fprintf(&b, "  %s %s\n", l.at.Format(time.StampMilli), l.text)
	}
	return b.String()
}
