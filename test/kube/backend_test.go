package kube_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/kube"
)

// These tests drive the backend in process: several Backends with distinct
// identities stand for several electors, each with its own client and
// watch, all authenticated as the elector user.

// testBackend is a Backend whose connection to the API server can be cut,
// and whose Lease writes are counted.
type testBackend struct {
	*kube.Backend
	id  string
	cut atomic.Bool // when set, every new request fails as if the network were down
	// writes counts the PUT and POST requests answered, conflicts those
	// answered 409 Conflict
	writes, conflicts atomic.Int64
}

// cutter fails requests, and reads of responses still streaming, while
// tb.cut is set, and counts tb's writes.
type cutter struct {
	rt http.RoundTripper
	tb *testBackend
}

// errCut is the error of every request and every read of a response body
// while the network is cut.
var errCut = errors.New("test: network cut")

func (c cutter) RoundTrip(r *http.Request) (*http.Response, error) {
	if c.tb.cut.Load() {
		return nil, errCut
	}
	res, err := c.rt.RoundTrip(r)
	if err == nil {
		// A response still streaming (the Lease watch) is cut too.
		res.Body = cutBody{res.Body, c.tb}
	}
	if err == nil && (r.Method == http.MethodPut || r.Method == http.MethodPost) {
		c.tb.writes.Add(1)
		if res.StatusCode == http.StatusConflict {
			c.tb.conflicts.Add(1)
		}
	}
	return res, err
}

// cutBody is a response body that fails, dropping what it read, once its
// backend's network is cut.
type cutBody struct {
	io.ReadCloser
	tb *testBackend
}

func (b cutBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.tb.cut.Load() {
		return 0, errCut
	}
	return n, err
}

// newBackend starts a Backend for namespace ns as the elector user and
// waits until it is ready. It is closed at the end of the test.
func newBackend(t *testing.T, ns, id string, lease time.Duration) *testBackend {
	t.Helper()
	return newBackendConfig(t, kube.Config{Namespace: ns, Identity: id, LeaseDuration: lease})
}

// newBackendConfig is newBackend with more of the configuration: cfg
// without its Client and Logger.
func newBackendConfig(t *testing.T, cfg kube.Config) *testBackend {
	t.Helper()
	id := cfg.Identity
	c := needControlPlane(t)
	rc, err := kube.RESTConfig(c.electorKubeconfig)
	require.NoError(t, err)
	tb := &testBackend{id: id}
	rc.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return cutter{rt, tb} }
	cs, err := kubernetes.NewForConfig(rc)
	require.NoError(t, err)
	cfg.Client, cfg.Logger = cs, zaptest.NewLogger(t).Named(id)
	b, err := kube.New(cfg)
	require.NoError(t, err)
	tb.Backend = b
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(bg(), waitFor)
		defer cancel()
		if err := b.Close(ctx); err != nil && !tb.cut.Load() {
			t.Errorf("%s: Close: %v", id, err)
		}
	})
	require.Eventually(t, func() bool { return b.Ready(bg()) == nil }, waitFor, 20*time.Millisecond, id+" ready")
	return tb
}

func acquire(t *testing.T, b *testBackend, name, identity string, wait bool) backend.Grant {
	t.Helper()
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	g, err := b.Acquire(ctx, core.Request{Name: name, Identity: identity, Wait: wait})
	if err != nil {
		t.Fatalf("%s: Acquire(%s for %s): %v", b.id, name, identity, err)
	}
	return g
}

func release(t *testing.T, g backend.Grant) {
	t.Helper()
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	require.NoError(t, g.Release(ctx), "Release")
}

func getLease(t *testing.T, cs kubernetes.Interface, ns, name string) *coordinationv1.Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	l, err := cs.CoordinationV1().Leases(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get lease %s/%s: %v", ns, name, err)
	}
	return l
}

func holderOf(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

func transitionsOf(l *coordinationv1.Lease) uint64 {
	if l.Spec.LeaseTransitions == nil {
		return 0
	}
	return uint64(*l.Spec.LeaseTransitions)
}

// waitDone waits for g to end and returns when it did.
func waitDone(t *testing.T, g backend.Grant, what string) time.Time {
	t.Helper()
	select {
	case <-g.Done():
		return time.Now()
	case <-time.After(waitFor):
		t.Fatalf("%s: grant still live after %v", what, waitFor)
	}
	return time.Time{}
}

// watchUntil watches name on b until fn accepts a state.
func watchUntil(t *testing.T, b *testBackend, name, what string, ok func(core.Holder) bool) core.Holder {
	t.Helper()
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	var got core.Holder
	found := false
	err := b.Watch(ctx, name, func(h core.Holder) {
		if ok(h) {
			got, found = h, true
			cancel()
		}
	})
	if !found {
		t.Fatalf("%s: watch on %s ended with %v, no state %s", b.id, name, err, what)
	}
	return got
}

// TestBackendTokenIsLeaseTransitions: every acquisition, through any
// elector, writes a fresh holder identity naming client, elector and
// session, increments spec.leaseTransitions and reports it as the token; a
// renewal keeps it; a release clears the holder and keeps it.
func TestBackendTokenIsLeaseTransitions(t *testing.T) {
	ns := namespace(t)
	admin := cp.admin(t)
	const lease = 5 * time.Second
	bs := []*testBackend{newBackend(t, ns, "e0", lease), newBackend(t, ns, "e1", lease), newBackend(t, ns, "e2", lease)}
	const name = "tokens"
	var last uint64
	sessions := map[string]bool{}
	for i := range 9 {
		b := bs[i%len(bs)]
		client := fmt.Sprintf("client-%d", i)
		before := time.Now()
		g := acquire(t, b, name, client, true)
		l := getLease(t, admin, ns, name)
		if want := client + "@" + b.id + "#" + g.Session(); holderOf(l) != want {
			t.Errorf("acquisition %d: holderIdentity %q, want %q", i, holderOf(l), want)
		}
		if sessions[g.Session()] {
			t.Errorf("acquisition %d: session %q reused", i, g.Session())
		}
		sessions[g.Session()] = true
		if got := transitionsOf(l); got != g.Token() {
			t.Errorf("acquisition %d: token %d, but the Lease's leaseTransitions is %d", i, g.Token(), got)
		}
		if g.Token() <= last {
			t.Errorf("acquisition %d: token %d not greater than %d before it", i, g.Token(), last)
		}
		last = g.Token()
		if got := l.Labels[kube.ManagedByLabel]; got != kube.ManagedBy {
			t.Errorf("label %s = %q, want %q", kube.ManagedByLabel, got, kube.ManagedBy)
		}
		if l.Spec.LeaseDurationSeconds == nil || *l.Spec.LeaseDurationSeconds != 5 {
			t.Errorf("leaseDurationSeconds = %v, want 5", l.Spec.LeaseDurationSeconds)
		}
		// acquireTime and renewTime are this host's clock at the write;
		// allow a generous slack around it (a loaded machine).
		for field, ts := range map[string]*metav1.MicroTime{"acquireTime": l.Spec.AcquireTime, "renewTime": l.Spec.RenewTime} {
			if ts == nil || ts.Time.Before(before.Add(-time.Second)) || ts.Time.After(time.Now().Add(time.Second)) {
				t.Errorf("acquisition %d: %s = %v, want the time of the write (%v)", i, field, ts, before)
			}
		}

		acquired := *l.Spec.AcquireTime
		ctx, cancel := context.WithTimeout(bg(), waitFor)
		v, err := g.Renew(ctx)
		cancel()
		if err != nil || v != core.Validity(lease) {
			t.Fatalf("acquisition %d: Renew = %v, %v; want %v, nil", i, v, err, core.Validity(lease))
		}
		l = getLease(t, admin, ns, name)
		if transitionsOf(l) != g.Token() || !l.Spec.AcquireTime.Equal(&acquired) || l.Spec.RenewTime.Before(&acquired) {
			t.Errorf("after Renew: leaseTransitions %d (want %d), acquireTime %v (want %v), renewTime %v",
				transitionsOf(l), g.Token(), l.Spec.AcquireTime, acquired, l.Spec.RenewTime)
		}

		release(t, g)
		if g.Err() != nil {
			t.Errorf("Err after Release = %v, want nil", g.Err())
		}
		l = getLease(t, admin, ns, name)
		if holderOf(l) != "" || transitionsOf(l) != g.Token() {
			t.Errorf("after Release: holder %q, leaseTransitions %d; want no holder, %d", holderOf(l), transitionsOf(l), g.Token())
		}
		ctx, cancel = context.WithTimeout(bg(), waitFor)
		_, err = g.Renew(ctx)
		cancel()
		if !errors.Is(err, core.ErrLockLost) {
			t.Errorf("Renew after Release = %v, want ErrLockLost", err)
		}
	}
}

// TestBackendExclusion: contenders on three electors take one lock in
// turn; never two at once, and tokens increase in the order of holding.
func TestBackendExclusion(t *testing.T) {
	ns := namespace(t)
	bs := []*testBackend{newBackend(t, ns, "e0", 5*time.Second), newBackend(t, ns, "e1", 5*time.Second), newBackend(t, ns, "e2", 5*time.Second)}
	const name, perElector, rounds = "exclusion", 2, 4
	var (
		inside atomic.Int32
		mu     sync.Mutex
		tokens []uint64
		wg     sync.WaitGroup
	)
	for _, b := range bs {
		for c := range perElector {
			id := fmt.Sprintf("%s-c%d", b.id, c)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range rounds {
					ctx, cancel := context.WithTimeout(bg(), waitFor)
					g, err := b.Acquire(ctx, core.Request{Name: name, Identity: id, Wait: true})
					cancel()
					if err != nil {
						t.Errorf("%s: Acquire: %v", id, err)
						return
					}
					if n := inside.Add(1); n != 1 {
						t.Errorf("%s: %d holders at once", id, n)
					}
					mu.Lock()
					tokens = append(tokens, g.Token())
					mu.Unlock()
					if g.Err() != nil {
						t.Errorf("%s: grant ended while held: %v", id, g.Err())
					}
					inside.Add(-1)
					ctx, cancel = context.WithTimeout(bg(), waitFor)
					if err := g.Release(ctx); err != nil {
						t.Errorf("%s: Release: %v", id, err)
					}
					cancel()
				}
			}()
		}
	}
	wg.Wait()
	if got, want := len(tokens), len(bs)*perElector*rounds; got != want {
		t.Fatalf("%d acquisitions, want %d", got, want)
	}
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Errorf("token %d of acquisition %d not greater than %d before it", tokens[i], i, tokens[i-1])
		}
	}
}

// TestBackendHandoverByWatch: a waiter on another elector learns of a
// release from its watch, long before the lease could have expired.
func TestBackendHandoverByWatch(t *testing.T) {
	ns := namespace(t)
	const lease = 15 * time.Second // handover far below this is watch-driven
	a, b := newBackend(t, ns, "e0", lease), newBackend(t, ns, "e1", lease)
	const name = "handover"
	var times []time.Duration
	holders := []*testBackend{a, b}
	g := acquire(t, a, name, "first", true)
	for round := range 6 {
		from, to := holders[round%2], holders[(round+1)%2]
		// The waiter's elector has seen the current holder.
		watchUntil(t, to, name, "naming the holder", func(h core.Holder) bool { return h.Token == g.Token() && h.Identity != "" })
		got := make(chan backend.Grant, 1)
		go func() {
			ctx, cancel := context.WithTimeout(bg(), waitFor)
			defer cancel()
			ng, err := to.Acquire(ctx, core.Request{Name: name, Identity: fmt.Sprintf("round-%d", round), Wait: true})
			if err != nil {
				t.Errorf("round %d: %s: Acquire: %v", round, to.id, err)
			}
			got <- ng
		}()
		start := time.Now()
		release(t, g)
		ng := <-got
		if ng == nil {
			return
		}
		took := time.Since(start)
		times = append(times, took)
		if took > 3*time.Second {
			t.Errorf("round %d: handover %s -> %s took %v; a watch-driven handover takes milliseconds (lease %v)", round, from.id, to.id, took, lease)
		}
		if ng.Token() <= g.Token() {
			t.Errorf("round %d: token %d not greater than %d", round, ng.Token(), g.Token())
		}
		g = ng
	}
	release(t, g)
	slices.Sort(times)
	t.Logf("in-process handover release -> other elector's grant: min %s, median %s, max %s (%d rounds)",
		ms(times[0]), ms(times[len(times)/2]), ms(times[len(times)-1]), len(times))
}

// TestBackendWaited: a grant's Validity counts from the Acquire call, the
// time from the call to the write that granted it included (shrunk by the
// drift bound), so that the elector needs no renewal to give a waiter its
// full validity. Here that write is the holder's release, which hands the
// lock to the next waiter of its own elector (the same for a take after a
// wait: TestBackendNamedByOlderElector; a handover to another elector
// counts from the write of that elector's offer:
// TestBackendHandoverInOneWrite).
func TestBackendWaited(t *testing.T) {
	ns := namespace(t)
	const lease = 15 * time.Second
	a := newBackend(t, ns, "e0", lease)
	const name = "waited"
	t0 := time.Now()
	g := acquire(t, a, name, "first", false)
	if v, most := g.Validity(), core.WaitedValidity(lease, time.Since(t0)); v < core.Validity(lease) || v > most {
		t.Fatalf("a grant at once: Validity %v, want between %v and %v", v, core.Validity(lease), most)
	}
	got := make(chan backend.Grant, 1)
	called := make(chan time.Time, 1)
	t1 := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(bg(), waitFor)
		defer cancel()
		called <- time.Now()
		ng, err := a.Acquire(ctx, core.Request{Name: name, Identity: "second", Wait: true})
		assert.NoError(t, err, "Acquire")
		got <- ng
	}()
	// Hold the lock for a known time after second's Acquire is called:
	// that wait is what Waited must count.
	const hold = 300 * time.Millisecond
	timer := time.NewTimer(time.Until((<-called).Add(hold)))
	<-timer.C
	w0 := a.writes.Load()
	release(t, g)
	ng := <-got
	took := time.Since(t1)
	if ng == nil {
		return
	}
	defer release(t, ng)
	assert.Equal(t, int64(1), a.writes.Load()-w0, "Lease writes of the handover (the release, naming the next holder)")
	assert.Equal(t, "second@e0#"+ng.Session(), holderOf(getLease(t, cp.admin(t), ns, name)), "holder")
	v := ng.Validity()
	assert.GreaterOrEqual(t, v, core.WaitedValidity(lease, hold), "a grant after a wait: Validity, against the time the lock was held after the call")
	assert.LessOrEqual(t, v, core.WaitedValidity(lease, took), "a grant after a wait: Validity, against the time its Acquire took")
	t.Logf("validity %v of a grant whose Acquire took %v", v, took)
}

// TestBackendMaxLocks: an elector at its MaxLocks refuses one more lock at
// once, as unavailable and saying why, loses none it holds, and takes
// locks again when one is let go; the lock it refused stays free.
func TestBackendMaxLocks(t *testing.T) {
	ns := namespace(t)
	b := newBackendConfig(t, kube.Config{Namespace: ns, Identity: "e0", LeaseDuration: 15 * time.Second, MaxLocks: 2})
	other := newBackend(t, ns, "e1", 15*time.Second)
	g1 := acquire(t, b, "one", "c", false)
	g2 := acquire(t, b, "two", "c", false)
	for _, wait := range []bool{false, true} {
		ctx, cancel := context.WithTimeout(bg(), waitFor)
		g, err := b.Acquire(ctx, core.Request{Name: "three", Identity: "c", Wait: wait})
		cancel()
		if err == nil || !errors.Is(err, core.ErrUnavailable) || !strings.Contains(err.Error(), "holds 2 locks") {
			t.Fatalf("third Acquire (wait %v) = %v, %v; want an error wrapping ErrUnavailable that says it holds 2 locks", wait, g, err)
		}
	}
	for _, g := range []backend.Grant{g1, g2} {
		if g.Err() != nil {
			t.Fatalf("a lock held was lost: %v", g.Err())
		}
	}
	// Refused, not taken: another elector takes it at once.
	release(t, acquire(t, other, "three", "d", false))
	release(t, g1)
	release(t, acquire(t, b, "three", "c", false))
	release(t, g2)
	if got := kube.MaxLocksFor(kube.DefaultQPS, 15*time.Second); got != 180 {
		t.Errorf("MaxLocksFor(DefaultQPS, 15s) = %d, want 180", got)
	}
}

// TestBackendRevoke: an operator writing another holder into the Lease
// revokes the grant; others then wait out the lease duration before taking
// the foreign holder's lease.
func TestBackendRevoke(t *testing.T) {
	ns := namespace(t)
	admin := cp.admin(t)
	const lease = 3 * time.Second
	a, b := newBackend(t, ns, "e0", lease), newBackend(t, ns, "e1", lease)
	const name = "revoke"
	g := acquire(t, a, name, "victim", true)
	l := getLease(t, admin, ns, name)
	operator := "operator"
	l.Spec.HolderIdentity = &operator
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	if _, err := admin.CoordinationV1().Leases(ns).Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("operator update: %v", err)
	}
	revoked := time.Now()
	waitDone(t, g, "after the operator's update")
	if !errors.Is(g.Err(), core.ErrRevoked) {
		t.Errorf("Err = %v, want ErrRevoked", g.Err())
	}
	if _, err := g.Renew(ctx); !errors.Is(err, core.ErrLockLost) || !errors.Is(err, core.ErrRevoked) {
		t.Errorf("Renew after revoke = %v, want ErrLockLost wrapping ErrRevoked", err)
	}
	if err := g.Release(ctx); err != nil {
		t.Errorf("Release after revoke = %v, want nil", err)
	}
	watchUntil(t, b, name, "naming the operator", func(h core.Holder) bool { return h.Identity == operator && h.Token == g.Token() })
	if _, err := b.Acquire(ctx, core.Request{Name: name, Identity: "eager"}); !errors.Is(err, core.ErrLocked) {
		t.Fatalf("TryLock while the operator's lease is fresh = %v, want ErrLocked", err)
	}
	ng := acquire(t, b, name, "patient", true)
	took := time.Since(revoked)
	t.Logf("foreign holder's lease taken %s after the operator wrote it (lease %v)", ms(took), lease)
	// It must have waited out the lease (less the time the watch event
	// took to arrive, which was before the update's answer here).
	if took < lease-500*time.Millisecond {
		t.Errorf("the foreign lease was taken %v after it was written, before its duration %v", took, lease)
	}
	if ng.Token() <= g.Token() {
		t.Errorf("token %d not greater than %d", ng.Token(), g.Token())
	}
	release(t, ng)
}

// TestBackendCrashedHolder: the holder's elector loses the API server and
// renews nothing. Its grant ends at its local deadline, before another
// elector takes the lease, which it does about one lease duration after
// it last saw the Lease change.
func TestBackendCrashedHolder(t *testing.T) {
	ns := namespace(t)
	const lease = 3 * time.Second
	a, b := newBackend(t, ns, "e0", lease), newBackend(t, ns, "e1", lease)
	const name = "crash"
	g := acquire(t, a, name, "holder", true)
	watchUntil(t, b, name, "naming the holder", func(h core.Holder) bool { return h.Identity == "holder" })
	seen := time.Now()
	a.cut.Store(true)
	ng := acquire(t, b, name, "successor", true)
	took := time.Since(seen)
	select {
	case <-g.Done():
	default:
		t.Fatal("the successor holds the lock while the old grant is live")
	}
	if !errors.Is(g.Err(), core.ErrExpired) {
		t.Errorf("old grant's Err = %v, want ErrExpired", g.Err())
	}
	t.Logf("lease of a holder cut off from the API server taken %s after the successor's elector saw it (lease %v)", ms(took), lease)
	if took > lease+5*time.Second {
		t.Errorf("takeover took %v, want about the lease duration %v", took, lease)
	}
	release(t, ng)
}

// TestBackendExpiredGrantReleases: a holder that stops renewing (its
// client paused) loses its grant at the local deadline, and the elector
// then releases the Lease so that a waiter need not wait out the rest of
// the lease duration.
func TestBackendExpiredGrantReleases(t *testing.T) {
	ns := namespace(t)
	const lease = 4 * time.Second
	a, b := newBackend(t, ns, "e0", lease), newBackend(t, ns, "e1", lease)
	const name = "expiry"
	start := time.Now()
	g := acquire(t, a, name, "sleepy", true)
	ng := acquire(t, b, name, "successor", true)
	took := time.Since(start)
	select {
	case <-g.Done():
	default:
		t.Fatal("the successor holds the lock while the old grant is live")
	}
	if !errors.Is(g.Err(), core.ErrExpired) {
		t.Errorf("old grant's Err = %v, want ErrExpired", g.Err())
	}
	t.Logf("unrenewed grant (validity %v) handed over %s after it was taken", core.Validity(lease), ms(took))
	release(t, ng)
}

// TestBackendTryLock: without Wait, a held lock fails at once with
// ErrLocked naming the holder, on the holder's elector and on another.
func TestBackendTryLock(t *testing.T) {
	ns := namespace(t)
	a, b := newBackend(t, ns, "e0", 5*time.Second), newBackend(t, ns, "e1", 5*time.Second)
	const name = "trylock"
	g := acquire(t, a, name, "owner", false)
	watchUntil(t, b, name, "naming the owner", func(h core.Holder) bool { return h.Identity == "owner" })
	for _, x := range []*testBackend{a, b} {
		_, err := x.Acquire(bg(), core.Request{Name: name, Identity: "other"})
		if !errors.Is(err, core.ErrLocked) {
			t.Errorf("%s: TryLock of a held lock = %v, want ErrLocked", x.id, err)
		} else if x == b && !strings.Contains(err.Error(), `"owner"`) {
			t.Errorf("%s: ErrLocked %q does not name the holder", x.id, err)
		}
	}
	release(t, g)
	watchUntil(t, b, name, "free", func(h core.Holder) bool { return h.Identity == "" })
	g = acquire(t, b, name, "other", false)
	release(t, g)
}

// TestBackendCancelledWaiter: a waiter whose context ends returns
// ctx.Err() and is not handed the lock later.
func TestBackendCancelledWaiter(t *testing.T) {
	ns := namespace(t)
	a, b, c := newBackend(t, ns, "e0", 5*time.Second), newBackend(t, ns, "e1", 5*time.Second), newBackend(t, ns, "e2", 5*time.Second)
	const name = "cancel"
	g := acquire(t, a, name, "owner", true)
	ctx, cancel := context.WithCancel(bg())
	errc := make(chan error, 1)
	go func() {
		_, err := b.Acquire(ctx, core.Request{Name: name, Identity: "quitter", Wait: true})
		errc <- err
	}()
	watchUntil(t, b, name, "naming the owner", func(h core.Holder) bool { return h.Identity == "owner" })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Acquire = %v, want context.Canceled", err)
	}
	release(t, g)
	ng := acquire(t, c, name, "patient", true)
	if l := getLease(t, cp.admin(t), ns, name); !strings.HasPrefix(holderOf(l), "patient@e2#") {
		t.Errorf("holder %q, want patient@e2#...", holderOf(l))
	}
	release(t, ng)
}

// TestBackendLeaseWithoutUs: a Lease created by someone else (as client-go
// would) is respected on this elector's clock only. Its renewTime, far in
// the past or the future, decides nothing: a lease of 2 s renewed "a year
// ago" is not free at once, and one "renewed next year" is taken after 2 s.
func TestBackendLeaseWithoutUs(t *testing.T) {
	ns := namespace(t)
	admin := cp.admin(t)
	b := newBackend(t, ns, "e0", 5*time.Second)
	for _, c := range []struct {
		name  string
		renew time.Time
	}{
		{"renewed-long-ago", time.Now().AddDate(-1, 0, 0)},
		{"renewed-in-future", time.Now().AddDate(1, 0, 0)},
	} {
		t.Run(c.name, func(t *testing.T) {
			holder, secs, trans := "client-go-candidate", int32(2), int32(7)
			rt := metav1.NewMicroTime(c.renew)
			l := &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: c.name},
				Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &secs,
					AcquireTime: &rt, RenewTime: &rt, LeaseTransitions: &trans},
			}
			ctx, cancel := context.WithTimeout(bg(), waitFor)
			defer cancel()
			if _, err := admin.CoordinationV1().Leases(ns).Create(ctx, l, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			created := time.Now()
			h := watchUntil(t, b, c.name, "naming the candidate", func(h core.Holder) bool { return h.Identity != "" })
			if h.Identity != holder || h.Token != 7 {
				t.Errorf("Watch = %+v, want the foreign identity %q whole and token 7", h, holder)
			}
			if _, err := b.Acquire(ctx, core.Request{Name: c.name, Identity: "eager"}); !errors.Is(err, core.ErrLocked) {
				t.Fatalf("TryLock of a fresh foreign lease = %v, want ErrLocked", err)
			}
			g := acquire(t, b, c.name, "patient", true)
			if took := time.Since(created); took < 1500*time.Millisecond {
				t.Errorf("foreign lease of 2s taken %v after it was written", took)
			}
			if g.Token() != 8 {
				t.Errorf("token %d, want 8 (the candidate's leaseTransitions 7, plus one)", g.Token())
			}
			release(t, g)
			if l := getLease(t, admin, ns, c.name); l.Labels[kube.ManagedByLabel] != "" {
				t.Errorf("the elector labelled a Lease it did not create: %v", l.Labels)
			}
		})
	}
}

// TestBackendOperatorTouch: an unrelated change to a held Lease (a label)
// makes the next renewal conflict; the grant reads the Lease again, still
// finds itself, and carries on.
func TestBackendOperatorTouch(t *testing.T) {
	ns := namespace(t)
	admin := cp.admin(t)
	a := newBackend(t, ns, "e0", 5*time.Second)
	g := acquire(t, a, "touched", "owner", true)
	l := getLease(t, admin, ns, "touched")
	l.Labels["touched-by"] = "operator"
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	if _, err := admin.CoordinationV1().Leases(ns).Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Renew(ctx); err != nil {
		t.Fatalf("Renew after an unrelated change: %v", err)
	}
	if g.Err() != nil {
		t.Fatalf("grant ended: %v", g.Err())
	}
	release(t, g)
}

// TestBackendWatch: Watch reports the client identity and the token of
// each holder, and the last token once free.
func TestBackendWatch(t *testing.T) {
	ns := namespace(t)
	a, b := newBackend(t, ns, "e0", 5*time.Second), newBackend(t, ns, "e1", 5*time.Second)
	const name = "watched"
	ctx, cancel := context.WithCancel(bg())
	states := make(chan core.Holder, 64)
	done := make(chan error, 1)
	go func() { done <- b.Watch(ctx, name, func(h core.Holder) { states <- h }) }()
	next := func() core.Holder {
		select {
		case h := <-states:
			return h
		case <-time.After(waitFor):
			t.Fatalf("no state within %v", waitFor)
		}
		return core.Holder{}
	}
	if h := next(); h != (core.Holder{}) {
		t.Errorf("first state of a lock never taken = %+v, want zero", h)
	}
	g := acquire(t, a, name, "with@odd#chars", true)
	if h := next(); h != (core.Holder{Identity: "with@odd#chars", Token: g.Token()}) {
		t.Errorf("state while held = %+v, want the client's identity and token %d", h, g.Token())
	}
	release(t, g)
	if h := next(); h != (core.Holder{Token: g.Token()}) {
		t.Errorf("state after release = %+v, want free with token %d", h, g.Token())
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Watch = %v, want context.Canceled", err)
	}
}

// TestBackendClose: Close releases what the elector holds, fails its
// waiters and watches, and refuses later calls.
func TestBackendClose(t *testing.T) {
	ns := namespace(t)
	admin := cp.admin(t)
	a, b := newBackend(t, ns, "e0", 5*time.Second), newBackend(t, ns, "e1", 5*time.Second)
	g := acquire(t, a, "closing", "owner", true)
	g2 := acquire(t, b, "other", "owner", true)
	errc := make(chan error, 2)
	go func() {
		_, err := a.Acquire(bg(), core.Request{Name: "other", Identity: "waiter", Wait: true})
		errc <- err
	}()
	go func() { errc <- a.Watch(bg(), "closing", func(core.Holder) {}) }()
	watchUntil(t, a, "other", "naming owner", func(h core.Holder) bool { return h.Identity == "owner" })
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	require.NoError(t, a.Close(ctx), "Close")
	for range 2 {
		if err := <-errc; !errors.Is(err, core.ErrClosed) {
			t.Errorf("waiting Acquire or Watch at Close = %v, want ErrClosed", err)
		}
	}
	waitDone(t, g, "after Close")
	if !errors.Is(g.Err(), core.ErrClosed) {
		t.Errorf("grant's Err after Close = %v, want ErrClosed", g.Err())
	}
	if l := getLease(t, admin, ns, "closing"); holderOf(l) != "" {
		t.Errorf("holder after Close = %q, want released", holderOf(l))
	}
	if _, err := a.Acquire(ctx, core.Request{Name: "closing", Identity: "late"}); !errors.Is(err, core.ErrClosed) {
		t.Errorf("Acquire after Close = %v, want ErrClosed", err)
	}
	if err := a.Ready(ctx); !errors.Is(err, core.ErrClosed) {
		t.Errorf("Ready after Close = %v, want ErrClosed", err)
	}
	release(t, g2)
}

// TestBackendAPIServerPause: the API server stops answering (SIGSTOP) until
// the holder's grant has ended: its renewals fail and it ends at its local
// deadline, and Ready reports the outage meanwhile. When the server returns,
// the electors recover by themselves: the waiter on the other elector gets
// the lock, and only after the old grant ended.
func TestBackendAPIServerPause(t *testing.T) {
	ns := namespace(t)
	const lease = 3 * time.Second
	a, b := newBackend(t, ns, "e0", lease), newBackend(t, ns, "e1", lease)
	const name = "outage"
	g := acquire(t, a, name, "holder", true)
	renewing := make(chan struct{})
	go func() { // the SDK's renewal loop, reduced
		defer close(renewing)
		for {
			select {
			case <-g.Done():
				return
			case <-time.After(core.Validity(lease) / 3):
			}
			ctx, cancel := context.WithTimeout(bg(), time.Second)
			_, _ = g.Renew(ctx)
			cancel()
		}
	}()
	watchUntil(t, b, name, "naming the holder", func(h core.Holder) bool { return h.Identity == "holder" })
	type result struct {
		g  backend.Grant
		at time.Time
	}
	got := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(bg(), 3*waitFor)
		defer cancel()
		ng, err := b.Acquire(ctx, core.Request{Name: name, Identity: "successor", Wait: true})
		assert.NoError(t, err, "waiter")
		got <- result{ng, time.Now()}
	}()

	apiserver, err := os.FindProcess(cp.apiserverPID)
	require.NoError(t, err)
	resume := sync.OnceFunc(func() {
		assert.NoError(t, apiserver.Signal(syscall.SIGCONT), "SIGCONT to the API server")
	})
	t.Cleanup(resume)
	require.NoError(t, apiserver.Signal(syscall.SIGSTOP), "SIGSTOP to the API server")
	paused := time.Now()
	ended := waitDone(t, g, "while the API server is paused")
	if !errors.Is(g.Err(), core.ErrExpired) {
		t.Errorf("holder's Err = %v, want ErrExpired", g.Err())
	}
	ctx, cancel := context.WithTimeout(bg(), time.Second)
	if err := a.Ready(ctx); err == nil {
		t.Error("Ready = nil while the API server is paused")
	}
	cancel()
	resume()
	resumed := time.Now()
	<-renewing
	r := <-got
	if r.g == nil {
		return
	}
	if !ended.Before(r.at) {
		t.Errorf("the successor got the lock at %v, before the old grant ended at %v", r.at, ended)
	}
	t.Logf("API server paused for %s; holder's grant ended %s into the pause; successor held the lock %s after the server returned",
		ms(resumed.Sub(paused)), ms(ended.Sub(paused)), ms(r.at.Sub(resumed)))
	require.Eventually(t, func() bool { return a.Ready(bg()) == nil }, waitFor, 20*time.Millisecond, "e0 ready again")
	release(t, r.g)
	g = acquire(t, a, name, "holder-again", true)
	release(t, g)
}
