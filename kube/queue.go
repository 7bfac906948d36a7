package kube

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"math"
	"slices"
	"time"

	"go.uber.org/zap"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mpsync/mpsync/internal/core"
)

// The queue of waiting electors, kept in the Lease (see the package doc,
// "Taking turns across electors"). Only mpsync electors write these
// annotations; client-go and electors of older versions keep them as they
// are (they update the object they read) and ignore them.
const (
	// QueueAnnotation holds the electors waiting for the Lease, first come
	// first, as a JSON array of members ("<elector identity>#<instance>",
	// Backend.member). An elector with a waiter for a Lease held or
	// reserved by someone else adds itself once and stays while it has
	// waiters.
	QueueAnnotation = "mpsync.github.io/queue"
	// SuccessorAnnotation names, on a released Lease, the member whose
	// turn it is: the releaser popped it from the head of the queue in the
	// write that cleared spec.holderIdentity, because that member had no
	// offer to hand the Lease to (an elector of an older version). Other
	// mpsync electors leave the free Lease to it for the Lease's duration
	// of their own time.
	SuccessorAnnotation = "mpsync.github.io/next"
	// OffersAnnotation holds the offers of the members in the queue: a
	// JSON object from member to {"holder": H, "seconds": S}, H the holder
	// identity the member would write for its first waiter and S that
	// waiter's lease duration in seconds. A release hands the Lease to the
	// head of the queue by writing its offer as the holder, in the write
	// that ends the releaser's term ("Handing over in one write").
	OffersAnnotation = "mpsync.github.io/offers"
)

// offered is one member's offer in OffersAnnotation.
type offered struct {
	Holder  string `json:"holder"`
	Seconds int32  `json:"seconds"`
}

// valid reports whether o can be handed a Lease: a holder identity as an
// mpsync elector writes it and a lease of at least core.MinLease.
func (o offered) valid() bool {
	_, _, _, ok := splitHolder(o.Holder)
	return ok && len(o.Holder) <= core.MaxIdentityLength && time.Duration(o.Seconds)*time.Second >= core.MinLease
}

// turns is the turn-taking state of a Lease, as its annotations hold it.
type turns struct {
	queue  []string           // members waiting, oldest first
	next   string             // the successor named on a free Lease, if any
	offers map[string]offered // offers of members in the queue
}

// turnsOf reads the turns of obj. A malformed queue or offers annotation
// reads as empty, and an offer that is not valid as absent: the next write
// of an elector puts well-formed ones in their place.
func turnsOf(obj *coordinationv1.Lease) turns {
	t := turns{queue: queueOf(obj), next: successorOf(obj)}
	s, ok := obj.GetAnnotations()[OffersAnnotation]
	if !ok {
		return t
	}
	var all map[string]offered
	if json.Unmarshal([]byte(s), &all) != nil {
		return t
	}
	for m, o := range all {
		if o.valid() && slices.Contains(t.queue, m) {
			if t.offers == nil {
				t.offers = make(map[string]offered)
			}
			t.offers[m] = o
		}
	}
	return t
}

// set writes t into obj (a copy about to be written), keeping only the
// offers of members in t.queue and removing the annotations that would be
// empty.
func (t turns) set(obj *coordinationv1.Lease) {
	ann := obj.GetAnnotations()
	if ann == nil {
		ann = make(map[string]string)
	}
	delete(ann, QueueAnnotation)
	delete(ann, SuccessorAnnotation)
	delete(ann, OffersAnnotation)
	if len(t.queue) > 0 {
		s, _ := json.Marshal(t.queue) // a []string always marshals
		ann[QueueAnnotation] = string(s)
	}
	if t.next != "" {
		ann[SuccessorAnnotation] = t.next
	}
	offers := make(map[string]offered, len(t.offers))
	for m, o := range t.offers {
		if slices.Contains(t.queue, m) {
			offers[m] = o
		}
	}
	if len(offers) > 0 {
		s, _ := json.Marshal(offers) // strings and numbers always marshal
		ann[OffersAnnotation] = string(s)
	}
	if len(ann) == 0 {
		ann = nil
	}
	obj.SetAnnotations(ann)
}

// withOffer is t with member m's offer set to o (or removed, if o is nil).
func (t turns) withOffer(m string, o *offer) turns {
	offers := make(map[string]offered, len(t.offers)+1)
	for k, v := range t.offers {
		offers[k] = v
	}
	delete(offers, m)
	if o != nil {
		offers[m] = o.offered()
	}
	t.offers = offers
	return t
}

// member is this Backend's entry in a Lease's queue: its identity and its
// random instance, so that a restarted elector or two Backends of one
// identity are never taken for each other.
func (b *Backend) member() string { return b.identity + "#" + b.instance }

// queueOf is the queue of obj; nil if it has none or it is malformed (the
// next write of an elector puts a well-formed one in its place).
func queueOf(obj *coordinationv1.Lease) []string {
	s, ok := obj.GetAnnotations()[QueueAnnotation]
	if !ok {
		return nil
	}
	var q []string
	if json.Unmarshal([]byte(s), &q) != nil {
		return nil
	}
	return q
}

// successorOf is the member obj names as its successor, "" if none.
func successorOf(obj *coordinationv1.Lease) string {
	if obj == nil {
		return ""
	}
	return obj.GetAnnotations()[SuccessorAnnotation]
}

// without is q with every entry m removed, in a new slice.
func without(q []string, m string) []string {
	out := make([]string, 0, len(q))
	for _, x := range q {
		if x != m {
			out = append(out, x)
		}
	}
	return out
}

// handOff is the turn order after member me gives up the Lease (a release,
// or a successor with no waiter passing its turn on): the head of the queue
// other than me becomes the successor; if stay (me still has waiters), me
// goes to the tail, or is the successor itself when nobody else waits.
func handOff(q []string, me string, stay bool) (next string, rest []string) {
	rest = without(q, me)
	if len(rest) > 0 {
		next, rest = rest[0], rest[1:]
	}
	if stay {
		if next == "" {
			next = me
		} else {
			rest = append(rest, me)
		}
	}
	return next, rest
}

// taken is the queue after member me takes the Lease: me leaves it, and
// goes back to the tail if stay (it has more waiters); no successor.
func taken(q []string, me string, stay bool) []string {
	rest := without(q, me)
	if stay {
		rest = append(rest, me)
	}
	return rest
}

// offer is this Backend's offer for a Lease: a holder identity, with a
// session of its own, that it publishes in the Lease's OffersAnnotation
// for its first waiter w, so that a releaser can hand the Lease to w in the
// write that ends its own term. sent is no later than the sending of the
// write that published it: a Lease naming the offer was written by someone
// who read it there, after that write landed, so w's validity counts from
// sent as a take's counts from its own write (see the package doc,
// "Handing over in one write").
type offer struct {
	w       *waiter
	session string
	holder  string
	sent    time.Time
}

// offered is o as OffersAnnotation holds it.
func (o *offer) offered() offered {
	return offered{Holder: o.holder, Seconds: leaseSeconds(o.w.d)}
}

// maxOffers bounds the offers a Backend remembers for one Lease. A waiter
// whose joins keep failing makes one for each try; an offer forgotten
// while a Lease could still be handed to it costs a release (a Lease
// naming a session of ours that holds nothing), never a second holder.
const maxOffers = 4

// newOfferLocked makes a new offer of this Backend for w and remembers it
// in st, so that a Lease handed to it is adopted, not released, for as
// long as w waits (it forgets the oldest offer beyond maxOffers, never the
// one the Lease names). Call it just before building the write that
// publishes it. The offer's session ends in random digits: nobody can
// write a Lease naming it before this Backend has published it, which the
// validity of a handover rests on.
func (b *Backend) newOfferLocked(st *lease, w *waiter) *offer {
	var rnd [4]byte
	_, _ = rand.Read(rnd[:]) // crypto/rand.Read does not fail
	session := b.newSessionLocked(w.legacy) + "-" + hex.EncodeToString(rnd[:])
	o := &offer{w: w, session: session, holder: b.holderIdentity(w.identity, session), sent: b.clock.Now()}
	if len(st.offers) >= maxOffers {
		named := holderOf(st.obj)
		if i := slices.IndexFunc(st.offers, func(o *offer) bool { return o.holder != named }); i >= 0 {
			st.offers = slices.Delete(st.offers, i, i+1)
		}
	}
	st.offers = append(st.offers, o)
	return o
}

// handedLocked is the offer named holder whose waiter still waits, nil if
// there is none: a Lease naming it is that waiter's to adopt, not an
// orphan to release.
func (st *lease) handedLocked(holder string) *offer {
	for _, o := range st.offers {
		if o.holder == holder && slices.Contains(st.queue, o.w) {
			return o
		}
	}
	return nil
}

// pruneOffersLocked forgets the offers whose waiters no longer wait (they
// left, or were granted the lock).
func (st *lease) pruneOffersLocked() {
	st.offers = slices.DeleteFunc(st.offers, func(o *offer) bool { return !slices.Contains(st.queue, o.w) })
}

// freshLocked reports whether a Lease handed to offer o may be granted
// as it is: if at least half of a full validity is left since o was sent.
// An older offer (a waiter queued behind a long term) is confirmed with a
// write of its own first, whose validity counts from its sending.
func (b *Backend) freshLocked(o *offer) bool {
	return b.clock.Since(o.sent) <= core.Validity(o.w.d)/2
}

// giveUpLocked is the version of the Lease that replaces base when this
// Backend gives it up: its release, or a named successor passing its turn
// on. stay says whether this Backend still has waiters for the Lease.
// The next holder is the head of the queue other than this Backend
// (handOff), or, if keepTurn and stay, this Backend's own first waiter
// (the Lease came to this Backend for a session that holds nothing: its
// turn is not over). The Lease goes to it in the same write: to its offer
// (the next member's, or a new one of this Backend's own first waiter),
// written as the holder with the next token; or else it is left free,
// naming a next member that made no offer (an elector of an older
// version) as successor. If stay and another member is next, this Backend
// goes to the tail of the queue with an offer for its first waiter.
func (b *Backend) giveUpLocked(st *lease, base *coordinationv1.Lease, stay, keepTurn bool) *coordinationv1.Lease {
	me := b.member()
	t := turnsOf(base)
	next, rest := handOff(t.queue, me, stay)
	if keepTurn && stay {
		next, rest = me, without(t.queue, me)
	}
	var mine *offer
	if stay {
		mine = b.newOfferLocked(st, st.queue[0])
	}
	to, ok := t.offers[next]
	if next == me {
		to, ok = mine.offered(), true
	}
	t.queue, t.next = rest, ""
	if mine != nil && next != me {
		t = t.withOffer(me, mine)
	}
	obj := base.DeepCopy()
	obj.Spec.HolderIdentity = nil
	if (!ok || !b.handToLocked(st, obj, to)) && next != me {
		t.next = next // "" if nobody is next
	}
	t.set(obj)
	return obj
}

// handToLocked makes obj, a copy of a version of the Lease about to be
// written, name the holder of offer o with the next fencing token, and
// reports whether it did: not if that token would not fit the Lease, in
// which case obj is left free and the successor's own take fails, saying
// why.
func (b *Backend) handToLocked(st *lease, obj *coordinationv1.Lease, o offered) bool {
	token := max(st.token, transitions(obj)) + 1
	if token > math.MaxInt32 {
		return false
	}
	trans := int32(token)
	now := metav1.NewMicroTime(b.clock.Now())
	holder, secs := o.Holder, o.Seconds
	obj.Spec.HolderIdentity = &holder
	obj.Spec.LeaseTransitions = &trans
	obj.Spec.LeaseDurationSeconds = &secs
	obj.Spec.AcquireTime = &now
	obj.Spec.RenewTime = &now
	return true
}

// queuedLocked reports whether this Backend is in the queue of the Lease
// as last seen, or is its named successor.
func (b *Backend) queuedLocked(st *lease) bool {
	me := b.member()
	return successorOf(st.obj) == me || slices.Contains(queueOf(st.obj), me)
}

// waitingLocked reports whether this Backend has Acquire calls waiting for
// the Lease that are to be served: none once Close has begun.
func (b *Backend) waitingLocked(st *lease) bool {
	return !b.closed && len(st.queue) > 0
}

// join adds this Backend to the tail of the Lease's queue, with an offer
// for a's waiter: an Update of base conditioned on its resourceVersion.
// Joining changes nothing of the holder's term (sameTerm), so nobody, the
// joiner included, counts the holder's lease afresh from it.
func (a *attempt) join(ctx context.Context, base *coordinationv1.Lease) error {
	b, st := a.b, a.st
	me := b.member()
	b.mu.Lock()
	o := b.newOfferLocked(st, a.w)
	b.mu.Unlock()
	t := turnsOf(base)
	t.queue = append(without(t.queue, me), me)
	t = t.withOffer(me, o)
	obj := base.DeepCopy()
	t.set(obj)
	rctx, cancel := context.WithTimeout(ctx, requestTimeout(a.d))
	res, err := b.client.Update(rctx, obj, metav1.UpdateOptions{})
	cancel()
	b.mu.Lock()
	defer b.mu.Unlock()
	st.joining = false
	st.broadcast()
	if err != nil {
		return err
	}
	b.observeLocked(st, res, false)
	b.log.Debug("joined the queue", zap.String("name", a.req.Name), zap.Strings("queue", queueOf(res)))
	return nil
}

// withdrawLocked takes this Backend out of the Lease's turns once it has
// no waiter left for it (they left, or Close failed them): a named
// successor of a free Lease passes its turn on (giveUpLocked: to the
// next one's offer, or naming the next), and an entry in the queue is
// removed, in one conditional write run in the background. It tries once
// per version seen: a conflict is followed by the watch's newer version,
// which calls it again, and a failed request is tried again after a
// backoff.
func (b *Backend) withdrawLocked(st *lease) {
	if st.obj == nil || b.waitingLocked(st) || st.grant != nil || st.pending != "" || st.releasing != "" ||
		st.joining || st.withdrawing || b.orphansEnd || st.withdrawRV == st.obj.ResourceVersion {
		return
	}
	me := b.member()
	free := holderOf(st.obj) == ""
	named := free && successorOf(st.obj) == me
	if !named && !slices.Contains(queueOf(st.obj), me) {
		return
	}
	base := st.obj
	var obj *coordinationv1.Lease
	if named {
		obj = b.giveUpLocked(st, base, false, false)
	} else {
		t := turnsOf(base)
		t.queue = without(t.queue, me)
		obj = base.DeepCopy()
		t.set(obj)
	}
	st.withdrawing, st.withdrawRV = true, base.ResourceVersion
	b.orphans.Add(1)
	go func() {
		defer b.orphans.Done()
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout(b.duration(base)))
		res, err := b.client.Update(ctx, obj, metav1.UpdateOptions{})
		cancel()
		b.mu.Lock()
		defer b.mu.Unlock()
		st.withdrawing = false
		switch {
		case err == nil:
			st.withdrawBackoff = 0
			b.observeLocked(st, res, false)
		case !apierrors.IsConflict(err):
			// Not a newer version (which the watch brings, and with it
			// another try) but a failed request: try this one again.
			pause := backoff(&st.withdrawBackoff)
			b.log.Warn("could not leave the queue of a lease; retrying (meanwhile others wait out this elector's turn)",
				zap.String("name", st.name), zap.Duration("in", pause), zap.Error(err))
			b.retryLocked(st, pause, func(st *lease) {
				if st.withdrawRV == base.ResourceVersion {
					st.withdrawRV = ""
					b.withdrawLocked(st)
				}
			})
		}
		b.log.Debug("left the queue", zap.String("name", st.name), zap.Bool("passedOn", named), zap.Error(err))
		st.broadcast()
		b.withdrawLocked(st) // the version seen meanwhile may need it again
	}()
}
