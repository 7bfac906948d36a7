package kube

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"go.uber.org/zap"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/clock"
	"github.com/mpsync/mpsync/internal/core"
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
// an error wrapping core.ErrLocked that names the holder, or, with
// req.Wait, queues behind earlier Acquire calls of this Backend and writes
// as soon as the watch shows the Lease released or the observed lease
// expires; a failed request is retried with backoff. A conflicting write is
// a lost race: the Lease is read again and the decision made afresh.
//
// Acquire returns ctx.Err() if ctx ends first, leaving nothing held (a
// write already sent is released), and core.ErrClosed once Close has begun.
// The grant's Validity counts from when the write that took the Lease was
// sent; its Waited says how long after the call that was.
func (b *Backend) Acquire(ctx context.Context, req core.Request) (backend.Grant, error) {
	called := b.clock.Now()
	if err := core.ValidateName(req.Name); err != nil {
		return nil, err
	}
	if err := core.ValidateIdentity(req.Identity); err != nil {
		return nil, err
	}
	d := req.Lease
	if d == 0 {
		d = b.lease
	}
	if d < core.MinLease {
		return nil, fmt.Errorf("kube: lease duration %v is shorter than %v", d, core.MinLease)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, core.ErrClosed
	}
	b.active.Add(1)
	defer b.active.Done()
	st := b.leaseLocked(req.Name)
	w := &waiter{}
	if req.Wait {
		st.queue = append(st.queue, w)
	}
	b.mu.Unlock()
	defer b.dequeue(st, w)

	if err := b.waitSynced(ctx); err != nil {
		return nil, err
	}

	a := &attempt{b: b, st: st, w: w, req: req, d: d, called: called}
	var (
		retryAt   time.Time // after a failed request: no write before then
		backoff   time.Duration
		conflicts int
	)
	for {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return nil, core.ErrClosed
		}
		base, write, wait, holder := a.decideLocked()
		if write && !retryAt.IsZero() {
			if until := b.clock.Until(retryAt); until > 0 {
				write, wait = false, until
			}
		}
		if write && b.maxLocks > 0 && b.held >= b.maxLocks {
			b.mu.Unlock()
			return nil, fmt.Errorf("%w: kube: this elector holds %d locks, the most its client-side rate limit "+
				"to the API server can keep renewed (the elector's --kube-qps sets it); not taking %s/%s",
				core.ErrUnavailable, b.maxLocks, b.ns, req.Name)
		}
		if write {
			b.held++ // given back below unless the write makes a grant
			a.session = b.newSessionLocked(req.Legacy)
			a.holder = b.holderIdentity(req.Identity, a.session)
			st.pending = a.holder
		}
		changed := st.changed
		b.mu.Unlock()

		if write {
			g, err := a.write(ctx, base)
			if err != nil {
				b.mu.Lock()
				b.held--
				b.mu.Unlock()
			}
			switch {
			case err == nil:
				return g, nil
			case errors.Is(err, errAbandoned):
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				return nil, core.ErrClosed
			case apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) || apierrors.IsNotFound(err):
				// A lost race: read the Lease again and decide afresh.
				conflicts++
				if _, gerr := b.get(ctx, st, d); gerr != nil && !errors.Is(gerr, errGone) {
					err = gerr
					break
				}
				if !req.Wait && conflicts >= tryConflicts {
					return nil, fmt.Errorf("%w: %s/%s: writes kept conflicting", core.ErrLocked, b.ns, req.Name)
				}
				continue
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if !req.Wait {
				return nil, fmt.Errorf("kube: acquire %s/%s: %w", b.ns, req.Name, err)
			}
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			pause := backoff/2 + rand.N(backoff/2+1)
			retryAt = b.clock.Now().Add(pause)
			b.log.Warn("acquire failed; retrying", zap.String("name", req.Name), zap.Duration("in", pause), zap.Error(err))
			continue
		}
		if !req.Wait {
			return nil, fmt.Errorf("%w: %s holds %s/%s", core.ErrLocked, holder, b.ns, req.Name)
		}

		if err := sleep(ctx, b.clock, b.done, changed, wait); err != nil {
			return nil, err
		}
	}
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
}

// decideLocked says whether to write now (base is the version to update, nil
// to create the Lease), or else how long until the observed lease expires
// (0 if only a change can help) and who holds it. A legacy request writes
// at once over a live lease that Backend.resumable allows it to resume,
// and sets a.resume.
func (a *attempt) decideLocked() (base *coordinationv1.Lease, write bool, wait time.Duration, holder string) {
	st := a.st
	a.resume = false
	switch {
	case st.grant != nil:
		return nil, false, 0, strconv.Quote(clientIdentity(st.grant.holder))
	case a.req.Wait && st.queue[0] != a.w:
		return nil, false, 0, "an earlier waiter"
	case !a.req.Wait && len(st.queue) > 0:
		return nil, false, 0, "a waiter"
	case st.pending != "":
		// One write at a time per lock from this elector: a second one
		// would conflict anyway.
		return nil, false, 0, "another client of this elector"
	case st.obj == nil:
		return nil, true, 0, ""
	}
	h := holderOf(st.obj)
	if h == "" {
		return st.obj, true, 0, ""
	}
	left := a.b.duration(st.obj) - a.b.clock.Since(st.seen)
	if left <= 0 {
		return st.obj, true, 0, ""
	}
	if a.req.Legacy && a.b.resumable(h, a.req.Identity) && transitions(st.obj) == st.token {
		a.resume = true
		return st.obj, true, 0, ""
	}
	return nil, false, left, strconv.Quote(clientIdentity(h))
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
	b.mu.Lock()
	token := max(st.token, transitions(base)) + 1
	if a.resume {
		token = transitions(base)
	}
	b.mu.Unlock()

	sent := b.clock.Now()
	now := metav1.NewMicroTime(sent)
	acquired := &now
	if a.resume && base.Spec.AcquireTime != nil {
		acquired = base.Spec.AcquireTime.DeepCopy()
	}
	secs := leaseSeconds(a.d)
	trans := int32(token)
	var obj *coordinationv1.Lease
	if base == nil {
		obj = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{
			Name:      a.req.Name,
			Namespace: b.ns,
			Labels:    map[string]string{ManagedByLabel: ManagedBy},
		}}
	} else {
		obj = base.DeepCopy()
	}
	obj.Spec.HolderIdentity = &a.holder
	obj.Spec.LeaseDurationSeconds = &secs
	obj.Spec.AcquireTime = acquired
	obj.Spec.RenewTime = &now
	obj.Spec.LeaseTransitions = &trans

	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout(a.d))
	var (
		res *coordinationv1.Lease
		err error
	)
	if base == nil {
		res, err = b.client.Create(rctx, obj, metav1.CreateOptions{})
	} else {
		res, err = b.client.Update(rctx, obj, metav1.UpdateOptions{})
	}
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
	g := &grant{
		b:       b,
		st:      st,
		holder:  a.holder,
		session: a.session,
		token:   token,
		lease:   a.d,
		waited:  max(0, sent.Sub(a.called)),
		done:    make(chan struct{}),
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
	b.observeLocked(st, res, false)
	b.reconcileLocked(st) // a newer version already seen may name someone else
	st.broadcast()
	if a.resume {
		b.log.Info("resumed a legacy lease of an earlier process of this elector",
			zap.String("name", a.req.Name), zap.String("was", holderOf(base)), zap.String("holder", a.holder), zap.Uint64("token", token))
	}
	b.log.Debug("lock acquired", zap.String("name", a.req.Name), zap.String("holder", a.holder), zap.Uint64("token", token))
	return g, nil
}
