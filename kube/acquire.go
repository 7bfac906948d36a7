package kube

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/clock"
	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/trace"
)

const (
	// tryConflicts is how many conflicting writes an Acquire without Wait
	// tolerates (each followed by a fresh read) before it reports the lock
	// as held.
	tryConflicts = 3
	// minBackoff and maxBackoff bound the pause of a waiting Acquire
	// after a failed request, doubling from one to the other.
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// Acquire implements backend.Backend. It waits for the lease watch to sync,
// then takes the lock if the Lease does not exist (Create), names no holder,
// or has not changed for its spec.leaseDurationSeconds of this elector's
// time (an Update conditioned on the version seen). Otherwise it fails with
// a *core.LockedError (errors.Is core.ErrLocked) that names the holder, or,
// with req.Wait, queues behind earlier Acquire calls of this Backend (and
// this Backend in the Lease's queue, with an offer for its first waiter)
// and is granted as soon as the watch shows a release that handed the
// Lease to its offer (no write of its own, or one confirming an old
// offer), or writes as soon as the watch shows the Lease left free or the
// observed lease expires; a failed request is retried with backoff. A
// conflicting write is a lost race: the Lease is read again and the
// decision made afresh.
//
// Acquire returns ctx.Err() if ctx ends first, leaving nothing held (a
// write already sent is released), and core.ErrClosed once Close has begun.
// It fails, without writing, when the next fencing token would not fit the
// Lease's int32 spec.leaseTransitions. The grant's Validity counts from the
// call, the time until the write that took the Lease was sent included
// (for a Lease handed over, the write that published the offer).
func (b *Backend) Acquire(ctx context.Context, req core.Request) (backend.Grant, error) {
	called := b.clock.Now()
	d, err := b.leaseFor(ctx, req)
	if err != nil {
		return nil, err
	}
	a, err := b.begin(req, d, called)
	if err != nil {
		return nil, err
	}
	defer b.active.Done()
	defer b.dequeue(a.st, a.w)
	if err := b.waitSynced(ctx); err != nil {
		return nil, err
	}
	for {
		p, err := a.plan()
		if err != nil {
			return nil, err
		}
		if p.grant != nil {
			return p.grant, nil
		}
		if !p.write {
			if !req.Wait {
				return nil, p.refusal(b.ns, req.Name)
			}
			if err := sleep(ctx, b.clock, b.done, p.changed, p.wait); err != nil {
				return nil, err
			}
			continue
		}
		if p.join {
			err = a.join(ctx, p.base)
		} else {
			var g *grant
			if g, err = a.write(ctx, p.base); err == nil {
				return g, nil
			}
			a.giveBack()
		}
		if err == nil {
			continue
		}
		if err := a.failed(ctx, err); err != nil {
			return nil, err
		}
	}
}

// leaseFor checks req and returns its lease duration, the Backend's
// default if req names none.
func (b *Backend) leaseFor(ctx context.Context, req core.Request) (time.Duration, error) {
	if err := core.ValidateName(req.Name); err != nil {
		return 0, err
	}
	if err := core.ValidateIdentity(req.Identity); err != nil {
		return 0, err
	}
	d := req.Lease
	if d == 0 {
		d = b.lease
	}
	if d < core.MinLease {
		return 0, fmt.Errorf("kube: lease duration %v is shorter than %v", d, core.MinLease)
	}
	return d, ctx.Err()
}

// begin registers an Acquire of req with the Backend (b.active, which the
// caller must mark done, and, for a waiting request, the lock's queue,
// which the caller must leave with dequeue) and returns its attempt.
func (b *Backend) begin(req core.Request, d time.Duration, called time.Time) (*attempt, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, core.ErrClosed
	}
	b.active.Add(1)
	w := &waiter{identity: req.Identity, d: d, legacy: req.Legacy}
	a := &attempt{b: b, st: b.leaseLocked(req.Name), w: w, req: req, d: d, called: called}
	if req.Wait {
		a.st.queue = append(a.st.queue, a.w)
	}
	return a, nil
}

// plan is what an attempt does next: return grant, a Lease handed to an
// offer of this attempt's waiter (adopt, in decideLocked); or write (base
// is the version to update, nil to create the Lease; join: add this
// Backend to the Lease's queue rather than take it; confirm: the offer of
// this attempt's waiter, named in base, that the write renews rather than
// take the Lease afresh); or else wait for changed to close or, if wait >
// 0, for wait to pass, naming who is in the way.
type plan struct {
	base    *coordinationv1.Lease
	grant   *grant
	adopt   *offer
	write   bool
	join    bool
	confirm *offer
	wait    time.Duration
	changed <-chan struct{}
	holder  string // the client identity of the holder, if there is one
	who     string // who is in the way, in words
}

// refusal is the error of an Acquire without Wait that p refuses.
func (p plan) refusal(ns, name string) error {
	return &core.LockedError{Name: name, Holder: p.holder, Detail: fmt.Sprintf("%s holds %s/%s", p.who, ns, name)}
}

// plan decides the attempt's next step. It adopts a Lease handed to an
// offer of the attempt's waiter, making the grant. For a write it counts
// the lock as held by this Backend (failed gives it back), opens a session
// (or takes the confirmed offer's), makes an offer for the next waiter if
// there is one, and marks the write pending. It fails if the Backend has
// closed, is at its MaxLocks, or the next token would not fit the Lease.
func (a *attempt) plan() (plan, error) {
	b, st := a.b, a.st
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return plan{}, core.ErrClosed
	}
	p := a.decideLocked()
	p.changed = st.changed
	if p.adopt != nil {
		if err := a.roomLocked(); err != nil {
			return plan{}, err
		}
		b.held++
		p.grant = a.adoptLocked(p.base, p.adopt)
		return p, nil
	}
	if p.write && !a.retryAt.IsZero() {
		if until := b.clock.Until(a.retryAt); until > 0 {
			p.write, p.wait = false, until
		}
	}
	if !p.write {
		return p, nil
	}
	if p.join {
		st.joining = true
		return p, nil
	}
	if err := a.roomLocked(); err != nil {
		return plan{}, err
	}
	a.confirm = p.confirm != nil
	switch {
	case a.confirm:
		// The token and the holder the releaser wrote for the offer.
		a.session, a.holder, a.token = p.confirm.session, p.confirm.holder, transitions(p.base)
	case a.resume:
		a.token = transitions(p.base)
	default:
		a.token = max(st.token, transitions(p.base)) + 1
	}
	if a.token > math.MaxInt32 {
		return plan{}, fmt.Errorf("%w: kube: %s/%s: the next fencing token, %d, does not fit the Lease's spec.leaseTransitions "+
			"(int32, at most %d); the lock cannot be taken again without breaking fencing",
			errTokenLimit, b.ns, a.req.Name, a.token, math.MaxInt32)
	}
	b.held++ // given back by failed unless the write makes a grant
	if !a.confirm {
		a.session = b.newSessionLocked(a.req.Legacy)
		a.holder = b.holderIdentity(a.req.Identity, a.session)
	}
	st.pending = a.holder
	a.next = nil
	if i := slices.IndexFunc(st.queue, func(w *waiter) bool { return w != a.w }); i >= 0 {
		a.next = b.newOfferLocked(st, st.queue[i]) // the first of the others
	}
	a.stay = a.next != nil
	return p, nil
}

// roomLocked fails if taking one more lock would exceed the Backend's
// MaxLocks.
func (a *attempt) roomLocked() error {
	b := a.b
	if b.maxLocks > 0 && b.held >= b.maxLocks {
		return fmt.Errorf("%w: kube: this elector holds %d locks, the most its client-side rate limit "+
			"to the API server can keep renewed (the elector's --kube-qps sets it); not taking %s/%s",
			core.ErrUnavailable, b.maxLocks, b.ns, a.req.Name)
	}
	return nil
}

// errTokenLimit: the next fencing token of a lock would not fit the
// Lease's int32 spec.leaseTransitions.
var errTokenLimit = errors.New("fencing token at its limit")

// giveBack gives back the lock that plan counted as held for a take
// that made no grant.
func (a *attempt) giveBack() {
	a.b.mu.Lock()
	a.b.held--
	a.b.mu.Unlock()
}

// failed handles a write (a take or a join) that failed: it returns nil
// to try again (after a lost race, at once; after another failure of a
// waiting Acquire, after a backoff) or the error Acquire returns.
func (a *attempt) failed(ctx context.Context, err error) error {
	b := a.b
	switch {
	case errors.Is(err, errAbandoned):
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return core.ErrClosed
	case apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) || apierrors.IsNotFound(err):
		// A lost race: read the Lease again and decide afresh.
		a.conflicts++
		_, gerr := b.get(ctx, a.st, a.d)
		if gerr == nil || errors.Is(gerr, errGone) {
			if !a.req.Wait && a.conflicts >= tryConflicts {
				return a.conflicted()
			}
			return nil
		}
		err = gerr
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if !a.req.Wait {
		return fmt.Errorf("kube: acquire %s/%s: %w", b.ns, a.req.Name, err)
	}
	d := backoff(&a.backoff)
	pause := d/2 + rand.N(d/2+1)
	a.retryAt = b.clock.Now().Add(pause)
	b.log.Warn("acquire failed; retrying", zap.String("name", a.req.Name), zap.Duration("in", pause), zap.Error(err))
	return nil
}

// conflicted is the refusal of an Acquire without Wait whose writes kept
// conflicting: it names the holder of the newest version seen, if any.
func (a *attempt) conflicted() error {
	b := a.b
	b.mu.Lock()
	holder := clientIdentity(holderOf(a.st.obj))
	b.mu.Unlock()
	return &core.LockedError{Name: a.req.Name, Holder: holder, Detail: fmt.Sprintf("%s/%s: writes kept conflicting", b.ns, a.req.Name)}
}

// sleep waits until changed is closed or, if wait > 0, wait has passed. It
// returns ctx.Err() if ctx ends first and core.ErrClosed if done is closed.
func sleep(ctx context.Context, clk clock.Clock, done, changed <-chan struct{}, wait time.Duration) error {
	var timeout <-chan time.Time
	if wait > 0 {
		t := clk.NewTimer(wait)
		defer t.Stop()
		timeout = t.C()
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-done:
		return core.ErrClosed
	case <-changed:
	case <-timeout:
	}
	return nil
}

// dequeue removes w from the queue, if it is still there, letting the next
// waiter go first.
func (b *Backend) dequeue(st *lease, w *waiter) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, x := range st.queue {
		if x == w {
			st.queue = append(st.queue[:i], st.queue[i+1:]...)
			st.pruneOffersLocked()
			b.reconcileLocked(st) // a Lease handed to w's offer is released
			b.withdrawLocked(st)  // if that was the last waiter
			st.broadcast()
			return
		}
	}
}

// attempt is one Acquire call's state.
type attempt struct {
	b   *Backend
	st  *lease
	w   *waiter
	req core.Request
	d   time.Duration
	// called is when Acquire was called, on b.clock
	called time.Time
	// session and holder identity of the write in flight
	session, holder string
	// resume: the write in flight takes over a legacy lease of an earlier
	// process of this elector (Backend.resumable), keeping its token
	resume bool
	// confirm: the write in flight renews a Lease handed to an offer of
	// this attempt's waiter too long ago to be granted as it is
	// (Backend.freshLocked), keeping its holder and token
	confirm bool
	// next is the offer the write in flight publishes for the next waiter
	// of this Backend, if there is one
	next *offer
	// token is the fencing token of the write in flight
	token uint64
	// stay: the write in flight keeps this Backend in the Lease's queue,
	// at its tail, with next, for the other waiters it has for the lock
	stay bool
	// retryAt: after a failed request, no write before then; backoff is
	// the pause that set it, doubling with each failure
	retryAt time.Time
	backoff time.Duration
	// conflicts counts lost races, which end an Acquire without Wait
	conflicts int
}

// decideLocked says whether to adopt a Lease handed to an offer of this
// attempt's waiter (handoverLocked), or to write now (base is the version
// to update, nil to create the Lease), or else how long until the observed
// lease expires (0 if only a change can help) and who is in the way. A
// legacy request writes at once over a live lease that Backend.resumable
// allows it to resume, and sets a.resume.
func (a *attempt) decideLocked() plan {
	st := a.st
	a.resume = false
	if o := st.handedLocked(holderOf(st.obj)); o != nil && o.w == a.w {
		return a.handoverLocked(o)
	}
	switch {
	case st.grant != nil:
		h := clientIdentity(st.grant.holder)
		return plan{holder: h, who: strconv.Quote(h)}
	case a.req.Wait && st.queue[0] != a.w:
		return plan{who: "an earlier waiter"}
	case !a.req.Wait && len(st.queue) > 0:
		return plan{who: "a waiter"}
	case st.pending != "" || st.joining || st.withdrawing || (st.releasing != "" && holderOf(st.obj) == st.releasing):
		// One write at a time per lock from this elector: a second one
		// would conflict anyway.
		return plan{who: "another client of this elector"}
	case st.obj == nil:
		return plan{write: true}
	}
	h, next := holderOf(st.obj), successorOf(st.obj)
	if h == "" && (next == "" || next == a.b.member()) {
		return plan{base: st.obj, write: true}
	}
	// Held, or released with its turn given to another elector: the
	// holder's lease, or the successor's turn, lasts the Lease's duration
	// of this elector's time since it saw this version.
	left := a.b.duration(st.obj) - a.b.clock.Since(st.seen)
	if left <= 0 {
		return plan{base: st.obj, write: true}
	}
	if a.b.ownsSession(h) {
		// A session of this Backend that holds nothing: reconcileLocked
		// is releasing it, to this Backend's first waiter if there is
		// one (its turn is not lost by joining the queue again).
		return plan{wait: left, who: "a release by this elector"}
	}
	if h != "" && a.req.Legacy && a.b.resumable(h, a.req.Identity) && transitions(st.obj) == st.token {
		a.resume = true
		return plan{base: st.obj, write: true}
	}
	if a.req.Wait && !a.b.queuedLocked(st) {
		return plan{base: st.obj, write: true, join: true}
	}
	if h == "" {
		return plan{wait: left, who: "the next waiter, on another elector, whose turn it is"}
	}
	c := clientIdentity(h)
	return plan{wait: left, holder: c, who: strconv.Quote(c)}
}

// handoverLocked is the plan for the Lease as a release handed it to offer
// o of this attempt's waiter: adopt it as it is if it lasts at least the
// waiter's lease, carries a token greater than every one seen before its
// holder, and o is fresh (Backend.freshLocked); confirm it with a write of
// its own (the same holder and token) if only o's age is against it; and
// take it afresh (a new session, the next token) if its duration or token
// are not what the releaser should have written (an edited offer, a Lease
// deleted and made again).
func (a *attempt) handoverLocked(o *offer) plan {
	st := a.st
	switch {
	case a.b.duration(st.obj) < o.w.d || transitions(st.obj) <= st.tokenBefore:
		return plan{base: st.obj, write: true}
	case !a.b.freshLocked(o):
		return plan{base: st.obj, write: true, confirm: o}
	}
	return plan{base: st.obj, adopt: o}
}

// errAbandoned: the write succeeded but the caller left or the Backend
// closed meanwhile; the Lease is being released.
var errAbandoned = errors.New("kube: acquisition abandoned")

// write takes the Lease: Create when base is nil, else an Update of base
// conditioned on its resourceVersion. The request is not tied to ctx, so
// that its outcome is known; if ctx ended meanwhile, what was written is
// released and write returns errAbandoned.
func (a *attempt) write(ctx context.Context, base *coordinationv1.Lease) (*grant, error) {
	b, st := a.b, a.st
	sent := b.clock.Now()
	obj := a.object(base, sent)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout(a.d))
	var (
		res *coordinationv1.Lease
		err error
	)
	trace.Mark(trace.TakeWriteSent)
	if base == nil {
		res, err = b.client.Create(rctx, obj, metav1.CreateOptions{})
	} else {
		res, err = b.client.Update(rctx, obj, metav1.UpdateOptions{})
	}
	trace.Mark(trace.TakeWriteDone)
	cancel()

	b.mu.Lock()
	defer b.mu.Unlock()
	st.pending = ""
	st.broadcast()
	if err != nil {
		// The write may have landed even so (a timeout after the
		// server committed it): if the watch shows it, reconcile
		// releases it.
		b.reconcileLocked(st)
		return nil, err
	}
	if b.closed || ctx.Err() != nil {
		b.observeLocked(st, res, false) // an orphan now: reconcile releases it
		b.reconcileLocked(st)
		return nil, errAbandoned
	}
	return a.grantLocked(base, res, sent), nil
}

// object is the Lease that the write sent at sent puts in place of base
// (nil: a new Lease): naming a.holder, with a.token as its
// spec.leaseTransitions.
func (a *attempt) object(base *coordinationv1.Lease, sent time.Time) *coordinationv1.Lease {
	now := metav1.NewMicroTime(sent)
	acquired := &now
	if (a.resume || a.confirm) && base.Spec.AcquireTime != nil {
		acquired = base.Spec.AcquireTime.DeepCopy()
	}
	renewed := now
	secs := leaseSeconds(a.d)
	trans := int32(a.token) // plan checked that it fits
	var obj *coordinationv1.Lease
	if base == nil {
		obj = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{
			Name:      a.req.Name,
			Namespace: a.b.ns,
			Labels:    map[string]string{ManagedByLabel: ManagedBy},
		}}
	} else {
		obj = base.DeepCopy()
		renewed = renewStamp(base, sent) // a confirmation changes the spec by it alone
	}
	t := turnsOf(obj)
	t.queue, t.next = taken(t.queue, a.b.member(), a.stay), ""
	t.withOffer(a.b.member(), a.next).set(obj)
	obj.Spec.HolderIdentity = &a.holder
	obj.Spec.LeaseDurationSeconds = &secs
	obj.Spec.AcquireTime = acquired
	obj.Spec.RenewTime = &renewed
	obj.Spec.LeaseTransitions = &trans
	return obj
}

// adoptLocked makes the grant of obj, a version of the Lease that a
// releaser handed to offer o of the attempt's waiter: its token is the one
// the releaser wrote, and its validity counts from o's sending.
func (a *attempt) adoptLocked(obj *coordinationv1.Lease, o *offer) *grant {
	a.session, a.holder, a.token = o.session, o.holder, transitions(obj)
	trace.Mark(trace.Adopted)
	g := a.grantLocked(nil, obj, o.sent)
	a.b.log.Debug("lock handed over", zap.String("name", a.req.Name), zap.String("holder", a.holder),
		zap.Uint64("token", a.token), zap.Duration("offered", a.b.clock.Since(o.sent)))
	return g
}

// grantLocked makes the grant of a write sent at sent that replaced base
// with res (or of res as handed to an offer sent at sent), and takes the
// attempt out of the queue.
func (a *attempt) grantLocked(base, res *coordinationv1.Lease, sent time.Time) *grant {
	b, st := a.b, a.st
	g := &grant{
		b:       b,
		st:      st,
		holder:  a.holder,
		session: a.session,
		token:   a.token,
		lease:   a.d,
		waited:  max(0, sent.Sub(a.called)),
		renewMu: make(chan struct{}, 1),
		last:    res,
	}
	g.armLocked(sent)
	st.grant = g
	for i, x := range st.queue {
		if x == a.w {
			st.queue = append(st.queue[:i], st.queue[i+1:]...)
			break
		}
	}
	st.pruneOffersLocked()
	b.observeLocked(st, res, false)
	b.shareLocked(st, st.obj) // the watch may have delivered res's version first
	b.reconcileLocked(st)     // a newer version already seen may name someone else
	st.broadcast()
	if a.resume {
		b.log.Info("resumed a legacy lease of an earlier process of this elector",
			zap.String("name", a.req.Name), zap.String("was", holderOf(base)), zap.String("holder", a.holder), zap.Uint64("token", a.token))
	}
	b.log.Debug("lock acquired", zap.String("name", a.req.Name), zap.String("holder", a.holder), zap.Uint64("token", a.token))
	return g
}
