package kube

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestHandOff: a release names the head of the queue other than the
// releaser and puts the releaser at the tail if it has waiters, or names
// it itself when nobody else waits.
func TestHandOff(t *testing.T) {
	for _, c := range []struct {
		q        []string
		stay     bool
		next     string
		rest     []string
		whatCase string
	}{
		{nil, false, "", []string{}, "nobody waits"},
		{nil, true, "me", []string{}, "only the releaser's own waiters"},
		{[]string{"b", "c"}, false, "b", []string{"c"}, "the head's turn"},
		{[]string{"b", "c"}, true, "b", []string{"c", "me"}, "the releaser goes to the tail"},
		{[]string{"me", "b"}, true, "b", []string{"me"}, "a releaser at the head does not go again"},
		{[]string{"b", "me", "c"}, true, "b", []string{"c", "me"}, "a releaser in the middle moves to the tail"},
		{[]string{"me"}, false, "", []string{}, "a releaser with no waiters leaves"},
	} {
		next, rest := handOff(c.q, "me", c.stay)
		assert.Equal(t, c.next, next, "%s: successor", c.whatCase)
		assert.Equal(t, c.rest, rest, "%s: queue", c.whatCase)
	}
}

// TestTaken: a taker leaves the queue, and goes back to its tail if it has
// more waiters.
func TestTaken(t *testing.T) {
	assert.Equal(t, []string{"b"}, taken([]string{"me", "b"}, "me", false))
	assert.Equal(t, []string{"b", "me"}, taken([]string{"me", "b"}, "me", true))
	assert.Equal(t, []string{"me"}, taken(nil, "me", true))
	assert.Empty(t, taken(nil, "me", false))
}

// TestTurnsAnnotations: setTurns and queueOf, successorOf round-trip,
// identities with any character; empty turns leave no annotation and keep
// the others; a malformed queue reads as empty.
func TestTurnsAnnotations(t *testing.T) {
	obj := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"other": "kept"}}}
	q := []string{`pod "a", 1#ab`, "pod-2#cd"}
	setTurns(obj, q, "pod-3#ef")
	assert.Equal(t, q, queueOf(obj))
	assert.Equal(t, "pod-3#ef", successorOf(obj))
	setTurns(obj, nil, "")
	assert.Equal(t, map[string]string{"other": "kept"}, obj.Annotations)
	assert.Nil(t, queueOf(obj))
	assert.Empty(t, successorOf(obj))
	assert.Empty(t, successorOf(nil))

	bare := &coordinationv1.Lease{}
	setTurns(bare, nil, "")
	assert.Nil(t, bare.Annotations, "no annotations added for empty turns")
	bare.Annotations = map[string]string{QueueAnnotation: "not json"}
	assert.Nil(t, queueOf(bare), "a malformed queue")
}

// TestSameTerm: a version that changes only the queue or other metadata
// continues the term; one that changes the spec (a renewal, a take, a
// release) or the successor starts a new one.
func TestSameTerm(t *testing.T) {
	holder := "c@e#s"
	base := &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, RenewTime: &metav1.MicroTime{}}}
	joined := base.DeepCopy()
	setTurns(joined, []string{"e2#ab"}, "")
	joined.Labels = map[string]string{"x": "y"}
	assert.True(t, sameTerm(base, joined), "a queue join")
	renewed := joined.DeepCopy()
	renewed.Spec.RenewTime = &metav1.MicroTime{Time: base.Spec.RenewTime.Add(time.Microsecond)}
	assert.False(t, sameTerm(joined, renewed), "a renewal")
	released := joined.DeepCopy()
	released.Spec.HolderIdentity = nil
	assert.False(t, sameTerm(joined, released), "a release")
	passed := released.DeepCopy()
	setTurns(passed, nil, "e3#cd")
	assert.False(t, sameTerm(released, passed), "a new successor")
	assert.False(t, sameTerm(nil, base), "a new Lease")
}

// TestRenewStamp: a renewal's renewTime is later than the one it
// replaces, even when the clock says otherwise.
func TestRenewStamp(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 1500, time.UTC)
	base := &coordinationv1.Lease{}
	assert.Equal(t, now.Truncate(time.Microsecond), renewStamp(base, now).Time, "no renewTime yet")
	base.Spec.RenewTime = &metav1.MicroTime{Time: now.Add(-time.Second)}
	assert.Equal(t, now.Truncate(time.Microsecond), renewStamp(base, now).Time, "a later clock")
	base.Spec.RenewTime = &metav1.MicroTime{Time: now}
	assert.Equal(t, now.Truncate(time.Microsecond).Add(time.Microsecond), renewStamp(base, now).Time, "a clock standing still")
	base.Spec.RenewTime = &metav1.MicroTime{Time: now.Add(time.Hour)}
	assert.True(t, renewStamp(base, now).After(now.Add(time.Hour)), "a clock stepped back")
}
