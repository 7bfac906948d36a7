// Package drivertest is the conformance suite for mpsync transports and
// elector backends, in the manner of go-cloud's drivertest: the same named
// cases, run through the portable mpsync.Lock and mpsync.Election, against
// every transport and backend. A transport passes if RunConformanceTests
// passes against it.
package drivertest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mpsync/mpsync"
)

// Harness connects the suite to the system under test.
type Harness interface {
	// Transport returns a new transport to the system under test. Each
	// call stands for a separate client process; with several electors,
	// successive calls should spread over them. A transport that keeps
	// connections (an HTTPTransport) is closed by a t.Cleanup that
	// Transport registers.
	Transport(t *testing.T) mpsync.Transport
	// Revoke makes the current holder of the lock name lose it as a real
	// fault would (an operator or another party taking the lease).
	Revoke(t *testing.T, name string)
}

// Timeout bounds every wait in the suite. Waits end as soon as their
// condition holds; the bound only turns a hang into a failure.
var Timeout = 30 * time.Second

// RunConformanceTests runs every case against h, each as a subtest.
func RunConformanceTests(t *testing.T, h Harness) {
	cases := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"Exclusion", testExclusion},
		{"TryLock", testTryLock},
		{"LossByRevoke", testLossByRevoke},
		{"ReleaseOnUnlock", testReleaseOnUnlock},
		{"ReleaseOnContextEnd", testReleaseOnContextEnd},
		{"CancelledWaiterHoldsNothing", testCancelledWaiter},
		{"TokensIncrease", testTokensIncrease},
		{"NotReentrant", testNotReentrant},
		{"ElectionEventOrder", testElectionEventOrder},
		{"ElectionFollowersLearnLeader", testElectionFollowers},
		{"ElectionHandover", testElectionHandover},
		{"EventsClosedAfterRun", testEventsClosed},
		{"NoGoroutineLeak", testNoGoroutineLeak},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, h) })
	}
}

// lockName returns a fresh lock name for the test, so that the suite can
// run again and again against one backend.
func lockName(t *testing.T) string {
	base := strings.ToLower(t.Name())
	base = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, base)
	base = strings.Trim(base, "-")
	if len(base) > 40 {
		base = base[len(base)-40:]
	}
	return strings.Trim(fmt.Sprintf("%s-%08x", base, rand.Uint32()), "-")
}

func newLock(t *testing.T, h Harness, name, id string) *mpsync.Lock {
	t.Helper()
	l, err := mpsync.NewLock(name, mpsync.WithTransport(h.Transport(t)), mpsync.WithIdentity(id))
	if err != nil {
		t.Fatalf("NewLock(%q): %v", name, err)
	}
	return l
}

func ctxTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	t.Cleanup(cancel)
	return ctx
}

// waitDone fails the test unless ctx is done within Timeout.
func waitDone(t *testing.T, ctx context.Context, what string) {
	t.Helper()
	select {
	case <-ctx.Done():
	case <-time.After(Timeout):
		t.Fatalf("%s: leadership context still live after %v", what, Timeout)
	}
}

func testExclusion(t *testing.T, h Harness) {
	const contenders, rounds = 5, 6
	name := lockName(t)
	var (
		inside   atomic.Int32
		mu       sync.Mutex
		tokens   []uint64
		failures atomic.Int32
		wg       sync.WaitGroup
	)
	for i := range contenders {
		l := newLock(t, h, name, fmt.Sprintf("contender-%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				held, err := l.Lock(ctxTimeout(t))
				if err != nil {
					t.Errorf("%s: Lock: %v", l.Identity(), err)
					return
				}
				if n := inside.Add(1); n != 1 {
					failures.Add(1)
					t.Errorf("%s: %d holders at once", l.Identity(), n)
				}
				tok, ok := mpsync.FencingToken(held)
				if !ok {
					t.Errorf("%s: no fencing token on the leadership context", l.Identity())
				}
				mu.Lock()
				tokens = append(tokens, tok)
				mu.Unlock()
				time.Sleep(time.Millisecond) // hold it for a moment
				if held.Err() != nil {
					t.Errorf("%s: lost the lock while holding it: %v", l.Identity(), context.Cause(held))
				}
				inside.Add(-1)
				if err := l.Unlock(); err != nil {
					t.Errorf("%s: Unlock: %v", l.Identity(), err)
				}
			}
		}()
	}
	wg.Wait()
	if got, want := len(tokens), contenders*rounds; got != want {
		t.Fatalf("%d acquisitions, want %d", got, want)
	}
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Errorf("token %d of acquisition %d is not greater than %d before it", tokens[i], i, tokens[i-1])
		}
	}
}

func testTryLock(t *testing.T, h Harness) {
	name := lockName(t)
	a, b := newLock(t, h, name, "a"), newLock(t, h, name, "b")
	if _, err := a.TryLock(ctxTimeout(t)); err != nil {
		t.Fatalf("a.TryLock on a free lock: %v", err)
	}
	if _, err := b.TryLock(ctxTimeout(t)); !errors.Is(err, mpsync.ErrLocked) {
		t.Fatalf("b.TryLock while a holds: got %v, want ErrLocked", err)
	}
	if err := a.Unlock(); err != nil {
		t.Fatalf("a.Unlock: %v", err)
	}
	// After the release, TryLock succeeds (at once on one elector; as soon
	// as the release has propagated to b's elector with several).
	deadline := time.Now().Add(Timeout)
	for {
		held, err := b.TryLock(ctxTimeout(t))
		if err == nil {
			if held.Err() != nil {
				t.Fatalf("b's leadership context is done at once: %v", context.Cause(held))
			}
			break
		}
		if !errors.Is(err, mpsync.ErrLocked) || time.Now().After(deadline) {
			t.Fatalf("b.TryLock after a.Unlock: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := b.Unlock(); err != nil {
		t.Fatalf("b.Unlock: %v", err)
	}
}

func testLossByRevoke(t *testing.T, h Harness) {
	name := lockName(t)
	a, b := newLock(t, h, name, "a"), newLock(t, h, name, "b")
	held, err := a.Lock(ctxTimeout(t))
	if err != nil {
		t.Fatalf("a.Lock: %v", err)
	}
	tokA, _ := mpsync.FencingToken(held)
	h.Revoke(t, name)
	waitDone(t, held, "after Revoke")
	if cause := context.Cause(held); !errors.Is(cause, mpsync.ErrLockLost) {
		t.Errorf("cause after Revoke = %v, want ErrLockLost", cause)
	}
	if err := a.Unlock(); err != nil {
		t.Errorf("a.Unlock after a loss: %v, want nil", err)
	}
	heldB, err := b.Lock(ctxTimeout(t))
	if err != nil {
		t.Fatalf("b.Lock after the revoke: %v", err)
	}
	if tokB, _ := mpsync.FencingToken(heldB); tokB <= tokA {
		t.Errorf("b's token %d is not greater than a's %d", tokB, tokA)
	}
	b.Unlock()
}

func testReleaseOnUnlock(t *testing.T, h Harness) {
	name := lockName(t)
	a, b := newLock(t, h, name, "a"), newLock(t, h, name, "b")
	heldA, err := a.Lock(ctxTimeout(t))
	if err != nil {
		t.Fatalf("a.Lock: %v", err)
	}
	got := make(chan context.Context, 1)
	go func() {
		held, err := b.Lock(ctxTimeout(t))
		if err != nil {
			t.Errorf("b.Lock: %v", err)
		}
		got <- held
	}()
	if err := a.Unlock(); err != nil {
		t.Fatalf("a.Unlock: %v", err)
	}
	if heldA.Err() == nil {
		t.Fatal("a's leadership context is live after Unlock returned")
	}
	if cause := context.Cause(heldA); !errors.Is(cause, mpsync.ErrUnlocked) {
		t.Errorf("cause after Unlock = %v, want ErrUnlocked", cause)
	}
	heldB := <-got
	if heldB == nil {
		return
	}
	tokA, _ := mpsync.FencingToken(heldA)
	if tokB, _ := mpsync.FencingToken(heldB); tokB <= tokA {
		t.Errorf("b's token %d is not greater than a's %d", tokB, tokA)
	}
	if err := b.Unlock(); err != nil {
		t.Errorf("b.Unlock: %v", err)
	}
	if err := b.Unlock(); !errors.Is(err, mpsync.ErrNotHeld) {
		t.Errorf("second b.Unlock = %v, want ErrNotHeld", err)
	}
}

func testReleaseOnContextEnd(t *testing.T, h Harness) {
	name := lockName(t)
	a, b := newLock(t, h, name, "a"), newLock(t, h, name, "b")
	ctx, cancel := context.WithCancel(ctxTimeout(t))
	heldA, err := a.Lock(ctx)
	if err != nil {
		t.Fatalf("a.Lock: %v", err)
	}
	cancel()
	waitDone(t, heldA, "after its parent was cancelled")
	heldB, err := b.Lock(ctxTimeout(t))
	if err != nil {
		t.Fatalf("b.Lock after a's context ended: %v", err)
	}
	if heldB.Err() != nil {
		t.Fatalf("b's leadership context is done at once: %v", context.Cause(heldB))
	}
	b.Unlock()
	a.Unlock()
}

func testCancelledWaiter(t *testing.T, h Harness) {
	name := lockName(t)
	a, b, c := newLock(t, h, name, "a"), newLock(t, h, name, "b"), newLock(t, h, name, "c")
	if _, err := a.Lock(ctxTimeout(t)); err != nil {
		t.Fatalf("a.Lock: %v", err)
	}
	ctx, cancel := context.WithCancel(ctxTimeout(t))
	errc := make(chan error, 1)
	go func() {
		_, err := b.Lock(ctx)
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond) // let b's request reach the elector, if it will
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("b.Lock after its context was cancelled = %v, want context.Canceled", err)
	}
	if err := a.Unlock(); err != nil {
		t.Fatalf("a.Unlock: %v", err)
	}
	// c must get the lock: b, gone, must not have been handed it.
	held, err := c.Lock(ctxTimeout(t))
	if err != nil {
		t.Fatalf("c.Lock after b gave up waiting: %v", err)
	}
	if held.Err() != nil {
		t.Fatalf("c's leadership context is done at once: %v", context.Cause(held))
	}
	c.Unlock()
}

func testTokensIncrease(t *testing.T, h Harness) {
	name := lockName(t)
	locks := []*mpsync.Lock{newLock(t, h, name, "a"), newLock(t, h, name, "b"), newLock(t, h, name, "c")}
	var last uint64
	for i := range 9 {
		l := locks[i%len(locks)]
		held, err := l.Lock(ctxTimeout(t))
		if err != nil {
			t.Fatalf("%s.Lock: %v", l.Identity(), err)
		}
		tok, ok := mpsync.FencingToken(held)
		if !ok || tok <= last {
			t.Errorf("acquisition %d by %s: token %d (ok=%v), want > %d", i, l.Identity(), tok, ok, last)
		}
		last = tok
		if err := l.Unlock(); err != nil {
			t.Fatalf("%s.Unlock: %v", l.Identity(), err)
		}
	}
	if _, ok := mpsync.FencingToken(context.Background()); ok {
		t.Error("FencingToken(context.Background()) reported a token")
	}
}

func testNotReentrant(t *testing.T, h Harness) {
	name := lockName(t)
	a := newLock(t, h, name, "a")
	if err := a.Unlock(); !errors.Is(err, mpsync.ErrNotHeld) {
		t.Errorf("Unlock before Lock = %v, want ErrNotHeld", err)
	}
	if _, err := a.Lock(ctxTimeout(t)); err != nil {
		t.Fatalf("a.Lock: %v", err)
	}
	if _, err := a.Lock(ctxTimeout(t)); !errors.Is(err, mpsync.ErrBusy) {
		t.Errorf("second Lock = %v, want ErrBusy", err)
	}
	if _, err := a.TryLock(ctxTimeout(t)); !errors.Is(err, mpsync.ErrBusy) {
		t.Errorf("TryLock while held = %v, want ErrBusy", err)
	}
	if err := a.Unlock(); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
}

func newElection(t *testing.T, h Harness, name, id string) *mpsync.Election {
	t.Helper()
	e, err := mpsync.NewElection(name, mpsync.WithTransport(h.Transport(t)), mpsync.WithIdentity(id))
	if err != nil {
		t.Fatalf("NewElection(%q): %v", name, err)
	}
	return e
}

// run starts e.Run and returns a function that stops it and checks that
// it returned and closed Events.
func run(t *testing.T, e *mpsync.Election) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- e.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-errc:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("%s: Run = %v, want context.Canceled", e.Identity(), err)
				}
			case <-time.After(Timeout):
				t.Fatalf("%s: Run did not return %v after its context ended", e.Identity(), Timeout)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// next returns the next event that satisfies ok, failing after Timeout.
func next(t *testing.T, e *mpsync.Election, what string, ok func(mpsync.Event) bool) mpsync.Event {
	t.Helper()
	timeout := time.After(Timeout)
	for {
		select {
		case ev, open := <-e.Events():
			if !open {
				t.Fatalf("%s: Events closed while waiting for %s", e.Identity(), what)
			}
			if ok(ev) {
				return ev
			}
		case <-timeout:
			t.Fatalf("%s: no %s within %v", e.Identity(), what, Timeout)
		}
	}
}

func isLeader(ev mpsync.Event) bool { return ev.Role == mpsync.Leader }

func testElectionEventOrder(t *testing.T, h Harness) {
	name := lockName(t)
	e := newElection(t, h, name, "solo")
	run(t, e)
	first := next(t, e, "Leader event", isLeader)
	if first.Leader != "solo" || first.Context == nil || first.Context.Err() != nil {
		t.Fatalf("first Leader event = %+v, want Leader %q and a live Context", first, "solo")
	}
	if tok, _ := mpsync.FencingToken(first.Context); tok != first.Token {
		t.Errorf("Event.Token %d, but the Context carries %d", first.Token, tok)
	}
	h.Revoke(t, name)
	waitDone(t, first.Context, "leader after Revoke")
	// The next event must be a Follower event, then a new term.
	ev := next(t, e, "event after the loss", func(mpsync.Event) bool { return true })
	if ev.Role != mpsync.Follower {
		t.Fatalf("event after the loss = %v, want a Follower event", ev.Role)
	}
	second := next(t, e, "second Leader event", isLeader)
	if second.Token <= first.Token {
		t.Errorf("second term's token %d is not greater than the first's %d", second.Token, first.Token)
	}
}

func testElectionFollowers(t *testing.T, h Harness) {
	name := lockName(t)
	a := newElection(t, h, name, "a")
	stopA := run(t, a)
	lead := next(t, a, "Leader event", isLeader)
	b := newElection(t, h, name, "b")
	run(t, b)
	ev := next(t, b, "Follower event naming a", func(ev mpsync.Event) bool {
		return ev.Role == mpsync.Follower && ev.Leader == "a"
	})
	if ev.Token != lead.Token || ev.Context != nil {
		t.Errorf("b's Follower event = %+v, want Token %d and no Context", ev, lead.Token)
	}
	stopA()
	if lead.Context.Err() == nil {
		t.Error("a's leadership context is live after its Run returned")
	}
	ev = next(t, b, "Leader event after a stopped", isLeader)
	if ev.Token <= lead.Token {
		t.Errorf("b's token %d is not greater than a's %d", ev.Token, lead.Token)
	}
}

func testElectionHandover(t *testing.T, h Harness) {
	// Three candidates; the leader of each round stops; no two Leader
	// contexts are ever live at once and terms' tokens increase.
	name := lockName(t)
	type cand struct {
		e    *mpsync.Election
		stop func()
	}
	var cands []*cand
	for i := range 3 {
		e := newElection(t, h, name, fmt.Sprintf("cand-%d", i))
		cands = append(cands, &cand{e: e, stop: run(t, e)})
	}
	leaders := make(chan mpsync.Event, 16)
	var wg sync.WaitGroup
	for _, c := range cands {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ev := range c.e.Events() {
				if ev.Role == mpsync.Leader {
					leaders <- ev
				}
			}
		}()
	}
	var last mpsync.Event
	for round := range 3 {
		var ev mpsync.Event
		select {
		case ev = <-leaders:
		case <-time.After(Timeout):
			t.Fatalf("round %d: no leader within %v", round, Timeout)
		}
		if last.Context != nil && last.Context.Err() == nil {
			t.Fatalf("round %d: %s leads while %s's term is live", round, ev.Leader, last.Leader)
		}
		if ev.Token <= last.Token {
			t.Errorf("round %d: token %d not greater than %d", round, ev.Token, last.Token)
		}
		last = ev
		for _, c := range cands {
			if c.e.Identity() == ev.Leader {
				c.stop()
			}
		}
	}
	wg.Wait()
}

func testEventsClosed(t *testing.T, h Harness) {
	e := newElection(t, h, lockName(t), "a")
	stop := run(t, e)
	lead := next(t, e, "Leader event", isLeader)
	stop()
	if lead.Context.Err() == nil {
		t.Error("leadership context live after Run returned")
	}
	for range e.Events() {
	}
	if err := e.Run(context.Background()); !errors.Is(err, mpsync.ErrRunning) {
		t.Errorf("second Run = %v, want ErrRunning", err)
	}
}

func testNoGoroutineLeak(t *testing.T, h Harness) {
	opts := []goleak.Option{goleak.IgnoreCurrent()}
	// Checked after the test's other cleanups, which close the harness's
	// transports and with them their idle connections.
	t.Cleanup(func() {
		if err := goleak.Find(opts...); err != nil {
			t.Error(err)
		}
	})
	name := lockName(t)
	l := newLock(t, h, name, "a")
	held, err := l.Lock(ctxTimeout(t))
	if err != nil {
		t.Fatalf("Lock: %v", err)
	}
	_ = held
	if err := l.Unlock(); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	lost, err := l.Lock(ctx)
	if err != nil {
		t.Fatalf("Lock: %v", err)
	}
	cancel()
	<-lost.Done()
	l.Unlock()
	e := newElection(t, h, name, "b")
	stop := run(t, e)
	next(t, e, "Leader event", isLeader)
	stop()
}
