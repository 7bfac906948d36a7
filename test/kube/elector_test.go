package kube_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/drivertest"
	"github.com/mpsync/mpsync/internal/electorproc"
)

// These tests run elector processes on the kubernetes backend, started as
//
//	elector --backend kubernetes --kubeconfig F --namespace NS --identity ID \
//	        --listen 127.0.0.1:0 --lease-duration D
//
// with the elector user's kubeconfig, and SDK clients in this process.

// elector is a running elector process.
type elector struct {
	id string
	*electorproc.Process
}

// startElector starts an elector on the kubernetes backend for namespace
// ns, with args after the suite's flags, and waits until it serves and is
// ready. It is stopped (SIGTERM) at the
// end of the test.
func startElector(t *testing.T, ns, id string, lease time.Duration, args ...string) *elector {
	t.Helper()
	c := needControlPlane(t)
	p, err := electorproc.Start(electorBin(t), waitFor, append([]string{
		"--backend", "kubernetes",
		"--kubeconfig", c.electorKubeconfig,
		"--namespace", ns,
		"--identity", id,
		"--lease-duration", lease.String()}, args...)...)
	if err != nil {
		t.Fatalf("elector %s: %v", id, err)
	}
	t.Cleanup(func() {
		if !p.Stop(waitFor) {
			t.Errorf("elector %s still running %v after SIGTERM; killed it", id, waitFor)
		}
		if t.Failed() {
			t.Logf("elector %s log:\n%s", id, p.Log())
		}
	})
	require.Eventually(t, p.Ready, waitFor, 20*time.Millisecond, "elector "+id+" ready")
	return &elector{id: id, Process: p}
}

// waiters reads the elector's mpsync_elector_waiters gauge; "" if it
// cannot.
func (e *elector) waiters() string {
	v, _ := e.Metric("mpsync_elector_waiters")
	return v
}

func newTransport(t *testing.T, addr string) mpsync.Transport {
	t.Helper()
	tr, err := mpsync.NewHTTPTransport(addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// harness runs the conformance suite against elector processes on the
// kubernetes backend.
type harness struct {
	electors []*elector
	admin    kubernetes.Interface
	ns       string
	mu       sync.Mutex
	next     int
}

// Transport returns a transport to the next elector, round robin.
func (h *harness) Transport(t *testing.T) mpsync.Transport {
	h.mu.Lock()
	e := h.electors[h.next%len(h.electors)]
	h.next++
	h.mu.Unlock()
	return newTransport(t, e.Addr)
}

// Revoke writes a foreign holder into the Lease, as an operator (or a
// client-go candidate after an expiry) would.
func (h *harness) Revoke(t *testing.T, name string) {
	t.Helper()
	revoke(t, h.admin, h.ns, name, "revoked-by-test")
}

func revoke(t *testing.T, admin kubernetes.Interface, ns, name, holder string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	for {
		l, err := admin.CoordinationV1().Leases(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("revoke %s: %v", name, err)
		}
		l.Spec.HolderIdentity = &holder
		_, err = admin.CoordinationV1().Leases(ns).Update(ctx, l, metav1.UpdateOptions{})
		if err == nil {
			return
		}
		if ctx.Err() != nil || !apierrors.IsConflict(err) {
			t.Fatalf("revoke %s: %v", name, err)
		}
		// A renewal got in first: read it again.
	}
}

// TestConformance runs the SDK's conformance suite against three elector
// processes of distinct identities on the kubernetes backend; successive
// clients talk to successive electors.
func TestConformance(t *testing.T) {
	ns := namespace(t)
	const lease = 3 * time.Second
	h := &harness{admin: cp.admin(t), ns: ns}
	for i := range 3 {
		h.electors = append(h.electors, startElector(t, ns, fmt.Sprintf("elector-%d", i), lease))
	}
	drivertest.RunConformanceTests(t, h)
}

func newLock(t *testing.T, e *elector, name, id string) *mpsync.Lock {
	t.Helper()
	l, err := mpsync.NewLock(name, mpsync.WithTransport(newTransport(t, e.Addr)), mpsync.WithIdentity(id))
	require.NoError(t, err)
	return l
}

func lockCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

// TestHandoverByWatch: after Unlock, a client waiting on another elector
// holds the lock within a fraction of the lease duration: its elector
// learnt of the release from its watch.
func TestHandoverByWatch(t *testing.T) {
	ns := namespace(t)
	const lease = 15 * time.Second
	es := []*elector{startElector(t, ns, "elector-a", lease), startElector(t, ns, "elector-b", lease)}
	const name = "handover"
	locks := []*mpsync.Lock{newLock(t, es[0], name, "client-a"), newLock(t, es[1], name, "client-b")}
	held, err := locks[0].Lock(lockCtx(t))
	require.NoError(t, err)
	var times []time.Duration
	for round := range 6 {
		from, to := round%2, (round+1)%2
		got := make(chan context.Context, 1)
		go func() {
			h, err := locks[to].Lock(lockCtx(t))
			if err != nil {
				t.Errorf("round %d: %s.Lock: %v", round, locks[to].Identity(), err)
			}
			got <- h
		}()
		require.Eventually(t, func() bool { return es[to].waiters() == "1" }, waitFor, 20*time.Millisecond, "the waiter's request reached its elector")
		start := time.Now()
		if err := locks[from].Unlock(); err != nil {
			t.Fatalf("round %d: Unlock: %v", round, err)
		}
		next := <-got
		if next == nil {
			return
		}
		took := time.Since(start)
		times = append(times, took)
		if held.Err() == nil {
			t.Errorf("round %d: old leadership context live after Unlock", round)
		}
		if took > 3*time.Second {
			t.Errorf("round %d: handover took %v; a watch-driven handover takes milliseconds (lease %v)", round, took, lease)
		}
		a, _ := mpsync.FencingToken(held)
		b, _ := mpsync.FencingToken(next)
		if b <= a {
			t.Errorf("round %d: token %d not greater than %d", round, b, a)
		}
		held = next
	}
	_ = locks[len(times)%2].Unlock()
	slices.Sort(times)
	t.Logf("handover Unlock -> Lock on another elector: min %s, median %s, max %s (%d rounds)",
		ms(times[0]), ms(times[len(times)/2]), ms(times[len(times)-1]), len(times))
}

// TestCrashFailover: SIGKILL the holder's elector. The holder's leadership
// context ends at once (its stream broke), and a client waiting on another
// elector holds the lock about one lease duration after the last renewal.
func TestCrashFailover(t *testing.T) {
	ns := namespace(t)
	const lease = 3 * time.Second
	ea, eb := startElector(t, ns, "elector-a", lease), startElector(t, ns, "elector-b", lease)
	const name = "crash"
	a, b := newLock(t, ea, name, "client-a"), newLock(t, eb, name, "client-b")
	heldA, err := a.Lock(lockCtx(t))
	require.NoError(t, err)
	var (
		mu    sync.Mutex
		aDone time.Time
	)
	stop := context.AfterFunc(heldA, func() {
		mu.Lock()
		aDone = time.Now()
		mu.Unlock()
	})
	defer stop()
	got := make(chan context.Context, 1)
	go func() {
		h, err := b.Lock(lockCtx(t))
		assert.NoError(t, err, "b.Lock")
		got <- h
	}()
	require.Eventually(t, func() bool { return eb.waiters() == "1" }, waitFor, 20*time.Millisecond, "b's request reached its elector")
	killed := time.Now()
	ea.Kill()
	heldB := <-got
	if heldB == nil {
		return
	}
	bHeld := time.Now()
	mu.Lock()
	ad := aDone
	mu.Unlock()
	if ad.IsZero() || !ad.Before(bHeld) {
		t.Fatalf("b holds the lock while a's leadership context is live (a done at %v, b held at %v)", ad, bHeld)
	}
	if cause := context.Cause(heldA); !errors.Is(cause, mpsync.ErrLockLost) {
		t.Errorf("a's cause = %v, want ErrLockLost", cause)
	}
	failover := bHeld.Sub(killed)
	t.Logf("crash failover: a's context ended %s after SIGKILL; b held the lock %s after SIGKILL (lease %v)",
		ms(ad.Sub(killed)), ms(failover), lease)
	if failover > lease+5*time.Second {
		t.Errorf("failover took %v, want about the lease duration %v", failover, lease)
	}
	ta, _ := mpsync.FencingToken(heldA)
	tb, _ := mpsync.FencingToken(heldB)
	if tb <= ta {
		t.Errorf("b's token %d not greater than a's %d", tb, ta)
	}
	_ = b.Unlock()
	_ = a.Unlock()
}

// TestTokenIsLeaseTransitions: through any elector, the fencing token on
// the leadership context is the Lease's spec.leaseTransitions, the holder
// identity names client and elector, and tokens strictly increase.
func TestTokenIsLeaseTransitions(t *testing.T) {
	ns := namespace(t)
	admin := cp.admin(t)
	const lease = 5 * time.Second
	es := []*elector{startElector(t, ns, "elector-0", lease), startElector(t, ns, "elector-1", lease), startElector(t, ns, "elector-2", lease)}
	const name = "tokens"
	var last uint64
	for i := range 9 {
		e := es[i%len(es)]
		id := fmt.Sprintf("client-%d", i)
		l := newLock(t, e, name, id)
		held, err := l.Lock(lockCtx(t))
		if err != nil {
			t.Fatalf("%s via %s: Lock: %v", id, e.id, err)
		}
		tok, ok := mpsync.FencingToken(held)
		lease := getLease(t, admin, ns, name)
		if !ok || tok != transitionsOf(lease) {
			t.Errorf("acquisition %d: token %d (ok=%v), Lease's leaseTransitions %d", i, tok, ok, transitionsOf(lease))
		}
		if want := id + "@" + e.id + "#"; !strings.HasPrefix(holderOf(lease), want) {
			t.Errorf("acquisition %d: holderIdentity %q, want prefix %q", i, holderOf(lease), want)
		}
		if tok <= last {
			t.Errorf("acquisition %d: token %d not greater than %d", i, tok, last)
		}
		last = tok
		require.NoError(t, l.Unlock())
	}
}
