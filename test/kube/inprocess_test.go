package kube_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/drivertest"
	"github.com/mpsync/mpsync/internal/controlplane"
	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/electorproc"
	"github.com/mpsync/mpsync/kube"
)

// These tests run the in-process transport, kube.NewTransport, as the
// elector user: in this process, and in holder processes of their own
// (test/kube/cmd/inprocholder), against electors too.

// inprocTransport returns a Transport as the elector user in ns, closed at
// the end of the test.
func inprocTransport(t *testing.T, ns, name string, opts ...kube.Option) *kube.Transport {
	t.Helper()
	c := needControlPlane(t)
	rc, err := kube.RESTConfig(c.electorKubeconfig)
	require.NoError(t, err)
	tr, err := kube.NewTransport(rc, ns, append([]kube.Option{kube.WithName(name)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, tr.Close()) })
	return tr
}

// inprocHarness runs the conformance suite against three in-process
// transports of distinct names (three holders' processes); successive
// clients use successive transports.
type inprocHarness struct {
	transports []*kube.Transport
	admin      kubernetes.Interface
	ns         string
	mu         sync.Mutex
	next       int
}

func (h *inprocHarness) Transport(*testing.T) mpsync.Transport {
	h.mu.Lock()
	defer h.mu.Unlock()
	tr := h.transports[h.next%len(h.transports)]
	h.next++
	return tr
}

func (h *inprocHarness) Revoke(t *testing.T, name string) {
	t.Helper()
	revoke(t, h.admin, h.ns, name, "revoked-by-test")
}

// TestInProcessConformance runs the SDK's conformance suite against three
// kube.NewTransport transports on the real API server.
func TestInProcessConformance(t *testing.T) {
	ns := namespace(t)
	h := &inprocHarness{admin: cp.admin(t), ns: ns}
	for i := range 3 {
		h.transports = append(h.transports, inprocTransport(t, ns, fmt.Sprintf("inproc-%d", i), kube.WithLeaseDuration(3*time.Second)))
	}
	drivertest.RunConformanceTests(t, h)
}

// holderBin builds test/kube/cmd/inprocholder for the test.
func holderBin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "inprocholder")
	require.NoError(t, electorproc.Build(bin, "test", "github.com/mpsync/mpsync/test/kube/cmd/inprocholder"))
	return bin
}

// holderProc is a running inprocholder process and the lines it printed.
type holderProc struct {
	id      string
	cmd     *exec.Cmd
	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced at each new line
	exited  chan struct{}
	err     error // set before exited is closed
	stderr  strings.Builder
}

// startHolder starts the holder binary with args, holding lock for
// identity id, and waits until it is ready. It is killed at the end of the
// test if it is still running.
func startHolder(t *testing.T, bin, id string, args ...string) *holderProc {
	t.Helper()
	p := startProc(t, bin, id, args...)
	p.waitLine(t, "ready")
	return p
}

// startProc starts bin with -identity id and args, and collects its output.
func startProc(t *testing.T, bin, id string, args ...string) *holderProc {
	t.Helper()
	p := &holderProc{id: id, changed: make(chan struct{}), exited: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{"-identity", id}, args...)...)
	p.cmd.Stderr = &p.stderr
	out, err := p.cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, p.cmd.Start())
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
		}
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("holder %s printed:\n%s\nstderr:\n%s", id, strings.Join(p.all(), "\n"), p.stderr.String())
		}
	})
	return p
}

func (p *holderProc) all() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.lines)
}

// waitLine waits for a line whose first word is prefix and returns its
// words.
func (p *holderProc) waitLine(t *testing.T, prefix string) []string {
	t.Helper()
	return strings.Fields(p.waitMatch(t, prefix, func(l string) bool {
		f := strings.Fields(l)
		return len(f) > 0 && f[0] == prefix
	}))
}

// waitMatch waits for a line that ok accepts and returns it.
func (p *holderProc) waitMatch(t *testing.T, prefix string, ok func(string) bool) string {
	t.Helper()
	timeout := time.After(waitFor)
	for {
		p.mu.Lock()
		for _, l := range p.lines {
			if ok(l) {
				p.mu.Unlock()
				return l
			}
		}
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-changed:
		case <-p.exited:
			t.Fatalf("holder %s exited (%v) without printing %q", p.id, p.err, prefix)
		case <-timeout:
			t.Fatalf("holder %s: no %q line within %v", p.id, prefix, waitFor)
		}
	}
}

// hold is one holding of the lock as a holder process reported it.
type hold struct {
	who        string
	token      uint64
	start, end time.Time
}

func unixNano(t *testing.T, s string) time.Time {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	require.NoError(t, err)
	return time.Unix(0, n)
}

// holds parses the held/unheld lines of p.
func (p *holderProc) holds(t *testing.T) []hold {
	t.Helper()
	var out []hold
	for _, l := range p.all() {
		f := strings.Fields(l)
		switch {
		case len(f) == 3 && f[0] == "held":
			tok, err := strconv.ParseUint(f[1], 10, 64)
			require.NoError(t, err)
			out = append(out, hold{who: p.id, token: tok, start: unixNano(t, f[2])})
		case len(f) == 3 && (f[0] == "unheld" || f[0] == "lost"):
			require.NotEmpty(t, out, "holder %s: %q before any held line", p.id, l)
			assert.NotEqual(t, "lost", f[0], "holder %s lost a lock it was not meant to lose: %q", p.id, l)
			out[len(out)-1].end = unixNano(t, f[2])
		}
	}
	return out
}

// checkNoOverlap checks that no two holds overlap in time and that tokens
// increase with time.
func checkNoOverlap(t *testing.T, hs []hold) {
	t.Helper()
	slices.SortFunc(hs, func(a, b hold) int { return a.start.Compare(b.start) })
	for i, h := range hs {
		assert.False(t, h.end.IsZero(), "hold %d by %s (token %d) has no end", i, h.who, h.token)
		if i == 0 {
			continue
		}
		prev := hs[i-1]
		assert.True(t, prev.end.Before(h.start), "%s (token %d) held from %v while %s (token %d) held until %v",
			h.who, h.token, h.start.Format(time.StampMicro), prev.who, prev.token, prev.end.Format(time.StampMicro))
		assert.Greater(t, h.token, prev.token, "token of %s after %s", h.who, prev.who)
	}
}

// TestInProcessThreeProcesses: three holder processes, each with its own
// kube.NewTransport, contend for one lock; their holds never overlap and
// tokens increase.
func TestInProcessThreeProcesses(t *testing.T) {
	ns := namespace(t)
	bin := holderBin(t)
	const rounds = 6
	var ps []*holderProc
	for i := range 3 {
		ps = append(ps, startHolder(t, bin, fmt.Sprintf("proc-%d", i),
			"-kubeconfig", cp.electorKubeconfig, "-namespace", ns, "-name", fmt.Sprintf("pod-%d", i),
			"-lock", "contended", "-lease", "3s", "-rounds", strconv.Itoa(rounds), "-hold", "30ms"))
	}
	var all []hold
	for _, p := range ps {
		select {
		case <-p.exited:
		case <-time.After(2 * waitFor):
			t.Fatalf("holder %s still running after %v", p.id, 2*waitFor)
		}
		require.NoError(t, p.err, "holder %s: %s", p.id, p.stderr.String())
		hs := p.holds(t)
		assert.Len(t, hs, rounds, "holds of %s", p.id)
		all = append(all, hs...)
	}
	checkNoOverlap(t, all)
	l := getLease(t, cp.admin(t), ns, "contended")
	assert.Empty(t, holderOf(l), "every holder unlocked before exiting")
	assert.Equal(t, uint64(3*rounds), transitionsOf(l), "one transition per acquisition")
}

// TestInProcessMixed: an in-process holder and an elector-backed holder
// of one name exclude each other, hand over by watch, and their tokens
// increase across both; each sees the other through Watch.
func TestInProcessMixed(t *testing.T) {
	ns := namespace(t)
	admin := cp.admin(t)
	const lease = 3 * time.Second
	e := startElector(t, ns, "elector-m", lease)
	tr := inprocTransport(t, ns, "inproc-m", kube.WithLeaseDuration(lease))
	const name = "mixed"
	in, err := mpsync.NewLock(name, mpsync.WithTransport(tr), mpsync.WithIdentity("inproc-client"))
	require.NoError(t, err)
	side := newLock(t, e, name, "sidecar-client")

	var last uint64
	token := func(ctx context.Context, who string) {
		t.Helper()
		tok, ok := mpsync.FencingToken(ctx)
		require.True(t, ok)
		assert.Greater(t, tok, last, "token of %s", who)
		assert.Equal(t, tok, transitionsOf(getLease(t, admin, ns, name)), "token of %s is the Lease's", who)
		last = tok
	}
	watchFor := func(tr mpsync.Transport, id string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(bg(), waitFor)
		defer cancel()
		seen := false
		_ = tr.Watch(ctx, name, func(h mpsync.Holder) {
			if h.Identity == id {
				seen = true
				cancel()
			}
		})
		assert.True(t, seen, "watch did not report %s as holder", id)
	}

	for round := range 3 {
		held, err := in.Lock(lockCtx(t))
		require.NoError(t, err, "round %d: in-process Lock", round)
		token(held, "in-process")
		assert.True(t, strings.HasPrefix(holderOf(getLease(t, admin, ns, name)), "inproc-client@inproc-m#"))
		_, err = side.TryLock(lockCtx(t))
		assert.ErrorIs(t, err, mpsync.ErrLocked, "round %d: sidecar TryLock while in-process holds", round)
		watchFor(newTransport(t, e.Addr), "inproc-client")

		// The elector-backed holder waits; Unlock hands over by watch.
		got := make(chan context.Context, 1)
		go func() {
			h, err := side.Lock(lockCtx(t))
			assert.NoError(t, err)
			got <- h
		}()
		require.Eventually(t, func() bool { return e.waiters() == "1" }, waitFor, 20*time.Millisecond, "the sidecar waiter reached its elector")
		start := time.Now()
		require.NoError(t, in.Unlock())
		sh := <-got
		require.NotNil(t, sh)
		t.Logf("round %d: in-process Unlock -> sidecar holder: %s", round, ms(time.Since(start)))
		assert.Error(t, held.Err(), "in-process context live after Unlock")
		token(sh, "sidecar")
		assert.True(t, strings.HasPrefix(holderOf(getLease(t, admin, ns, name)), "sidecar-client@elector-m#"))
		_, err = in.TryLock(lockCtx(t))
		assert.ErrorIs(t, err, mpsync.ErrLocked, "round %d: in-process TryLock while sidecar holds", round)
		watchFor(tr, "sidecar-client")

		// And back: the in-process holder asks again (and waits, if it
		// asks before the Unlock).
		gotIn := make(chan context.Context, 1)
		go func() {
			h, err := in.Lock(lockCtx(t))
			assert.NoError(t, err)
			gotIn <- h
		}()
		watchFor(tr, "sidecar-client")
		start = time.Now()
		require.NoError(t, side.Unlock())
		ih := <-gotIn
		require.NotNil(t, ih)
		t.Logf("round %d: sidecar Unlock -> in-process holder: %s", round, ms(time.Since(start)))
		assert.Error(t, sh.Err(), "sidecar context live after Unlock")
		token(ih, "in-process")
		require.NoError(t, in.Unlock())
	}
}

// TestInProcessCrash measures the trade-off: a SIGKILLed in-process holder
// process's lock is taken by another about one lease duration after its
// last renewal, never sooner than D*(1-2*rho); a SIGKILLed client of an
// elector has its lock released by the elector, which sees the connection
// drop, within milliseconds. Speed is logged, only safety is asserted.
func TestInProcessCrash(t *testing.T) {
	ns := namespace(t)
	admin := cp.admin(t)
	bin := holderBin(t)
	const lease = 3 * time.Second

	t.Run("InProcess", func(t *testing.T) {
		const name = "crash-inproc"
		p := startHolder(t, bin, "victim", "-kubeconfig", cp.electorKubeconfig, "-namespace", ns,
			"-name", "pod-victim", "-lock", name, "-lease", lease.String())
		f := p.waitLine(t, "held")
		victimToken, err := strconv.ParseUint(f[1], 10, 64)
		require.NoError(t, err)
		p.waitLine(t, "renewed") // a renewal or more: the steady state

		tr := inprocTransport(t, ns, "pod-survivor", kube.WithLeaseDuration(lease))
		l, err := mpsync.NewLock(name, mpsync.WithTransport(tr), mpsync.WithIdentity("survivor"))
		require.NoError(t, err)
		got := make(chan context.Context, 1)
		go func() {
			h, err := l.Lock(lockCtx(t))
			assert.NoError(t, err)
			got <- h
		}()
		require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
		killed := time.Now()
		<-p.exited
		lastRenewal := getLease(t, admin, ns, name).Spec.RenewTime.Time
		held := <-got
		require.NotNil(t, held)
		took := time.Now()
		tok, _ := mpsync.FencingToken(held)
		assert.Greater(t, tok, victimToken)
		after := took.Sub(lastRenewal)
		floor := time.Duration(float64(lease) * (1 - 2*core.Rho))
		assert.GreaterOrEqual(t, after, floor, "taken %v after the dead holder's last renewal, before D*(1-2*rho)", after)
		t.Logf("measured: in-process holder SIGKILLed: lock taken %s after its last renewal, %s after the kill (D = %v)",
			ms(after), ms(took.Sub(killed)), lease)
		require.NoError(t, l.Unlock())
	})

	t.Run("Sidecar", func(t *testing.T) {
		const name = "crash-sidecar"
		ea, eb := startElector(t, ns, "elector-a", lease), startElector(t, ns, "elector-b", lease)
		p := startHolder(t, bin, "victim", "-elector", ea.Addr, "-lock", name, "-lease", lease.String())
		f := p.waitLine(t, "held")
		victimToken, err := strconv.ParseUint(f[1], 10, 64)
		require.NoError(t, err)
		l := newLock(t, eb, name, "survivor")
		got := make(chan context.Context, 1)
		go func() {
			h, err := l.Lock(lockCtx(t))
			assert.NoError(t, err)
			got <- h
		}()
		require.Eventually(t, func() bool { return eb.waiters() == "1" }, waitFor, 20*time.Millisecond, "the waiter reached its elector")
		require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
		killed := time.Now()
		<-p.exited
		held := <-got
		require.NotNil(t, held)
		took := time.Since(killed)
		tok, _ := mpsync.FencingToken(held)
		assert.Greater(t, tok, victimToken)
		t.Logf("measured: sidecar client SIGKILLed: lock taken %s after the kill, through another elector (D = %v)", ms(took), lease)
		require.NoError(t, l.Unlock())
	})
}

// TestInProcessClose: Close releases every Lease the Transport holds (read
// from the API server), ends its leadership contexts with ErrLockLost and
// its watches, and leaves no goroutine behind.
func TestInProcessClose(t *testing.T) {
	ns := namespace(t)
	admin := cp.admin(t)
	c := needControlPlane(t)
	rc, err := kube.RESTConfig(c.electorKubeconfig)
	require.NoError(t, err)
	// The admin client is connected before the snapshot.
	_, _ = admin.CoordinationV1().Leases(ns).List(bg(), metav1.ListOptions{Limit: 1})
	before := goleak.IgnoreCurrent()

	tr, err := kube.NewTransport(rc, ns, kube.WithName("closer"))
	require.NoError(t, err)
	var helds []context.Context
	for _, name := range []string{"close-a", "close-b"} {
		l, err := mpsync.NewLock(name, mpsync.WithTransport(tr), mpsync.WithIdentity("holder"))
		require.NoError(t, err)
		h, err := l.Lock(lockCtx(t))
		require.NoError(t, err)
		helds = append(helds, h)
		assert.NotEmpty(t, holderOf(getLease(t, admin, ns, name)))
	}
	watchEnded := make(chan error, 1)
	go func() { watchEnded <- tr.Watch(bg(), "close-a", func(mpsync.Holder) {}) }()

	require.NoError(t, tr.Close())
	for i, name := range []string{"close-a", "close-b"} {
		assert.Empty(t, holderOf(getLease(t, admin, ns, name)), "Lease %s still held after Close", name)
		select {
		case <-helds[i].Done():
			assert.ErrorIs(t, context.Cause(helds[i]), mpsync.ErrLockLost)
		case <-time.After(waitFor):
			t.Errorf("leadership context of %s live after Close", name)
		}
	}
	select {
	case err := <-watchEnded:
		assert.ErrorIs(t, err, mpsync.ErrUnavailable)
	case <-time.After(waitFor):
		t.Error("Watch still running after Close")
	}
	assert.NoError(t, tr.Close(), "a second Close")
	_, err = tr.Acquire(lockCtx(t), "close-c", "holder", true)
	assert.ErrorIs(t, err, mpsync.ErrUnavailable, "Acquire after Close")
	assert.NoError(t, goleak.Find(append(controlplane.LeakOptions(), before)...))
}

// TestInProcessCapacity: a Transport refuses the lock whose renewals its
// rate limit could not fit, with an error that says so, and takes it once
// another is released.
func TestInProcessCapacity(t *testing.T) {
	ns := namespace(t)
	const lease = 3 * time.Second
	tr := inprocTransport(t, ns, "small", kube.WithLeaseDuration(lease), kube.WithRateLimit(2, 4))
	require.Equal(t, 1, tr.MaxLocks(), "kube.MaxLocksFor(2, 3s)")
	a, err := mpsync.NewLock("cap-a", mpsync.WithTransport(tr), mpsync.WithIdentity("x"))
	require.NoError(t, err)
	b, err := mpsync.NewLock("cap-b", mpsync.WithTransport(tr), mpsync.WithIdentity("x"))
	require.NoError(t, err)
	_, err = a.TryLock(lockCtx(t))
	require.NoError(t, err)
	_, err = b.TryLock(lockCtx(t))
	require.ErrorIs(t, err, mpsync.ErrUnavailable)
	assert.Contains(t, err.Error(), "kube.WithRateLimit")
	assert.False(t, errors.Is(err, mpsync.ErrLocked))
	require.NoError(t, a.Unlock())
	_, err = b.TryLock(lockCtx(t))
	require.NoError(t, err)
	require.NoError(t, b.Unlock())
}

// TestInProcessExample applies examples/inprocess/deployment.yaml and checks
// that its ServiceAccount may do with Leases exactly what the Transport
// needs, in its namespace only; then runs two copies of the example program
// (as the elector user, with the same rights): one leads, and when it is
// stopped with SIGTERM it releases the Lease and the other leads at once.
func TestInProcessExample(t *testing.T) {
	ns := namespace(t)
	admin := cp.admin(t)
	objs := applyFile(t, ns, filepath.Join(repoRoot, "examples", "inprocess", "deployment.yaml"))
	kinds := map[string]bool{}
	for _, o := range objs {
		kinds[o.GetKind()] = true
	}
	assert.Equal(t, map[string]bool{"ServiceAccount": true, "Role": true, "RoleBinding": true, "Deployment": true}, kinds)
	checkServiceAccountRights(t, ns, "mpsync-inprocess")

	bin := filepath.Join(t.TempDir(), "inprocess")
	require.NoError(t, electorproc.Build(bin, "examples/inprocess", "github.com/mpsync/mpsync/examples/inprocess"))
	args := []string{"-kubeconfig", cp.electorKubeconfig, "-namespace", ns}
	leads := func(l string) bool { return strings.Contains(l, "I am the leader") }
	a := startProc(t, bin, "replica-a", args...)
	a.waitMatch(t, "leader", leads)
	b := startProc(t, bin, "replica-b", args...)
	b.waitMatch(t, "following", func(l string) bool { return strings.Contains(l, "following replica-a") })
	assert.True(t, strings.HasPrefix(holderOf(getLease(t, admin, ns, "example-inprocess")), "replica-a@"))
	require.NoError(t, a.cmd.Process.Signal(syscall.SIGTERM))
	stopped := time.Now()
	b.waitMatch(t, "leader", leads)
	t.Logf("SIGTERM to the leader -> the other leads: %s", ms(time.Since(stopped)))
	<-a.exited
	assert.NoError(t, a.err, "the stopped replica's exit")
	assert.True(t, strings.HasPrefix(holderOf(getLease(t, admin, ns, "example-inprocess")), "replica-b@"))
}
