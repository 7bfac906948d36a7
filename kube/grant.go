package kube

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/clock"
	"github.com/mpsync/mpsync/internal/core"
)

// grant is one acquisition of a Lease. It implements backend.Grant.
type grant struct {
	b       *Backend
	st      *lease
	holder  string // spec.holderIdentity written for it
	session string
	token   uint64
	lease   time.Duration
	waited  time.Duration // from the Acquire call to the write that granted it, on b.clock
	ending  core.Ending   // ended by endLocked
	renewMu chan struct{} // one renewal at a time; a channel so that a wait can end with ctx

	// guarded by b.mu
	last     *coordinationv1.Lease // the last version this grant wrote or saw naming it
	deadline clock.Deadline        // ends the grant at its local validity deadline
	ended    bool
	err      error
}

var (
	_ backend.Grant      = (*grant)(nil)
	_ backend.AfterDoner = (*grant)(nil)
)

// armLocked (re)starts the local deadline: the validity of a write sent at
// sent. With no renewal by then the grant ends with core.ErrExpired.
func (g *grant) armLocked(sent time.Time) {
	b := g.b
	g.deadline.Arm(b.clock, b.clock.Until(sent.Add(core.Validity(g.lease))), &b.mu, func() {
		if g.ended {
			return
		}
		g.endLocked(fmt.Errorf("%w: lease %s/%s", core.ErrExpired, b.ns, g.st.name))
		b.log.Warn("lock lost: not renewed within its validity",
			zap.String("name", g.st.name), zap.String("session", g.session))
		// The validity is over on this clock, but this clock may run fast
		// against the client's, which counts the same validity from an
		// earlier instant. So release the Lease only once the whole lease
		// duration has passed here since the last renewal was sent: at
		// least D*(1-Rho) of real time, past any holder's deadline, and
		// still sooner than others would take it by waiting.
		st := g.st
		st.expired, st.clearAfter = g.holder, sent.Add(g.lease)
		b.clock.AfterFunc(b.clock.Until(st.clearAfter), func() {
			b.mu.Lock()
			defer b.mu.Unlock()
			if st.obj != nil {
				b.reconcileLocked(st)
			}
		})
		b.reconcileLocked(st)
	})
}

// endLocked ends the grant with reason (nil for a release), unless it has
// ended already.
func (g *grant) endLocked(reason error) {
	if g.ended {
		return
	}
	g.ended = true
	g.err = reason
	g.b.held--
	g.deadline.Stop()
	g.ending.End()
	if g.st.grant == g {
		g.st.grant = nil
		g.st.broadcast()
	}
}

// rebaseLocked makes obj, a version of the Lease that names this grant,
// the base of its next renewal or release if it is newer than the last
// one: a queue join by another elector changes the version but not the
// holder, and a write conditioned on the older one would only conflict.
func (g *grant) rebaseLocked(obj *coordinationv1.Lease) {
	if g.last == nil || newer(obj.ResourceVersion, g.last.ResourceVersion) {
		g.last = obj
	}
}

// shareLocked makes obj, the informer's copy of a version of st's Lease
// that the watch delivered, the copy this Backend keeps (st.obj, and the
// grant's base) wherever it keeps another copy of that same version: the
// answer to a write of ours, which the watch delivers after it. The
// informer keeps its copy in any case, so keeping the answer too would
// hold every renewed Lease twice.
func (b *Backend) shareLocked(st *lease, obj *coordinationv1.Lease) {
	same := func(o *coordinationv1.Lease) bool {
		return o != nil && o != obj && o.ResourceVersion != "" && o.ResourceVersion == obj.ResourceVersion
	}
	if same(st.obj) {
		st.obj = obj
	}
	if g := st.grant; g != nil && same(g.last) {
		g.last = obj
	}
}

func (g *grant) lastWritten() *coordinationv1.Lease {
	g.b.mu.Lock()
	defer g.b.mu.Unlock()
	return g.last
}

// lostLocked is Renew's error once the grant has ended.
func (g *grant) lostLocked() error {
	reason := g.err
	if reason == nil {
		reason = core.ErrNotHeld
	}
	return fmt.Errorf("%w: %w", core.ErrLockLost, reason)
}

// Session implements backend.Grant: unique to this acquisition within the
// Backend, and part of the holder identity written in the Lease.
func (g *grant) Session() string { return g.session }

// Token implements backend.Grant: the Lease's spec.leaseTransitions as this
// acquisition wrote it.
func (g *grant) Token() uint64 { return g.token }

// Validity implements backend.Grant: counted from when Acquire was called,
// core.WaitedValidity of the lease duration and the time from the call to
// the write that granted it, on the Backend's clock.
func (g *grant) Validity() time.Duration { return core.WaitedValidity(g.lease, g.waited) }

// Done implements backend.Grant.
func (g *grant) Done() <-chan struct{} { return g.ending.Done() }

// AfterDone implements backend.AfterDoner: f is called on a goroutine of
// its own when the grant ends, however it ends, or at once if it has.
func (g *grant) AfterDone(f func()) (stop func() bool) { return g.ending.AfterDone(f) }

// Err implements backend.Grant: nil while held and after Release, else
// core.ErrRevoked, core.ErrExpired or core.ErrClosed (wrapped).
func (g *grant) Err() error {
	g.b.mu.Lock()
	defer g.b.mu.Unlock()
	return g.err
}

// Renew implements backend.Grant: an Update of spec.renewTime conditioned
// on the newest version this grant wrote or saw naming it (other electors
// joining the Lease's queue write versions that still name it). If that
// conflicts (someone else wrote the Lease), it reads the Lease once and,
// if the Lease still names this grant, writes again; otherwise the grant
// has been lost. The validity
// returned counts from when Renew was called. Errors other than a loss
// (wrapping core.ErrLockLost) are transient: the API server did not
// answer, and the grant lasts until its local deadline.
func (g *grant) Renew(ctx context.Context) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	start := g.b.clock.Now()
	select {
	case g.renewMu <- struct{}{}:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	defer func() { <-g.renewMu }()

	b := g.b
	b.mu.Lock()
	if g.ended {
		err := g.lostLocked()
		b.mu.Unlock()
		return 0, err
	}
	base := g.last
	b.mu.Unlock()

	for attempt := 0; ; attempt++ {
		obj := base.DeepCopy()
		now := renewStamp(base, b.clock.Now())
		secs := leaseSeconds(g.lease)
		obj.Spec.RenewTime = &now
		obj.Spec.LeaseDurationSeconds = &secs
		rctx, cancel := context.WithTimeout(ctx, requestTimeout(g.lease))
		res, err := b.client.Update(rctx, obj, metav1.UpdateOptions{})
		cancel()
		if err == nil {
			b.mu.Lock()
			defer b.mu.Unlock()
			if g.ended {
				// Expired while the write was on its way; reconcile
				// releases what it wrote.
				b.observeLocked(g.st, res, false)
				return 0, g.lostLocked()
			}
			g.rebaseLocked(res)
			g.armLocked(start)
			b.observeLocked(g.st, res, false)
			return core.Validity(g.lease), nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if !apierrors.IsConflict(err) || attempt > 0 {
			return 0, fmt.Errorf("kube: renew %s/%s: %w", b.ns, g.st.name, err)
		}
		if base, err = g.reread(ctx); err != nil {
			return 0, err
		}
	}
}

// renewStamp is the spec.renewTime of a renewal of base sent at now: now,
// unless that is not later than base's (the wall clock stepped back, or
// stands still in a test), then a microsecond after base's. Every renewal
// must change the spec: others count a lease from when they saw its spec
// change (sameTerm).
func renewStamp(base *coordinationv1.Lease, now time.Time) metav1.MicroTime {
	t := now.Truncate(time.Microsecond)
	if prev := base.Spec.RenewTime; prev != nil && !t.After(prev.Time) {
		t = prev.Time.Truncate(time.Microsecond).Add(time.Microsecond)
	}
	return metav1.NewMicroTime(t)
}

// reread reads the Lease after a renewal of g conflicted. It returns the
// version to renew from if the Lease still names g, and else the loss (the
// Lease was deleted, or get applied a version naming someone else).
func (g *grant) reread(ctx context.Context) (*coordinationv1.Lease, error) {
	b := g.b
	cur, err := b.get(ctx, g.st, g.lease)
	if err != nil && !errors.Is(err, errGone) {
		return nil, fmt.Errorf("kube: renew %s/%s: %w", b.ns, g.st.name, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if errors.Is(err, errGone) {
		g.endLocked(fmt.Errorf("%w: lease %s/%s was deleted", core.ErrRevoked, b.ns, g.st.name))
	}
	if g.ended {
		return nil, g.lostLocked()
	}
	g.rebaseLocked(cur)
	return g.last, nil
}

// Release implements backend.Grant: it ends the grant (Err stays nil) and
// ends its term in the Lease with one write, which hands the Lease to the
// next waiter's offer, if one is queued, or else clears
// spec.holderIdentity (Backend.release). Waiters on every elector learn
// of it from their watch. If the write fails the error
// says so and the Lease is taken by others after its duration. Releasing a
// grant that has ended does nothing and returns nil.
func (g *grant) Release(ctx context.Context) error {
	b := g.b
	b.mu.Lock()
	if g.ended {
		b.mu.Unlock()
		return nil
	}
	g.endLocked(nil)
	g.st.releasing = g.holder
	base := g.last
	b.mu.Unlock()
	err := b.release(ctx, g.st, base, g.holder, g.lease, false)
	b.mu.Lock()
	if g.st.releasing == g.holder {
		g.st.releasing = ""
	}
	b.mu.Unlock()
	if err != nil {
		b.log.Warn("release failed; the lease expires after its duration", zap.String("name", g.st.name), zap.Error(err))
		return err
	}
	b.log.Debug("lock released", zap.String("name", g.st.name), zap.String("session", g.session))
	return nil
}
