package kube

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	coordinationv1 "k8s.io/api/coordination/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/client-go/tools/cache"

	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/trace"
)

// lease is what a Backend knows of one Lease. Guarded by Backend.mu.
type lease struct {
	name string
	// obj is the newest version seen (from the watch, a Get or a write of
	// ours); nil while the Lease does not exist. Never modified: copy it.
	obj *coordinationv1.Lease
	// rv is the resourceVersion of the newest event applied, deletions
	// included; older ones are ignored.
	rv string
	// seen is when this process first saw the term of the Lease as obj
	// has it (sameTerm), on its monotonic clock: an unreleased Lease, or a
	// released one whose turn is another elector's, may be taken once its
	// duration has passed since.
	seen time.Time
	// token is the greatest spec.leaseTransitions ever seen, so that a
	// Lease deleted and created again does not reuse tokens; tokenBefore
	// is the greatest seen before the holder obj names (or before obj
	// left the Lease free): a term handed to this Backend must have a
	// greater one.
	token, tokenBefore uint64
	// grant is this Backend's live acquisition of the Lease, if any.
	grant *grant
	// pending is the holder identity of an acquisition in flight, and
	// releasing that of a release in flight: neither is an orphan.
	pending, releasing string
	// orphaning: a release of a Lease naming a session of this Backend
	// that holds nothing is in flight. After one fails, none starts
	// before orphanRetry; orphanBackoff is the pause that set it,
	// doubling with each failure.
	orphaning     bool
	orphanRetry   time.Time
	orphanBackoff time.Duration
	// expired is the holder identity of this Backend's latest grant that
	// ended at its validity deadline, and clearAfter the instant, on this
	// Backend's clock, before which that holder must not be cleared from
	// the Lease: the full lease duration after the write that last renewed
	// it. The grant's client counts its validity on its own clock, which
	// may run slower than this one by up to 2*core.Rho.
	expired    string
	clearAfter time.Time
	// queue holds the Acquire calls waiting here, first come first.
	queue []*waiter
	// offers are the offers this Backend has made for the Lease, for
	// waiters in queue, oldest first (at most maxOffers).
	offers []*offer
	// joining: an Acquire's write adding this Backend to the Lease's
	// queue is in flight. withdrawing: a write taking it out of the
	// Lease's turns (withdrawLocked) is, and withdrawRV is the version
	// that write was based on, tried once.
	joining, withdrawing bool
	withdrawRV           string
	// withdrawBackoff is the pause before the last failed withdrawal is
	// tried again, doubling with each failure.
	withdrawBackoff time.Duration
	// changed is closed and replaced whenever anything above changes.
	changed chan struct{}
}

// waiter is one Acquire call queued for a lock: the client identity and
// the lease duration an offer made for it publishes, and whether it is a
// legacy request (core.Request.Legacy), whose sessions are marked.
type waiter struct {
	identity string
	d        time.Duration
	legacy   bool
}

func (b *Backend) leaseLocked(name string) *lease {
	st := b.leases[name]
	if st == nil {
		st = &lease{name: name, changed: make(chan struct{})}
		b.leases[name] = st
	}
	return st
}

func (st *lease) broadcast() {
	close(st.changed)
	st.changed = make(chan struct{})
}

// holder is the state Watch reports.
func (st *lease) holder() core.Holder {
	tok := st.token
	if st.obj != nil {
		tok = transitions(st.obj)
	}
	h := holderOf(st.obj)
	if h == "" {
		return core.Holder{Token: tok}
	}
	return core.Holder{Identity: clientIdentity(h), Token: tok}
}

// duration is how long, after it last changed, a Lease that names a holder
// stays that holder's: its spec.leaseDurationSeconds, or the default lease
// duration if it has none.
func (b *Backend) duration(obj *coordinationv1.Lease) time.Duration {
	if obj.Spec.LeaseDurationSeconds == nil || *obj.Spec.LeaseDurationSeconds <= 0 {
		return b.lease
	}
	return time.Duration(*obj.Spec.LeaseDurationSeconds) * time.Second
}

// onEvent is the informer's handler: every Lease of the namespace, in the
// order the watch delivers them.
func (b *Backend) onEvent(obj any, deleted bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		// The deletion was missed while the watch was down: the last
		// known state is older than the deletion, whose version is
		// unknown.
		l, ok := d.Obj.(*coordinationv1.Lease)
		if !ok {
			return
		}
		b.mu.Lock()
		b.goneLocked(b.leaseLocked(l.Name))
		b.mu.Unlock()
		return
	}
	l, ok := obj.(*coordinationv1.Lease)
	if !ok {
		return
	}
	if trace.Enabled() {
		trace.Mark(trace.WatchEvent, "name", l.Name, "free", fmt.Sprint(holderOf(l) == ""),
			"holder", clientIdentity(holderOf(l)), "rv", l.ResourceVersion)
	}
	b.mu.Lock()
	st := b.leaseLocked(l.Name)
	b.observeLocked(st, l, deleted)
	if !deleted {
		b.shareLocked(st, l)
	}
	b.mu.Unlock()
}

// newer reports whether resourceVersion rv is newer than cur. Resource
// versions compare as integers (Kubernetes 1.35 and later promise it); if
// either is malformed, any different version counts as newer, which is
// how informers treat them.
func newer(rv, cur string) bool {
	if cur == "" {
		return true
	}
	if c, err := resourceversion.CompareResourceVersion(rv, cur); err == nil {
		return c > 0
	}
	return rv != cur
}

// observeLocked applies a version of the Lease (or, if deleted, its
// deletion) unless an equal or newer one has been applied already.
func (b *Backend) observeLocked(st *lease, obj *coordinationv1.Lease, deleted bool) {
	if !newer(obj.ResourceVersion, st.rv) {
		return
	}
	st.rv = obj.ResourceVersion
	if deleted || !sameTerm(st.obj, obj) {
		st.seen = b.clock.Now()
	}
	if deleted || st.obj == nil || holderOf(obj) != holderOf(st.obj) {
		st.tokenBefore = st.token
	}
	if deleted {
		st.obj = nil
	} else {
		st.obj = obj
		st.token = max(st.token, transitions(obj))
		if g := st.grant; g != nil && holderOf(obj) == g.holder {
			g.rebaseLocked(obj) // a queue join: renew and release from it
		}
	}
	b.reconcileLocked(st)
	b.withdrawLocked(st)
	st.broadcast()
}

// sameTerm reports whether a newer version cur of the Lease continues the
// term of old: the same spec and the same successor, so that only the
// queue, or metadata nobody decides by, changed. Others joining the queue
// then do not restart anyone's count of the holder's lease. This is the
// rule client-go's LeaderElector follows (its observed time restarts only
// when the leader election record changes); it is safe because every
// write that extends a term changes the spec: an acquisition writes a
// fresh holder identity, and a renewal a renewTime later than the one it
// replaces (renewStamp).
func sameTerm(old, cur *coordinationv1.Lease) bool {
	return old != nil && apiequality.Semantic.DeepEqual(old.Spec, cur.Spec) && successorOf(old) == successorOf(cur)
}

// goneLocked records that the Lease does not exist (a Get said so, or the
// watch missed its deletion). Its last version stays the newest applied,
// so stale events of the old object are ignored; a newer one brings it
// back, which a later event or a conflicting write corrects.
func (b *Backend) goneLocked(st *lease) {
	if st.obj == nil {
		return
	}
	st.obj = nil
	st.seen = b.clock.Now()
	b.reconcileLocked(st)
	st.broadcast()
}

// reconcileLocked ends this Backend's grant on the Lease if the Lease no
// longer names it, and releases the Lease if it names a session of this
// Backend that holds nothing (a write whose answer was lost, a renewal that
// landed after its grant expired, an acquisition whose caller left, an
// offer handed the Lease after its waiter left).
func (b *Backend) reconcileLocked(st *lease) {
	h := holderOf(st.obj)
	if g := st.grant; g != nil {
		if h == g.holder {
			return
		}
		g.endLocked(fmt.Errorf("%w: lease %s/%s now names holder %q", core.ErrRevoked, b.ns, st.name, h))
		b.log.Warn("lock lost: the lease names another holder",
			zap.String("name", st.name), zap.String("session", g.session), zap.String("holder", h))
	}
	if h == "" || h == st.pending || h == st.releasing || st.handedLocked(h) != nil || !b.ownsSession(h) {
		return
	}
	if st.orphaning || b.orphansEnd || b.clock.Now().Before(st.orphanRetry) {
		return
	}
	if h == st.expired && b.clock.Now().Before(st.clearAfter) {
		return // armLocked reconciles again at clearAfter
	}
	st.orphaning = true
	obj := st.obj
	b.orphans.Add(1)
	go func() {
		defer b.orphans.Done()
		ctx, cancel := context.WithTimeout(context.Background(), maxRequestTimeout)
		defer cancel()
		err := b.release(ctx, st, obj, h, b.duration(obj), true)
		b.log.Debug("released an orphaned lease", zap.String("name", st.name), zap.String("holder", h), zap.Error(err))
		b.mu.Lock()
		defer b.mu.Unlock()
		st.orphaning = false
		if err == nil {
			st.orphanBackoff = 0
			b.reconcileLocked(st) // a version seen meanwhile may need it again
			return
		}
		// The request failed (release gives up on a conflict only once
		// the Lease names someone else): try again after a backoff.
		pause := backoff(&st.orphanBackoff)
		st.orphanRetry = b.clock.Now().Add(pause)
		b.log.Warn("could not release an orphaned lease; retrying", zap.String("name", st.name),
			zap.String("holder", h), zap.Duration("in", pause), zap.Error(err))
		b.retryLocked(st, pause, b.reconcileLocked)
	}()
}

// backoff doubles *d, from minBackoff to at most maxBackoff, and returns
// it: the pause before a failed request is tried again.
func backoff(d *time.Duration) time.Duration {
	*d = min(max(2**d, minBackoff), maxBackoff)
	return *d
}

// retryLocked calls fn with st, under b.mu, once pause has passed.
func (b *Backend) retryLocked(st *lease, pause time.Duration, fn func(*lease)) {
	b.clock.AfterFunc(pause, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		fn(st)
	})
}

// release gives up the Lease for holder, a session of this Backend: an
// Update of base that ends holder's term and hands the Lease on in the
// same write (giveUpLocked): to the offer of the next elector in the
// Lease's queue, or to this Backend's own next waiter, or else leaves it
// free. keepTurn hands it to this Backend's own next waiter first, for a
// holder that held nothing (an orphan). On a conflict it reads the Lease
// again and retries while it still names holder. d is the lease's
// duration, to bound each request.
func (b *Backend) release(ctx context.Context, st *lease, base *coordinationv1.Lease, holder string, d time.Duration, keepTurn bool) error {
	for range 3 {
		b.mu.Lock()
		obj := b.giveUpLocked(st, base, b.waitingLocked(st), keepTurn)
		b.mu.Unlock()
		rctx, cancel := context.WithTimeout(ctx, requestTimeout(d))
		trace.Mark(trace.ReleaseWriteSent)
		res, err := b.client.Update(rctx, obj, metav1.UpdateOptions{})
		trace.Mark(trace.ReleaseWriteDone)
		cancel()
		if err == nil {
			b.mu.Lock()
			b.observeLocked(st, res, false)
			b.mu.Unlock()
			return nil
		}
		if !apierrors.IsConflict(err) {
			return fmt.Errorf("kube: release %s/%s: %w", b.ns, st.name, err)
		}
		cur, err := b.get(ctx, st, d)
		if errors.Is(err, errGone) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("kube: release %s/%s: %w", b.ns, st.name, err)
		}
		if holderOf(cur) != holder {
			return nil // someone else's now, or gone
		}
		base = cur
	}
	return fmt.Errorf("kube: release %s/%s: conflicting writes kept racing it", b.ns, st.name)
}

// errGone is get's error for a Lease that does not exist.
var errGone = errors.New("kube: lease does not exist")

// get reads the Lease, applies what it finds, and returns it; errGone if
// it does not exist.
func (b *Backend) get(ctx context.Context, st *lease, d time.Duration) (*coordinationv1.Lease, error) {
	rctx, cancel := context.WithTimeout(ctx, requestTimeout(d))
	defer cancel()
	cur, err := b.client.Get(rctx, st.name, metav1.GetOptions{})
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case apierrors.IsNotFound(err):
		b.goneLocked(st)
		return nil, errGone
	case err != nil:
		return nil, err
	}
	b.observeLocked(st, cur, false)
	return cur, nil
}
