package kube

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mpsync/mpsync/internal/clock"
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

// TestTurnsAnnotations: turns.set and turnsOf round-trip, identities with
// any character; offers are kept only for members in the queue, invalid
// ones read as absent; empty turns leave no annotation and keep the
// others; a malformed queue or offers annotation reads as empty.
func TestTurnsAnnotations(t *testing.T) {
	obj := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"other": "kept"}}}
	q := []string{`pod "a", 1#ab`, "pod-2#cd"}
	in := turns{queue: q, next: "pod-3#ef", offers: map[string]offered{
		`pod "a", 1#ab`: {Holder: "app@pod a#ab-1", Seconds: 15},
		"gone#zz":       {Holder: "app@gone#zz-1", Seconds: 15},
	}}
	in.set(obj)
	out := turnsOf(obj)
	assert.Equal(t, q, out.queue)
	assert.Equal(t, "pod-3#ef", out.next)
	assert.Equal(t, map[string]offered{`pod "a", 1#ab`: {Holder: "app@pod a#ab-1", Seconds: 15}}, out.offers,
		"offers of queued members only")
	assert.Equal(t, q, queueOf(obj))
	assert.Equal(t, "pod-3#ef", successorOf(obj))
	turns{}.set(obj)
	assert.Equal(t, map[string]string{"other": "kept"}, obj.Annotations)
	assert.Nil(t, queueOf(obj))
	assert.Empty(t, successorOf(obj))
	assert.Empty(t, successorOf(nil))

	bare := &coordinationv1.Lease{}
	turns{}.set(bare)
	assert.Nil(t, bare.Annotations, "no annotations added for empty turns")
	bare.Annotations = map[string]string{QueueAnnotation: "not json"}
	assert.Nil(t, queueOf(bare), "a malformed queue")
	bare.Annotations = map[string]string{QueueAnnotation: `["m#1","m#2","m#3"]`, OffersAnnotation: "{not json"}
	assert.Nil(t, turnsOf(bare).offers, "malformed offers")
	bare.Annotations[OffersAnnotation] = `{"m#1":{"holder":"c@m#1-1","seconds":0},"m#2":{"holder":"no-elector","seconds":15},` +
		`"m#3":{"holder":"c@m#1-3","seconds":15}}`
	assert.Equal(t, map[string]offered{"m#3": {Holder: "c@m#1-3", Seconds: 15}}, turnsOf(bare).offers,
		"a lease under core.MinLease and a holder not written by an elector are no offers")
}

// giveUpCase sets up a release by Backend "me#aa" of a Lease whose turns
// are in, token 7, with waiters of its own waiting for it.
func giveUpCase(in turns, waiters int) (*Backend, *lease, *coordinationv1.Lease) {
	b := &Backend{identity: "me", instance: "aa", clock: clock.Real{}}
	st := &lease{name: "l"}
	for i := range waiters {
		st.queue = append(st.queue, &waiter{identity: fmt.Sprintf("w%d", i), d: 15 * time.Second})
	}
	holder, trans := "app@me#aa-1", int32(7)
	base := &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseTransitions: &trans}}
	in.set(base)
	return b, st, base
}

// TestGiveUp: a release hands the Lease in the same write to the offer of
// the next elector in the queue (the next token; the releaser, if it has
// waiters, at the tail with an offer of its own), or to its own first
// waiter when nobody else waits or it releases an orphan of its own (its
// turn), or leaves it free naming a next without an offer, or plainly
// free.
func TestGiveUp(t *testing.T) {
	b2 := offered{Holder: "c2@e2#bb-4", Seconds: 9}
	for _, c := range []struct {
		whatCase   string
		in         turns
		waiters    int
		holder     string // "" free; "mine" this Backend's first waiter's new offer
		next       string
		queue      []string
		mineQueued bool // this Backend at the tail with an offer for its first waiter
	}{
		{"nobody waits", turns{}, 0, "", "", nil, false},
		{"the next one's offer", turns{queue: []string{"e2#bb", "e3#cc"}, offers: map[string]offered{"e2#bb": b2}}, 0,
			b2.Holder, "", []string{"e3#cc"}, false},
		{"the next one's offer; the releaser queues again", turns{queue: []string{"e2#bb"}, offers: map[string]offered{"e2#bb": b2}}, 2,
			b2.Holder, "", []string{"me#aa"}, true},
		{"a next without an offer is named", turns{queue: []string{"old#dd", "e2#bb"}, offers: map[string]offered{"e2#bb": b2}}, 1,
			"", "old#dd", []string{"e2#bb", "me#aa"}, true},
		{"only the releaser's own waiters", turns{}, 2, "mine", "", nil, false},
		{"the releaser leaves the queue", turns{queue: []string{"me#aa"}}, 0, "", "", nil, false},
		{"an orphan keeps the turn for the releaser's own waiter", turns{queue: []string{"me#aa", "e2#bb"}, offers: map[string]offered{"e2#bb": b2}}, 1,
			"mine", "", []string{"e2#bb"}, false},
		{"an orphan with no waiter of its own hands on", turns{queue: []string{"e2#bb"}, offers: map[string]offered{"e2#bb": b2}}, 0,
			b2.Holder, "", nil, false},
	} {
		b, st, base := giveUpCase(c.in, c.waiters)
		orphan := strings.HasPrefix(c.whatCase, "an orphan")
		obj := b.giveUpLocked(st, base, c.waiters > 0, orphan)
		out := turnsOf(obj)
		want := c.holder
		if want == "mine" {
			require.NotEmpty(t, st.offers, "%s: offers made", c.whatCase)
			want = st.offers[0].holder
			assert.True(t, strings.HasPrefix(want, "w0@me#aa-"), "%s: the first waiter's offer %q", c.whatCase, want)
		}
		assert.Equal(t, want, holderOf(obj), "%s: holder", c.whatCase)
		if want != "" {
			assert.Equal(t, uint64(8), transitions(obj), "%s: token", c.whatCase)
			require.NotNil(t, obj.Spec.LeaseDurationSeconds, c.whatCase)
		} else {
			assert.Equal(t, uint64(7), transitions(obj), "%s: token of a free Lease", c.whatCase)
		}
		if want == b2.Holder {
			assert.Equal(t, b2.Seconds, *obj.Spec.LeaseDurationSeconds, "%s: the offer's lease duration", c.whatCase)
		}
		assert.Equal(t, c.next, out.next, "%s: successor", c.whatCase)
		assert.Equal(t, c.queue, out.queue, "%s: queue", c.whatCase)
		mine, ok := out.offers["me#aa"]
		assert.Equal(t, c.mineQueued, ok, "%s: the releaser's offer", c.whatCase)
		if ok {
			assert.Equal(t, st.offers[len(st.offers)-1].holder, mine.Holder, "%s: the releaser's offer", c.whatCase)
			assert.Equal(t, int32(15), mine.Seconds, "%s: its lease", c.whatCase)
		}
		for m := range out.offers {
			assert.Contains(t, out.queue, m, "%s: offers only of queued members", c.whatCase)
		}
	}
}

// TestGiveUpTokenLimit: at the token limit a release hands nothing over,
// so that no holder ever gets a token that does not fit.
func TestGiveUpTokenLimit(t *testing.T) {
	b, st, base := giveUpCase(turns{queue: []string{"e2#bb"}, offers: map[string]offered{"e2#bb": {Holder: "c@e2#bb-1", Seconds: 15}}}, 0)
	top := int32(math.MaxInt32)
	base.Spec.LeaseTransitions = &top
	obj := b.giveUpLocked(st, base, false, false)
	assert.Empty(t, holderOf(obj), "holder")
	assert.Equal(t, "e2#bb", successorOf(obj), "the next is named instead")
}

// TestHandover: a Lease handed to an offer is adopted as it is when fresh,
// confirmed when the offer is old, and taken afresh when its duration is
// shorter than the waiter's lease or its token not above every one seen
// before (an edited offer, a Lease made again).
func TestHandover(t *testing.T) {
	for _, c := range []struct {
		whatCase    string
		seconds     int32
		tokenBefore uint64
		age         time.Duration
		adopt       bool
		confirm     bool
	}{
		{"fresh", 15, 6, 0, true, false},
		{"old", 15, 6, 8 * time.Second, false, true},
		{"shorter than the waiter's lease", 14, 6, 0, false, false},
		{"a token seen before", 15, 7, 0, false, false},
	} {
		clk := &stepClock{now: time.Unix(1e9, 0)}
		b := &Backend{identity: "me", instance: "aa", clock: clk, lease: 15 * time.Second}
		w := &waiter{identity: "w", d: 15 * time.Second}
		st := &lease{name: "l", queue: []*waiter{w}, tokenBefore: c.tokenBefore}
		o := b.newOfferLocked(st, w)
		clk.now = clk.now.Add(c.age)
		trans := int32(7)
		holder := o.holder
		st.obj = &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseTransitions: &trans, LeaseDurationSeconds: &c.seconds}}
		a := &attempt{b: b, st: st, w: w, d: w.d}
		p := a.decideLocked()
		assert.Equal(t, c.adopt, p.adopt == o, "%s: adopted", c.whatCase)
		assert.Equal(t, c.confirm, p.confirm == o, "%s: confirmed", c.whatCase)
		assert.Equal(t, !c.adopt, p.write, "%s: a write", c.whatCase)
		assert.Same(t, st.obj, p.base, "%s: on the version seen", c.whatCase)
	}
}

// stepClock is a clock.Clock that stands still until a test moves it.
type stepClock struct {
	clock.Real
	now time.Time
}

func (c *stepClock) Now() time.Time                  { return c.now }
func (c *stepClock) Since(t time.Time) time.Duration { return c.now.Sub(t) }
func (c *stepClock) Until(t time.Time) time.Duration { return t.Sub(c.now) }

// TestOffers: an offer is adoptable while its waiter waits, forgotten when
// it leaves; its session is this Backend's, random past its number, and
// marked for a legacy waiter; a Backend remembers at most maxOffers for
// one Lease, never forgetting the one the Lease names.
func TestOffers(t *testing.T) {
	b := &Backend{identity: "me", instance: "aa", clock: clock.Real{}}
	st := &lease{name: "l"}
	w1, w2 := &waiter{identity: "one", d: 15 * time.Second}, &waiter{identity: "two", d: 15 * time.Second}
	st.queue = []*waiter{w1, w2}
	o1 := b.newOfferLocked(st, w1)
	o2 := b.newOfferLocked(st, w2)
	assert.Same(t, o1, st.handedLocked(o1.holder))
	assert.True(t, st.handedLocked(o2.holder) != nil)
	assert.False(t, st.handedLocked("one@me#aa-99") != nil, "no such offer")
	assert.True(t, b.freshLocked(o1), "a new offer")
	st.queue = []*waiter{w2}
	st.pruneOffersLocked()
	assert.False(t, st.handedLocked(o1.holder) != nil, "its waiter left")
	assert.True(t, st.handedLocked(o2.holder) != nil, "the other's")
	assert.True(t, b.ownsSession(o2.holder), "an offer's session is this Backend's")
	assert.Regexp(t, `^aa-\d+-[0-9a-f]{8}$`, o2.session, "an offer's session")
	legacy := b.newOfferLocked(st, &waiter{identity: "me", d: time.Minute, legacy: true})
	assert.True(t, strings.HasPrefix(legacy.session, legacyMarker), "a legacy waiter's offer %q", legacy.session)

	named := o2.holder
	st.obj = &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{HolderIdentity: &named}}
	for range 2 * maxOffers {
		b.newOfferLocked(st, w2)
	}
	assert.Len(t, st.offers, maxOffers)
	assert.Same(t, o2, st.handedLocked(named), "the offer the Lease names is kept")
}

// TestSameTerm: a version that changes only the queue or other metadata
// continues the term; one that changes the spec (a renewal, a take, a
// release) or the successor starts a new one.
func TestSameTerm(t *testing.T) {
	holder := "c@e#s"
	base := &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, RenewTime: &metav1.MicroTime{}}}
	joined := base.DeepCopy()
	turns{queue: []string{"e2#ab"}}.set(joined)
	joined.Labels = map[string]string{"x": "y"}
	assert.True(t, sameTerm(base, joined), "a queue join")
	renewed := joined.DeepCopy()
	renewed.Spec.RenewTime = &metav1.MicroTime{Time: base.Spec.RenewTime.Add(time.Microsecond)}
	assert.False(t, sameTerm(joined, renewed), "a renewal")
	released := joined.DeepCopy()
	released.Spec.HolderIdentity = nil
	assert.False(t, sameTerm(joined, released), "a release")
	passed := released.DeepCopy()
	turns{next: "e3#cd"}.set(passed)
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
