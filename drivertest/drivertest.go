// Package drivertest is the conformance suite for mpsync transports and
// elector backends, in the manner of go-cloud's drivertest: the same named
// cases, run through the portable mpsync.Lock and mpsync.Election, against
// every transport and backend. A transport passes if RunConformanceTests
// passes against it.
//
// The suite never sleeps in place of a condition: it waits for what it
// needs to have happened (an Acquire call under way, an event, a context
// done), bounded by Timeout. Independent cases run in parallel, each on a
// lock name of its own; the goroutine-leak case runs alone after them.
package drivertest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mpsync/mpsync"
)

// Harness connects the suite to the system under test. Its methods are
// called from parallel subtests and must be safe for concurrent use.
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

// ExpirySlack is how long after its local deadline a leadership context
// whose renewals stopped may still take to report the end: the latency of
// a timer on a loaded machine. It ends no earlier than the deadline.
var ExpirySlack = time.Second

// poll is how often a wait re-checks a condition it cannot be told of.
const poll = 5 * time.Millisecond

// RunConformanceTests runs every case against h, each as a subtest. The
// cases run in parallel, but for NoGoroutineLeak, which runs alone last.
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
		{"LocalDeadlineExpiry", testLocalDeadlineExpiry},
		{"WatchCoalesces", testWatchCoalesces},
		{"ElectionEventOrder", testElectionEventOrder},
		{"ElectionFollowersLearnLeader", testElectionFollowers},
		{"ElectionHandover", testElectionHandover},
		{"EventsClosedAfterRun", testEventsClosed},
		{"ObserverFollows", testObserverFollows},
	}
	// The group returns once all its parallel subtests have finished.
	t.Run("Parallel", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				c.fn(t, h)
			})
		}
	})
	t.Run("NoGoroutineLeak", func(t *testing.T) { testNoGoroutineLeak(t, h) })
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
	return newLockOn(t, h.Transport(t), name, id)
}

func newLockOn(t *testing.T, tr mpsync.Transport, name, id string) *mpsync.Lock {
	t.Helper()
	l, err := mpsync.NewLock(name, mpsync.WithTransport(tr), mpsync.WithIdentity(id))
	require.NoError(t, err, "NewLock(%q)", name)
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
		require.FailNow(t, "leadership context still live", "%s: after %v", what, Timeout)
	}
}

// observed wraps a Transport to let the suite see its calls and to stop
// renewals, as a client whose elector stopped answering would see them.
type observed struct {
	mpsync.Transport
	acquiring atomic.Int32 // Acquire calls under way
	stall     bool         // Renew blocks until its context ends
	validity  atomic.Int64 // of the latest lease granted, in nanoseconds
}

func (o *observed) Acquire(ctx context.Context, name, identity string, wait bool) (mpsync.Lease, error) {
	o.acquiring.Add(1)
	defer o.acquiring.Add(-1)
	l, err := o.Transport.Acquire(ctx, name, identity, wait)
	if err != nil {
		return nil, err
	}
	o.validity.Store(int64(l.Validity()))
	if o.stall {
		return stalledLease{l}, nil
	}
	return l, nil
}

// stalledLease is a lease whose renewals never get an answer.
type stalledLease struct{ mpsync.Lease }

func (stalledLease) Renew(ctx context.Context) (time.Duration, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}

func testExclusion(t *testing.T, h Harness) {
	const contenders, rounds = 5, 6
	name := lockName(t)
	var (
		inside atomic.Int32
		mu     sync.Mutex
		tokens []uint64
		wg     sync.WaitGroup
	)
	for i := range contenders {
		l := newLock(t, h, name, fmt.Sprintf("contender-%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				held, err := l.Lock(ctxTimeout(t))
				if !assert.NoError(t, err, "%s: Lock", l.Identity()) {
					return
				}
				assert.Equal(t, int32(1), inside.Add(1), "%s: holders at once", l.Identity())
				tok, ok := mpsync.FencingToken(held)
				assert.True(t, ok, "%s: no fencing token on the leadership context", l.Identity())
				mu.Lock()
				tokens = append(tokens, tok)
				mu.Unlock()
				// Hold it across a reschedule, so that an overlapping
				// holder would be seen inside.
				time.Sleep(time.Millisecond)
				assert.NoError(t, held.Err(), "%s: lost the lock while holding it: %v", l.Identity(), context.Cause(held))
				inside.Add(-1)
				assert.NoError(t, l.Unlock(), "%s: Unlock", l.Identity())
			}
		}()
	}
	wg.Wait()
	require.Len(t, tokens, contenders*rounds, "acquisitions")
	for i := 1; i < len(tokens); i++ {
		assert.Greater(t, tokens[i], tokens[i-1], "token of acquisition %d against the one before it", i)
	}
}

func testTryLock(t *testing.T, h Harness) {
	name := lockName(t)
	a, b := newLock(t, h, name, "a"), newLock(t, h, name, "b")
	_, err := a.TryLock(ctxTimeout(t))
	require.NoError(t, err, "a.TryLock on a free lock")
	_, err = b.TryLock(ctxTimeout(t))
	require.ErrorIs(t, err, mpsync.ErrLocked, "b.TryLock while a holds")
	require.NoError(t, a.Unlock(), "a.Unlock")
	// After the release, TryLock succeeds (at once on one elector; as soon
	// as the release has propagated to b's elector with several).
	var held context.Context
	require.Eventually(t, func() bool {
		held, err = b.TryLock(ctxTimeout(t))
		if err != nil {
			require.ErrorIs(t, err, mpsync.ErrLocked, "b.TryLock after a.Unlock")
			return false
		}
		return true
	}, Timeout, poll, "b.TryLock after a.Unlock")
	assert.NoError(t, held.Err(), "b's leadership context is done at once: %v", context.Cause(held))
	assert.NoError(t, b.Unlock(), "b.Unlock")
}

func testLossByRevoke(t *testing.T, h Harness) {
	name := lockName(t)
	a, b := newLock(t, h, name, "a"), newLock(t, h, name, "b")
	held, err := a.Lock(ctxTimeout(t))
	require.NoError(t, err, "a.Lock")
	tokA, _ := mpsync.FencingToken(held)
	h.Revoke(t, name)
	waitDone(t, held, "after Revoke")
	assert.ErrorIs(t, context.Cause(held), mpsync.ErrLockLost, "cause after Revoke")
	assert.NoError(t, a.Unlock(), "a.Unlock after a loss")
	heldB, err := b.Lock(ctxTimeout(t))
	require.NoError(t, err, "b.Lock after the revoke")
	tokB, _ := mpsync.FencingToken(heldB)
	assert.Greater(t, tokB, tokA, "b's token against a's")
	assert.NoError(t, b.Unlock(), "b.Unlock")
}

func testReleaseOnUnlock(t *testing.T, h Harness) {
	name := lockName(t)
	a, b := newLock(t, h, name, "a"), newLock(t, h, name, "b")
	heldA, err := a.Lock(ctxTimeout(t))
	require.NoError(t, err, "a.Lock")
	got := make(chan context.Context, 1)
	go func() {
		held, err := b.Lock(ctxTimeout(t))
		assert.NoError(t, err, "b.Lock")
		got <- held
	}()
	require.NoError(t, a.Unlock(), "a.Unlock")
	require.Error(t, heldA.Err(), "a's leadership context is live after Unlock returned")
	assert.ErrorIs(t, context.Cause(heldA), mpsync.ErrUnlocked, "cause after Unlock")
	heldB := <-got
	if heldB == nil {
		return
	}
	tokA, _ := mpsync.FencingToken(heldA)
	tokB, _ := mpsync.FencingToken(heldB)
	assert.Greater(t, tokB, tokA, "b's token against a's")
	assert.NoError(t, b.Unlock(), "b.Unlock")
	assert.ErrorIs(t, b.Unlock(), mpsync.ErrNotHeld, "second b.Unlock")
}

func testReleaseOnContextEnd(t *testing.T, h Harness) {
	name := lockName(t)
	a, b := newLock(t, h, name, "a"), newLock(t, h, name, "b")
	ctx, cancel := context.WithCancel(ctxTimeout(t))
	heldA, err := a.Lock(ctx)
	require.NoError(t, err, "a.Lock")
	cancel()
	waitDone(t, heldA, "after its parent was cancelled")
	heldB, err := b.Lock(ctxTimeout(t))
	require.NoError(t, err, "b.Lock after a's context ended")
	assert.NoError(t, heldB.Err(), "b's leadership context is done at once: %v", context.Cause(heldB))
	assert.NoError(t, b.Unlock(), "b.Unlock")
	assert.NoError(t, a.Unlock(), "a.Unlock after its context ended")
}

func testCancelledWaiter(t *testing.T, h Harness) {
	name := lockName(t)
	a, c := newLock(t, h, name, "a"), newLock(t, h, name, "c")
	trB := &observed{Transport: h.Transport(t)}
	b := newLockOn(t, trB, name, "b")
	_, err := a.Lock(ctxTimeout(t))
	require.NoError(t, err, "a.Lock")
	ctx, cancel := context.WithCancel(ctxTimeout(t))
	errc := make(chan error, 1)
	go func() {
		_, err := b.Lock(ctx)
		errc <- err
	}()
	// b must be waiting in its transport's Acquire when it gives up.
	require.Eventually(t, func() bool { return trB.acquiring.Load() == 1 }, Timeout, poll,
		"b's Acquire call under way")
	cancel()
	require.ErrorIs(t, <-errc, context.Canceled, "b.Lock after its context was cancelled")
	require.NoError(t, a.Unlock(), "a.Unlock")
	// c must get the lock: b, gone, must not have been handed it.
	held, err := c.Lock(ctxTimeout(t))
	require.NoError(t, err, "c.Lock after b gave up waiting")
	assert.NoError(t, held.Err(), "c's leadership context is done at once: %v", context.Cause(held))
	assert.NoError(t, c.Unlock(), "c.Unlock")
}

func testTokensIncrease(t *testing.T, h Harness) {
	name := lockName(t)
	locks := []*mpsync.Lock{newLock(t, h, name, "a"), newLock(t, h, name, "b"), newLock(t, h, name, "c")}
	var last uint64
	for i := range 9 {
		l := locks[i%len(locks)]
		held, err := l.Lock(ctxTimeout(t))
		require.NoError(t, err, "%s.Lock", l.Identity())
		tok, ok := mpsync.FencingToken(held)
		assert.True(t, ok, "acquisition %d by %s has no token", i, l.Identity())
		assert.Greater(t, tok, last, "acquisition %d by %s", i, l.Identity())
		last = tok
		require.NoError(t, l.Unlock(), "%s.Unlock", l.Identity())
	}
	_, ok := mpsync.FencingToken(context.Background())
	assert.False(t, ok, "FencingToken(context.Background()) reported a token")
}

func testNotReentrant(t *testing.T, h Harness) {
	name := lockName(t)
	a := newLock(t, h, name, "a")
	assert.ErrorIs(t, a.Unlock(), mpsync.ErrNotHeld, "Unlock before Lock")
	_, err := a.Lock(ctxTimeout(t))
	require.NoError(t, err, "a.Lock")
	_, err = a.Lock(ctxTimeout(t))
	assert.ErrorIs(t, err, mpsync.ErrBusy, "second Lock")
	_, err = a.TryLock(ctxTimeout(t))
	assert.ErrorIs(t, err, mpsync.ErrBusy, "TryLock while held")
	require.NoError(t, a.Unlock(), "Unlock")
}

// testLocalDeadlineExpiry: a holder whose renewals get no answer keeps its
// leadership context until the local deadline (the request's send time
// plus the lease's validity) and loses it then, with ErrExpired, whatever
// the transport is doing.
func testLocalDeadlineExpiry(t *testing.T, h Harness) {
	name := lockName(t)
	tr := &observed{Transport: h.Transport(t), stall: true}
	a := newLockOn(t, tr, name, "a")
	before := time.Now()
	held, err := a.Lock(ctxTimeout(t))
	require.NoError(t, err, "a.Lock")
	validity := time.Duration(tr.validity.Load())
	require.Positive(t, validity, "the lease's validity")
	deadline, ok := mpsync.ValidUntil(held)
	require.True(t, ok, "ValidUntil on the leadership context")
	// The deadline counts from when the request left, which is between
	// the call to Lock and now.
	assert.False(t, deadline.Before(before.Add(validity)), "deadline %v is before Lock's call plus validity %v", deadline, validity)
	assert.False(t, deadline.After(time.Now().Add(validity)), "deadline %v is after now plus validity %v", deadline, validity)

	select {
	case <-held.Done():
	case <-time.After(time.Until(deadline) + Timeout):
		require.FailNow(t, "leadership context still live", "%v after its deadline", Timeout)
	}
	ended := time.Now()
	assert.False(t, ended.Before(deadline), "the term ended %v before its deadline", deadline.Sub(ended))
	assert.LessOrEqual(t, ended.Sub(deadline), ExpirySlack, "lateness of the end after the deadline")
	assert.ErrorIs(t, context.Cause(held), mpsync.ErrLockLost, "cause at the deadline")
	assert.ErrorIs(t, context.Cause(held), mpsync.ErrExpired, "cause at the deadline")
	assert.NoError(t, a.Unlock(), "Unlock after the expiry")
}

// testWatchCoalesces: a watcher whose callback is slow while the holder
// changes many times is next called with the latest state, not with each
// state it missed.
func testWatchCoalesces(t *testing.T, h Harness) {
	const changes = 6
	name := lockName(t)
	tr := h.Transport(t) // the slow watcher and the probe share one elector
	first := newLock(t, h, name, "holder-0")
	_, err := first.Lock(ctxTimeout(t))
	require.NoError(t, err, "holder-0.Lock")

	ctx, cancel := context.WithCancel(ctxTimeout(t))
	seen := make(chan mpsync.Holder, 64)
	resume := make(chan struct{})
	watched := make(chan error, 1)
	go func() {
		var once sync.Once
		watched <- tr.Watch(ctx, name, func(s mpsync.Holder) {
			seen <- s
			once.Do(func() { <-resume }) // slow on the first call
		})
	}()
	t.Cleanup(func() {
		cancel()
		assert.ErrorIs(t, <-watched, context.Canceled, "the slow Watch")
	})
	// Whatever the first state is (holder-0, or free on an elector that
	// has not yet learnt of it), the watcher is stuck in it.
	firstSeen := nextHolder(t, seen, func(mpsync.Holder) bool { return true })

	// Hand the lock down a chain of holders while the watcher is stuck.
	prev := first
	var last mpsync.Holder
	for i := 1; i <= changes; i++ {
		l := newLock(t, h, name, fmt.Sprintf("holder-%d", i))
		got := make(chan context.Context, 1)
		go func() {
			held, err := l.Lock(ctxTimeout(t))
			assert.NoError(t, err, "%s.Lock", l.Identity())
			got <- held
		}()
		require.NoError(t, prev.Unlock(), "%s.Unlock", prev.Identity())
		held := <-got
		require.NotNil(t, held, "%s holds", l.Identity())
		tok, _ := mpsync.FencingToken(held)
		last = mpsync.Holder{Identity: l.Identity(), Token: tok}
		prev = l
	}
	t.Cleanup(func() { assert.NoError(t, prev.Unlock(), "last holder's Unlock") })

	// A probe on the same elector sees the latest state: the slow
	// watcher's elector knows it too.
	pctx, pcancel := context.WithCancel(ctxTimeout(t))
	err = tr.Watch(pctx, name, func(s mpsync.Holder) {
		if s == last {
			pcancel()
		}
	})
	pcancel()
	require.ErrorIs(t, err, context.Canceled, "the probe Watch")

	close(resume)
	select {
	case s := <-seen:
		assert.Equal(t, last, s, "the slow watcher's next state after %d changes since %+v", 2*changes, firstSeen)
	case <-time.After(Timeout):
		require.FailNow(t, "slow watcher not called again", "within %v", Timeout)
	}
}

func nextHolder(t *testing.T, seen <-chan mpsync.Holder, ok func(mpsync.Holder) bool) mpsync.Holder {
	t.Helper()
	timeout := time.After(Timeout)
	for {
		select {
		case s := <-seen:
			if ok(s) {
				return s
			}
		case <-timeout:
			require.FailNow(t, "no such holder state", "within %v", Timeout)
		}
	}
}

// testObserverFollows: an Observer, on its own transport, reports the lock
// free, then each holder with its token, then free again with that token,
// never takes the lock, tells the latest state through Leader, refuses a
// second Run, and closes Events when its Run ends.
func testObserverFollows(t *testing.T, h Harness) {
	name := lockName(t)
	o, err := mpsync.NewObserver(name, mpsync.WithTransport(h.Transport(t)))
	require.NoError(t, err)
	_, known := o.Leader()
	assert.False(t, known, "Leader known before Run")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	next := func(what string) mpsync.Holder {
		t.Helper()
		select {
		case s, ok := <-o.Events():
			require.True(t, ok, "Events closed before %s", what)
			return s
		case <-time.After(Timeout):
			require.FailNow(t, "no observer event", "%s, within %v", what, Timeout)
		}
		return mpsync.Holder{}
	}
	assert.Empty(t, next("the first state").Identity, "a lock never held is free")

	a := newLock(t, h, name, "a")
	held, err := a.Lock(ctxTimeout(t))
	require.NoError(t, err)
	tok, _ := mpsync.FencingToken(held)
	assert.Equal(t, mpsync.Holder{Identity: "a", Token: tok}, next("a's acquisition"))
	latest, known := o.Leader()
	assert.True(t, known, "Leader known once an event came")
	assert.Equal(t, mpsync.Holder{Identity: "a", Token: tok}, latest)
	require.NoError(t, a.Unlock())
	assert.Equal(t, mpsync.Holder{Token: tok}, next("a's release"), "free, with the last token")

	assert.ErrorIs(t, o.Run(ctx), mpsync.ErrRunning)
	cancel()
	for range o.Events() {
	}
	assert.ErrorIs(t, <-done, context.Canceled)
}

func newElection(t *testing.T, h Harness, name, id string) *mpsync.Election {
	t.Helper()
	e, err := mpsync.NewElection(name, mpsync.WithTransport(h.Transport(t)), mpsync.WithIdentity(id))
	require.NoError(t, err, "NewElection(%q)", name)
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
				assert.ErrorIs(t, err, context.Canceled, "%s: Run", e.Identity())
			case <-time.After(Timeout):
				require.FailNow(t, "Run did not return", "%s: %v after its context ended", e.Identity(), Timeout)
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
			require.True(t, open, "%s: Events closed while waiting for %s", e.Identity(), what)
			if ok(ev) {
				return ev
			}
		case <-timeout:
			require.FailNow(t, "no such event", "%s: no %s within %v", e.Identity(), what, Timeout)
		}
	}
}

func isLeader(ev mpsync.Event) bool { return ev.Role == mpsync.Leader }

func testElectionEventOrder(t *testing.T, h Harness) {
	name := lockName(t)
	e := newElection(t, h, name, "solo")
	run(t, e)
	first := next(t, e, "Leader event", isLeader)
	require.Equal(t, "solo", first.Leader, "first Leader event's Leader")
	require.NotNil(t, first.Context, "first Leader event's Context")
	require.NoError(t, first.Context.Err(), "first Leader event's Context")
	tok, _ := mpsync.FencingToken(first.Context)
	assert.Equal(t, first.Token, tok, "the Context's token against Event.Token")
	h.Revoke(t, name)
	waitDone(t, first.Context, "leader after Revoke")
	// The next event must be a Follower event, then a new term.
	ev := next(t, e, "event after the loss", func(mpsync.Event) bool { return true })
	require.Equal(t, mpsync.Follower, ev.Role, "event after the loss")
	second := next(t, e, "second Leader event", isLeader)
	assert.Greater(t, second.Token, first.Token, "second term's token against the first's")
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
	assert.Equal(t, lead.Token, ev.Token, "b's Follower event's Token")
	assert.Nil(t, ev.Context, "b's Follower event's Context")
	stopA()
	assert.Error(t, lead.Context.Err(), "a's leadership context after its Run returned")
	ev = next(t, b, "Leader event after a stopped", isLeader)
	assert.Greater(t, ev.Token, lead.Token, "b's token against a's")
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
			require.FailNow(t, "no leader", "round %d: within %v", round, Timeout)
		}
		if last.Context != nil {
			require.Error(t, last.Context.Err(), "round %d: %s leads while %s's term is live", round, ev.Leader, last.Leader)
		}
		assert.Greater(t, ev.Token, last.Token, "round %d: token against the last term's", round)
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
	assert.Error(t, lead.Context.Err(), "leadership context after Run returned")
	for range e.Events() {
	}
	assert.ErrorIs(t, e.Run(context.Background()), mpsync.ErrRunning, "second Run")
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
	_, err := l.Lock(ctxTimeout(t))
	require.NoError(t, err, "Lock")
	require.NoError(t, l.Unlock(), "Unlock")
	ctx, cancel := context.WithCancel(context.Background())
	lost, err := l.Lock(ctx)
	require.NoError(t, err, "Lock")
	cancel()
	<-lost.Done()
	assert.NoError(t, l.Unlock(), "Unlock after the context ended")
	e := newElection(t, h, name, "b")
	stop := run(t, e)
	next(t, e, "Leader event", isLeader)
	stop()
}
