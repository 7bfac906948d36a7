package kube_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/kube"
)

// These tests cover the turns electors take at a contended lock: the queue
// of waiting electors kept in the Lease (kube.QueueAnnotation), their
// offers (kube.OffersAnnotation), to which a release hands the Lease in its
// one write, and the successor a release names when the next elector made
// no offer (kube.SuccessorAnnotation).

// queueOf is the elector identities in the Lease's queue, in order.
func queueOf(t *testing.T, l *coordinationv1.Lease) []string {
	t.Helper()
	s, ok := l.Annotations[kube.QueueAnnotation]
	if !ok {
		return nil
	}
	var q []string
	require.NoError(t, json.Unmarshal([]byte(s), &q), "queue annotation %q", s)
	for i, m := range q {
		q[i] = electorOf(m)
	}
	return q
}

// electorOf is the elector identity of a queue member, "<identity>#<instance>".
func electorOf(member string) string {
	id, _, _ := strings.Cut(member, "#")
	return id
}

// waitQueued waits until the Lease's queue holds the electors want, in order.
func waitQueued(t *testing.T, ns, name string, want ...string) {
	t.Helper()
	admin := cp.admin(t)
	require.Eventually(t, func() bool {
		return slices.Equal(queueOf(t, getLease(t, admin, ns, name)), want)
	}, waitFor, 20*time.Millisecond, "queue of %s/%s = %v", ns, name, want)
}

// served is a grant and the elector that made it.
type served struct {
	by *testBackend
	g  backend.Grant
}

// wait starts a waiting Acquire of name on b whose grant (or failure, a
// nil grant) arrives on out.
func wait(t *testing.T, ctx context.Context, b *testBackend, name, identity string, out chan<- served) {
	go func() {
		g, err := b.Acquire(ctx, core.Request{Name: name, Identity: identity, Wait: true})
		if err != nil && ctx.Err() == nil {
			t.Errorf("%s: Acquire(%s for %s): %v", b.id, name, identity, err)
		}
		out <- served{b, g}
	}()
}

// queueOne starts two electors in ns, e0 and e1, with lease duration
// lease: e0 takes name for "holder", then e1 queues a waiter "next"
// (waiting until ctx ends) whose grant arrives on got. called is a moment
// just before the waiter's Acquire call.
func queueOne(t *testing.T, ctx context.Context, ns, name string, lease time.Duration) (a, b *testBackend, g backend.Grant, got chan served, called time.Time) {
	t.Helper()
	a, b = newBackend(t, ns, "e0", lease), newBackend(t, ns, "e1", lease)
	g = acquire(t, a, name, "holder", true)
	got = make(chan served, 1)
	called = time.Now()
	wait(t, ctx, b, name, "next", got)
	waitQueued(t, ns, name, "e1")
	return a, b, g, got, called
}

// queueTwo starts three electors in ns, e0, e1 and e2, with lease
// duration lease: e0 takes name for "holder", then e1 and e2 each queue a
// waiter (first and second, in that order; waiting until ctx ends) whose
// grants arrive on got.
func queueTwo(t *testing.T, ctx context.Context, ns, name string, lease time.Duration, first, second string) (a, b, c *testBackend, g backend.Grant, got chan served) {
	t.Helper()
	a, b, c = newBackend(t, ns, "e0", lease), newBackend(t, ns, "e1", lease), newBackend(t, ns, "e2", lease)
	g = acquire(t, a, name, "holder", true)
	got = make(chan served, 2)
	wait(t, ctx, b, name, first, got)
	waitQueued(t, ns, name, "e1")
	wait(t, ctx, c, name, second, got)
	waitQueued(t, ns, name, "e1", "e2")
	return a, b, c, g, got
}

// queueQuitter starts three electors in ns, e0, e1 and e2, with lease
// duration lease: e0 takes name for "holder" and e1 queues a waiter,
// "quitter", that leaves when quit is called (which returns once it has).
func queueQuitter(t *testing.T, ns, name string, lease time.Duration) (a, b, c *testBackend, g backend.Grant, quit func()) {
	t.Helper()
	a, b, c = newBackend(t, ns, "e0", lease), newBackend(t, ns, "e1", lease), newBackend(t, ns, "e2", lease)
	g = acquire(t, a, name, "holder", true)
	ctx, stop := context.WithCancel(bg())
	left := make(chan served, 1)
	wait(t, ctx, b, name, "quitter", left)
	waitQueued(t, ns, name, "e1")
	return a, b, c, g, func() {
		stop()
		<-left
	}
}

// takenBy receives the next grant from got and checks that want made it,
// with a token greater than that of after.
func takenBy(t *testing.T, got <-chan served, want *testBackend, after backend.Grant) backend.Grant {
	t.Helper()
	s := <-got
	require.NotNil(t, s.g, "a waiter failed")
	assert.Same(t, want, s.by, "the lock went to %s", want.id)
	assert.Greater(t, s.g.Token(), after.Token(), "token")
	return s.g
}

// writes sums the Lease writes, and the 409 Conflicts among them, of bs.
func writes(bs ...*testBackend) (n, conflicts int64) {
	for _, b := range bs {
		n += b.writes.Load()
		conflicts += b.conflicts.Load()
	}
	return n, conflicts
}

// seenBy waits until b's watch has seen every write to the Leases of ns
// made so far: it takes a marker lock on another elector, c, and watches
// b until the marker shows. One watch delivers the namespace's events in
// order, so b's view of every Lease is then at least as new as the
// marker's write.
func seenBy(t *testing.T, b, c *testBackend, marker string) {
	t.Helper()
	g := acquire(t, c, marker, "marker", false)
	watchUntil(t, b, marker, "naming the marker's holder", func(h core.Holder) bool { return h.Identity == "marker" })
	release(t, g)
}

// TestBackendTurnsRoundRobin: waiters on three electors are served in
// turn, one elector after another in the order they queued, each handover
// one write (the release, which names the next elector's offer as the
// holder) and no conflict, and tokens strictly increase.
func TestBackendTurnsRoundRobin(t *testing.T) {
	ns := namespace(t)
	const lease = 15 * time.Second
	holder := newBackend(t, ns, "e-holder", lease)
	els := []*testBackend{newBackend(t, ns, "e0", lease), newBackend(t, ns, "e1", lease), newBackend(t, ns, "e2", lease)}
	const name = "turns"
	g := acquire(t, holder, name, "first", true)
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	got := make(chan served, 6)
	var queued []string
	for _, b := range els {
		wait(t, ctx, b, name, b.id+"-a", got)
		wait(t, ctx, b, name, b.id+"-b", got)
		require.Eventually(t, func() bool { return b.Waiting(name) == 2 }, waitFor, 5*time.Millisecond, "%s's waiters", b.id)
		queued = append(queued, b.id)
		waitQueued(t, ns, name, queued...)
	}
	// The holder releases from the version its own watch shows: let it
	// see the last join first (a release built on an older one would be
	// refused, 409, and made again).
	seenBy(t, holder, els[0], name+"-marker")

	all := append([]*testBackend{holder}, els...)
	w0, c0 := writes(all...)
	token := g.Token()
	var order []string
	for range 6 {
		release(t, g)
		s := <-got
		require.NotNil(t, s.g, "a waiter failed")
		order = append(order, s.by.id)
		assert.Greater(t, s.g.Token(), token, "token of grant %d", len(order))
		token, g = s.g.Token(), s.g
	}
	w1, c1 := writes(all...)
	release(t, g)
	assert.Equal(t, []string{"e0", "e1", "e2", "e0", "e1", "e2"}, order, "electors served")
	assert.Zero(t, c1-c0, "409 Conflicts during the handovers, by elector: %v", conflictsOf(all...))
	assert.Equal(t, int64(6), w1-w0, "Lease writes for 6 handovers (one release each, naming the next holder)")
}

// conflictsOf maps each of bs to the 409 Conflicts its writes got.
func conflictsOf(bs ...*testBackend) map[string]int64 {
	m := make(map[string]int64, len(bs))
	for _, b := range bs {
		m[b.id] = b.conflicts.Load()
	}
	return m
}

// TestBackendHandoverInOneWrite: a release names the offer of the next
// elector in the queue as the holder, with the next token, in its one
// write; that elector grants it with no write of its own, and its grant's
// validity counts from the write that published the offer (its queue
// join), not from the handover.
func TestBackendHandoverInOneWrite(t *testing.T) {
	ns := namespace(t)
	const lease = 15 * time.Second
	const name = "one-write"
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	a, b, g, got, called := queueOne(t, ctx, ns, name, lease)
	joined := time.Now() // the join was sent before this
	l := getLease(t, cp.admin(t), ns, name)
	require.Contains(t, l.Annotations, kube.OffersAnnotation, "e1's offer")
	seenBy(t, a, b, name+"-marker")

	w0, c0 := writes(a, b)
	time.Sleep(200 * time.Millisecond) // time passing after the join is the point: the grant must not count it
	release(t, g)
	next := takenBy(t, got, b, g)
	w1, c1 := writes(a, b)
	assert.Equal(t, int64(1), w1-w0, "Lease writes of the handover")
	assert.Zero(t, c1-c0, "409 Conflicts")
	l = getLease(t, cp.admin(t), ns, name)
	assert.Equal(t, "next@e1#"+next.Session(), holderOf(l), "holder written by the release")
	assert.Equal(t, g.Token()+1, next.Token(), "token: the next one")
	assert.Equal(t, transitionsOf(l), next.Token(), "token in the Lease")
	assert.NotContains(t, l.Annotations, kube.QueueAnnotation, "queue after the handover")
	assert.NotContains(t, l.Annotations, kube.OffersAnnotation, "offers after the handover")
	assert.NotContains(t, l.Annotations, kube.SuccessorAnnotation, "successor after the handover")
	assert.LessOrEqual(t, next.Validity(), core.WaitedValidity(lease, joined.Sub(called)),
		"validity: counted from the offer's write, at most the time from the call to the join")
	assert.GreaterOrEqual(t, next.Validity(), core.Validity(lease), "validity")
	_, err := next.Renew(ctx)
	require.NoError(t, err, "renewal of a handed-over grant")
	release(t, next)
}

// TestBackendStaleOfferConfirmed: a Lease handed to an offer published
// more than half a validity ago is confirmed by the successor with one
// write (the same holder and token, a new renewTime) before it grants it,
// and the grant's validity counts from that write.
func TestBackendStaleOfferConfirmed(t *testing.T) {
	ns := namespace(t)
	const lease = 2 * time.Second // half a validity: 0.86 s
	const name = "stale-offer"
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	a, b, g, got, _ := queueOne(t, ctx, ns, name, lease)
	seenBy(t, a, b, name+"-marker")
	// Hold past half the validity of the offer, renewing so that the
	// holder keeps the lock.
	time.Sleep(core.Validity(lease)*3/4 - 200*time.Millisecond)
	_, err := g.Renew(ctx)
	require.NoError(t, err, "the holder's renewal")
	time.Sleep(200 * time.Millisecond)

	wb := b.writes.Load() - b.conflicts.Load()
	handed := time.Now()
	release(t, g)
	next := takenBy(t, got, b, g)
	assert.Equal(t, int64(1), b.writes.Load()-b.conflicts.Load()-wb, "e1's writes after the handover (the confirmation)")
	l := getLease(t, cp.admin(t), ns, name)
	assert.Equal(t, "next@e1#"+next.Session(), holderOf(l), "holder")
	assert.Equal(t, g.Token()+1, next.Token(), "token: the one the release wrote")
	assert.Equal(t, transitionsOf(l), next.Token(), "token in the Lease")
	assert.Greater(t, next.Validity(), core.WaitedValidity(lease, core.Validity(lease)/2),
		"validity: counted from the confirming write, after the handover (released %v after the offer)", time.Since(handed))
	release(t, next)
}

// TestBackendTurnOfGoneSuccessor: a release hands the Lease to the offer
// of the next elector in the queue; if that elector is gone (cut off from
// the API server), the Lease it was handed is taken by the next waiter
// after the lease duration, like any lease.
func TestBackendTurnOfGoneSuccessor(t *testing.T) {
	ns := namespace(t)
	const lease = 3 * time.Second
	const name = "gone-successor"
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	_, b, c, g, got := queueTwo(t, ctx, ns, name, lease, "doomed", "patient")

	b.cut.Store(true)
	release(t, g)
	l := getLease(t, cp.admin(t), ns, name)
	assert.True(t, strings.HasPrefix(holderOf(l), "doomed@e1#"), "holder after the release %q", holderOf(l))
	assert.Equal(t, g.Token()+1, transitionsOf(l), "token written by the release")
	assert.Equal(t, []string{"e2"}, queueOf(t, l), "queue after the release")
	handed := time.Now()
	next := takenBy(t, got, c, g)
	assert.Greater(t, next.Token(), g.Token()+1, "token of the take after the dead successor's")
	assert.GreaterOrEqual(t, time.Since(handed), lease*9/10, "the take came about a lease duration after the handover")
	l = getLease(t, cp.admin(t), ns, name)
	assert.True(t, strings.HasPrefix(holderOf(l), "patient@e2#"), "holder %q", holderOf(l))
	release(t, next)
	cancel()
	<-got
}

// TestBackendTurnPassedOn: an elector handed the Lease for a waiter that
// has left gives it up with one write, which hands it to the next in the
// queue, and that one takes the lock without a write.
func TestBackendTurnPassedOn(t *testing.T) {
	ns := namespace(t)
	const lease = 15 * time.Second
	const name = "passed-on"
	a, b, c, g, quit := queueQuitter(t, ns, name, lease)
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	got := make(chan served, 1)
	wait(t, ctx, c, name, "patient", got)
	waitQueued(t, ns, name, "e1", "e2")
	seenBy(t, a, c, name+"-marker")

	// e1's waiter leaves while e1 cannot write, so e1 is still queued,
	// with its offer, when the holder releases, and is handed the Lease.
	b.cut.Store(true)
	quit()
	release(t, g)
	l := getLease(t, cp.admin(t), ns, name)
	require.True(t, strings.HasPrefix(holderOf(l), "quitter@e1#"), "holder after the release %q", holderOf(l))
	wrote := b.writes.Load() - b.conflicts.Load()
	wc := c.writes.Load()
	b.cut.Store(false)
	next := takenBy(t, got, c, g)
	// e2 may see e1's write before e1 has its answer, which counts it.
	require.Eventually(t, func() bool { return b.writes.Load()-b.conflicts.Load() > wrote }, waitFor, 5*time.Millisecond, "e1's write counted")
	assert.Equal(t, int64(1), b.writes.Load()-b.conflicts.Load()-wrote, "writes of e1 once its watch resumed (giving the Lease on)")
	assert.Zero(t, c.writes.Load()-wc, "writes of e2, handed the Lease by e1")
	release(t, next)
}

// TestBackendNamedByOlderElector: a Lease released by an elector of an
// older version, which names the next member as successor instead of
// handing it the Lease, is taken by that member with its own write.
func TestBackendNamedByOlderElector(t *testing.T) {
	ns := namespace(t)
	const lease = 15 * time.Second
	const name = "older"
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	_, b, g, got, called := queueOne(t, ctx, ns, name, lease)
	const hold = 300 * time.Millisecond
	time.Sleep(time.Until(called.Add(hold))) // the wait the take's grant must count in

	// The release as an older elector writes it: no holder, the queue's
	// head as successor, the rest of the queue, and offers left alone.
	admin := cp.admin(t)
	l := getLease(t, admin, ns, name)
	var q []string
	require.NoError(t, json.Unmarshal([]byte(l.Annotations[kube.QueueAnnotation]), &q))
	l.Spec.HolderIdentity = nil
	l.Annotations[kube.SuccessorAnnotation] = q[0]
	delete(l.Annotations, kube.QueueAnnotation)
	wb := b.writes.Load()
	_, err := admin.CoordinationV1().Leases(ns).Update(ctx, l, metav1.UpdateOptions{})
	require.NoError(t, err, "the older elector's release")
	next := takenBy(t, got, b, g)
	assert.Equal(t, int64(1), b.writes.Load()-wb, "writes of e1: its take")
	assert.GreaterOrEqual(t, next.Validity(), core.WaitedValidity(lease, hold), "validity of a take after a wait, against the wait")
	assert.LessOrEqual(t, next.Validity(), core.WaitedValidity(lease, time.Since(called)), "validity, against the time the Acquire took")
	l = getLease(t, admin, ns, name)
	assert.Equal(t, "next@e1#"+next.Session(), holderOf(l), "holder")
	assert.NotContains(t, l.Annotations, kube.SuccessorAnnotation, "successor after the take")
	<-g.Done()
	release(t, next)
}

// TestBackendQueueJoinKeepsHolder: other electors joining the queue write
// the Lease while it is held; the holder's renewals build on those
// versions, so they neither conflict nor lose the lock, and the release
// hands it to the first that joined.
func TestBackendQueueJoinKeepsHolder(t *testing.T) {
	ns := namespace(t)
	const lease = 15 * time.Second
	const name = "join-renew"
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	a, b, c, g, got := queueTwo(t, ctx, ns, name, lease, "first", "second")
	seenBy(t, a, c, name+"-marker")
	c0 := a.conflicts.Load()
	for range 3 {
		_, err := g.Renew(ctx)
		require.NoError(t, err, "renewal after the joins")
	}
	assert.Zero(t, a.conflicts.Load()-c0, "409 Conflicts of the holder's renewals")
	assert.NoError(t, g.Err(), "the holder's grant")
	release(t, g)
	s := <-got
	require.NotNil(t, s.g, "a waiter failed")
	assert.Same(t, b, s.by, "the lock went to the first that queued")
	release(t, s.g)
	s = <-got
	require.NotNil(t, s.g, "a waiter failed")
	assert.Same(t, c, s.by, "then to the second")
	release(t, s.g)
}

// TestBackendEditedOfferDuration: a handover whose lease duration is not
// the successor's own (its offer edited by hand to 1 s) is not adopted as
// it is: the successor takes the Lease afresh with its own duration, so
// that nobody may take it a second after the handover while its grant,
// timed by its own 15 s lease, lives.
func TestBackendEditedOfferDuration(t *testing.T) {
	ns := namespace(t)
	const lease = 15 * time.Second
	const name = "edited-offer"
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	a, b, g, got, _ := queueOne(t, ctx, ns, name, lease)
	c := newBackend(t, ns, "e2", lease)

	admin := cp.admin(t)
	l := getLease(t, admin, ns, name)
	var offers map[string]map[string]any
	require.NoError(t, json.Unmarshal([]byte(l.Annotations[kube.OffersAnnotation]), &offers))
	for m := range offers {
		offers[m]["seconds"] = 1
	}
	edited, err := json.Marshal(offers)
	require.NoError(t, err)
	l.Annotations[kube.OffersAnnotation] = string(edited)
	_, err = admin.CoordinationV1().Leases(ns).Update(ctx, l, metav1.UpdateOptions{})
	require.NoError(t, err, "the edit")
	seenBy(t, a, c, name+"-marker")

	release(t, g)
	next := takenBy(t, got, b, g)
	assert.Equal(t, g.Token()+2, next.Token(), "token: past the handover's, by a take of its own")
	l = getLease(t, admin, ns, name)
	assert.Equal(t, "next@e1#"+next.Session(), holderOf(l), "holder")
	require.NotNil(t, l.Spec.LeaseDurationSeconds)
	assert.Equal(t, int32(15), *l.Spec.LeaseDurationSeconds, "the Lease's duration after the grant")
	time.Sleep(1500 * time.Millisecond) // past the edited duration: the point of the test
	_, err = c.Acquire(ctx, core.Request{Name: name, Identity: "third"})
	assert.ErrorIs(t, err, core.ErrLocked, "a third elector's TryLock while e1 holds")
	assert.NoError(t, next.Err(), "e1's grant")
	release(t, next)
}

// TestBackendTokenAfterRecreate: an elector handed a Lease that was
// deleted and made again (its token counter restarted below what this
// elector granted before) takes it afresh with a token above every one it
// has seen, rather than adopt the lower token the release wrote.
func TestBackendTokenAfterRecreate(t *testing.T) {
	ns := namespace(t)
	const lease = 15 * time.Second
	const name = "recreated"
	b := newBackend(t, ns, "e1", lease)
	var top uint64
	for range 5 {
		g := acquire(t, b, name, "early", false)
		top = g.Token()
		release(t, g)
	}
	admin := cp.admin(t)
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	require.NoError(t, admin.CoordinationV1().Leases(ns).Delete(ctx, name, metav1.DeleteOptions{}))
	watchUntil(t, b, name, "the Lease gone", func(h core.Holder) bool { return h.Identity == "" })
	a := newBackend(t, ns, "e0", lease) // never saw the old Lease
	g := acquire(t, a, name, "holder", true)
	require.Less(t, g.Token(), top, "the token of the Lease made again")
	got := make(chan served, 1)
	wait(t, ctx, b, name, "next", got)
	waitQueued(t, ns, name, "e1")
	seenBy(t, a, b, name+"-marker")
	release(t, g)
	next := takenBy(t, got, b, g)
	assert.Greater(t, next.Token(), top, "token granted by e1 after it granted %d", top)
	assert.Equal(t, transitionsOf(getLease(t, admin, ns, name)), next.Token(), "token in the Lease")
	release(t, next)
}

// TestBackendHeadLeavesKeepsTurn: an elector queued first, whose first
// waiter leaves before the release hands the Lease to that waiter's offer,
// gives the Lease to its next waiter in one write: it keeps its turn,
// ahead of the elector queued after it.
func TestBackendHeadLeavesKeepsTurn(t *testing.T) {
	ns := namespace(t)
	const lease = 15 * time.Second
	const name = "head-leaves"
	a, b, c, g, quit := queueQuitter(t, ns, name, lease)
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	got := make(chan served, 2)
	wait(t, ctx, b, name, "e1-second", got)
	require.Eventually(t, func() bool { return b.Waiting(name) == 2 }, waitFor, 5*time.Millisecond, "e1's second waiter waits")
	wait(t, ctx, c, name, "e2-first", got)
	waitQueued(t, ns, name, "e1", "e2")
	quit()
	seenBy(t, a, c, name+"-marker")
	wb, cb := b.writes.Load(), b.conflicts.Load()
	release(t, g)
	s := <-got
	require.NotNil(t, s.g, "a waiter failed")
	assert.Same(t, b, s.by, "the lock went to e1, queued first")
	// e1's waiter may see its write before e1 has its answer, which counts it.
	require.Eventually(t, func() bool { return b.writes.Load() > wb }, waitFor, 5*time.Millisecond, "e1's write counted")
	assert.Equal(t, int64(1), b.writes.Load()-wb, "writes of e1 (handing the Lease on to its second waiter)")
	assert.Zero(t, b.conflicts.Load()-cb, "409 Conflicts of e1")
	release(t, s.g)
	s = <-got
	require.NotNil(t, s.g, "a waiter failed")
	assert.Same(t, c, s.by, "then to e2")
	release(t, s.g)
}
