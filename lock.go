package mpsync

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/trace"
)

// releaseTimeout bounds the release that follows the end of a term.
const releaseTimeout = 5 * time.Second

// A Lock is a distributed lock with a name. A process holds it between a
// successful Lock or TryLock and the end of the leadership context they
// return. Create Locks with NewLock; the zero value is not usable. A Lock is
// safe for concurrent use, and is not reentrant: while it holds or is
// acquiring its lock, Lock and TryLock fail with ErrBusy.
type Lock struct {
	name string
	cfg  *config

	mu   sync.Mutex
	busy bool  // a Lock or TryLock is under way
	term *term // the latest term, until Unlock
}

// NewLock returns a Lock for the lock name, which must be a DNS-1123
// subdomain (ErrInvalidName otherwise). It does not contact the elector.
func NewLock(name string, opts ...Option) (*Lock, error) {
	cfg, err := newConfig(name, opts)
	if err != nil {
		return nil, err
	}
	return &Lock{name: name, cfg: cfg}, nil
}

// Name is the lock's name.
func (l *Lock) Name() string { return l.name }

// Identity is who this Lock holds the lock as.
func (l *Lock) Identity() string { return l.cfg.identity }

// Lock blocks until this Lock holds the lock, or ctx ends (it then returns
// ctx.Err() and holds nothing). It returns the leadership context, derived
// from ctx, which ends when the lock is lost (context.Cause wraps
// ErrLockLost), on Unlock (the cause is ErrUnlocked), or when ctx ends,
// which releases the lock (a release bounded by 5 seconds, as Unlock's). It also ends on its own at the local validity
// deadline if no renewal arrives in time, whatever the transport does.
// While the context lasts, the Lock renews the lease in the background,
// every third of its validity; the first renewal comes at a random moment
// between a sixth and a third, so that locks taken together do not renew
// together. An Election renews its terms the same way.
//
// Lock returns an error wrapping ErrUnavailable, naming the address, if the
// elector cannot be reached; it does not retry that.
func (l *Lock) Lock(ctx context.Context) (context.Context, error) {
	return l.lock(ctx, true)
}

// TryLock is Lock without the wait: if another holder has the lock it
// returns at once an error wrapping ErrLocked, through a *LockedError that
// names the holder (see LockedError).
func (l *Lock) TryLock(ctx context.Context) (context.Context, error) {
	return l.lock(ctx, false)
}

func (l *Lock) lock(ctx context.Context, wait bool) (context.Context, error) {
	l.mu.Lock()
	if l.busy || (l.term != nil && l.term.ctx.Err() == nil) {
		l.mu.Unlock()
		return nil, ErrBusy
	}
	old := l.term
	l.term = nil
	l.busy = true
	l.mu.Unlock()
	if old != nil {
		<-old.done // the last term ended on its own; let its keeper finish
	}

	t, err := acquire(ctx, l.cfg, l.name, wait)

	l.mu.Lock()
	l.busy = false
	l.term = t
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return t.ctx, nil
}

// Unlock ends the leadership context (its cause becomes ErrUnlocked), then
// releases the lock, and returns once the release is done; its error is
// the release's. The release may take up to 5 seconds against an elector
// that does not answer (it then fails and the lease is left to end at the
// elector); UnlockContext lets the caller choose the bound. After the lock
// was lost, Unlock only forgets the term and returns nil. It returns
// ErrNotHeld if there is no term to end.
func (l *Lock) Unlock() error {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	return l.UnlockContext(ctx)
}

// UnlockContext is Unlock with the release bounded by ctx instead of 5
// seconds. The leadership context ends at once, whatever ctx. If ctx ends
// before the release is done, UnlockContext returns ctx.Err() and the
// release is abandoned: the HTTP transport then closes the lease's stream,
// which makes the elector release the lock; otherwise the lease expires.
func (l *Lock) UnlockContext(ctx context.Context) error {
	_, err := l.end(ctx, ErrUnlocked)
	return err
}

// end takes the Lock's term, ends it with cause and waits for its release,
// bounded by ctx. It reports whether the term was live when it was taken
// (false after a loss, with a nil error); with no term it returns
// ErrNotHeld.
func (l *Lock) end(ctx context.Context, cause error) (live bool, err error) {
	l.mu.Lock()
	t := l.term
	l.term = nil
	l.mu.Unlock()
	if t == nil {
		return false, ErrNotHeld
	}
	live = t.ctx.Err() == nil
	t.releaseCtx.Store(&ctx)
	t.cancel(cause)
	select {
	case <-t.done:
		return live, t.releaseErr
	case <-ctx.Done():
		return live, ctx.Err()
	}
}

// term is one holding of a lock: its leadership context, and the keeper
// goroutine that renews it and releases it at the end.
type term struct {
	ctx        *leaseCtx
	cancel     context.CancelCauseFunc
	done       chan struct{} // closed when the keeper has exited
	releaseErr error         // set before done is closed
	// releaseCtx bounds the release, if set before the term ends (by
	// UnlockContext); otherwise releaseTimeout does.
	releaseCtx atomic.Pointer[context.Context]
}

// acquire gets the lock through cfg.transport and starts its term.
func acquire(ctx context.Context, cfg *config, name string, wait bool) (*term, error) {
	for {
		start := time.Now()
		lease, err := cfg.transport.Acquire(ctx, name, cfg.identity, wait)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("mpsync: acquire %q: %w", name, err)
		}
		trace.Mark(trace.Acquired)
		deadline := start.Add(lease.Validity())
		if v := lease.Validity(); stale(v, time.Since(start)) {
			// The wait ate much of the validity that counts from the
			// request: renew now for a fresh deadline before acting.
			sent := time.Now()
			rctx, cancel := context.WithTimeout(ctx, v)
			v, err = lease.Renew(rctx)
			cancel()
			if err != nil {
				releaseBounded(cfg, lease)
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				if wait && errors.Is(err, ErrLockLost) {
					cfg.logger.Info("lost the lock before the first renewal; waiting again", zap.Error(err))
					continue
				}
				return nil, fmt.Errorf("mpsync: renew %q after acquiring: %w", name, err)
			}
			deadline = sent.Add(v)
		}
		if err := ctx.Err(); err != nil {
			releaseBounded(cfg, lease)
			return nil, err
		}
		cfg.logger.Debug("acquired", zap.Uint64("token", lease.Token()))
		return startTerm(ctx, cfg, lease, deadline), nil
	}
}

// stale reports whether a lease granted validity v, counted from a request
// sent elapsed ago, has less than half of its validity left: less than half
// of what it gives beyond the wait it counts in. A backend counts the time
// an acquisition waited into its validity shrunk by the drift bound, so a
// long wait (about 25 leases and more) leaves the deadline near even though
// the lease was just written; and the Kubernetes backend grants a Lease
// handed over by another's write counting from an earlier write of its own.
// Such a lease is renewed before the holder acts on it. A lease granted
// after a shorter wait is not: its deadline is about a lease away, and the
// term first renews it between a sixth and a third of what is left.
func stale(v, elapsed time.Duration) bool {
	left := v - elapsed
	beyond := v - core.LeastElapsed(elapsed)
	return left < beyond/2
}

// releaseBounded gives lease up, bounded by releaseTimeout.
func releaseBounded(cfg *config, lease Lease) error {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	return release(ctx, cfg, lease)
}

// release gives lease up, bounded by ctx.
func release(ctx context.Context, cfg *config, lease Lease) error {
	trace.Mark(trace.ReleaseSent)
	err := lease.Release(ctx)
	trace.Mark(trace.ReleaseDone)
	if err != nil {
		cfg.logger.Warn("release failed; the lease will expire", zap.Error(err))
	}
	return err
}

// lostCause turns the reason a lease ended into a cause wrapping ErrLockLost.
func lostCause(err error) error {
	switch {
	case err == nil:
		return fmt.Errorf("%w: lease ended", ErrLockLost)
	case errors.Is(err, ErrLockLost):
		return err
	default:
		return fmt.Errorf("%w: %w", ErrLockLost, err)
	}
}

func startTerm(parent context.Context, cfg *config, lease Lease, deadline time.Time) *term {
	inner, cancel := context.WithCancelCause(parent)
	ctx := &leaseCtx{Context: inner, cancel: cancel, token: lease.Token()}
	ctx.deadline.Store(&deadline)
	t := &term{ctx: ctx, cancel: cancel, done: make(chan struct{})}
	// The local deadline is enforced by a timer of its own, so that it
	// holds even while the keeper is stuck in a transport call.
	expiry := time.AfterFunc(time.Until(deadline), func() { cancel(errExpired) })
	go t.keep(cfg, lease, ctx, expiry)
	return t
}

var errExpired = fmt.Errorf("%w: %w", ErrLockLost, ErrExpired)

// firstRenewal is how long a new term waits before it first renews a
// lease whose validity has left to run: a random moment between a sixth
// and a third of left, never later than the third at which every later
// renewal comes. Without the jitter, locks taken together (a process that
// takes many at its start, an elector's clients after it restarts) would
// renew together, every third of the validity, for as long as they are
// held: a burst of requests at the elector and the API server, and of
// connections, goroutines and memory in the elector, each time. It costs
// no renewal in the long run: only the first comes earlier.
func firstRenewal(left time.Duration) time.Duration {
	third := left / 3
	if third <= 1 {
		return third
	}
	return third - rand.N(third/2)
}

// leaseCtx is a leadership context. On top of cancellation it checks the
// local validity deadline whenever it is looked at (Done, Err), so that a
// process resumed after a pause (SIGSTOP, a long GC) sees its term over at
// once, even before its timers have run.
type leaseCtx struct {
	context.Context
	cancel   context.CancelCauseFunc
	token    uint64
	deadline atomic.Pointer[time.Time]
}

type validKey struct{}

func (c *leaseCtx) check() {
	if !time.Now().Before(*c.deadline.Load()) {
		c.cancel(errExpired)
	}
}

func (c *leaseCtx) Done() <-chan struct{} {
	c.check()
	return c.Context.Done()
}

func (c *leaseCtx) Err() error {
	c.check()
	return c.Context.Err()
}

func (c *leaseCtx) Value(key any) any {
	switch key.(type) {
	case tokenKey:
		return c.token
	case validKey:
		return c
	}
	return c.Context.Value(key)
}

// ValidUntil returns the local instant until which the holder of the
// leadership context ctx (or of a context derived from it) may act on the
// lock, as of the latest renewal; each renewal moves it later. It returns
// false if ctx is not a leadership context. A caller that starts an
// operation on a shared resource can bound it by this instant; what must
// not run after a loss at all needs the fencing token.
func ValidUntil(ctx context.Context) (time.Time, bool) {
	c, ok := ctx.Value(validKey{}).(*leaseCtx)
	if !ok {
		return time.Time{}, false
	}
	return *c.deadline.Load(), true
}

// keep renews the lease until the term ends, then releases it: first at a
// random moment between a sixth and a third of the validity left
// (firstRenewal), then every third of the validity each renewal returns.
func (t *term) keep(cfg *config, lease Lease, ctx *leaseCtx, expiry *time.Timer) {
	defer close(t.done)
	defer expiry.Stop()
	renew := time.NewTimer(firstRenewal(time.Until(*ctx.deadline.Load())))
	defer renew.Stop()
	for {
		select {
		case <-t.ctx.Done():
			// Unlock, the parent context, or the local deadline. The
			// context is done before the release leaves: no overlap.
			trace.Mark(trace.TermEnded)
			cfg.logger.Debug("term ended", zap.Error(context.Cause(t.ctx)))
			if p := t.releaseCtx.Load(); p != nil {
				t.releaseErr = release(*p, cfg, lease)
			} else {
				t.releaseErr = releaseBounded(cfg, lease)
			}
			return
		case <-lease.Done():
			cause := lostCause(lease.Err())
			t.cancel(cause)
			cfg.logger.Warn("lock lost", zap.Error(cause))
			return
		case <-renew.C:
			sent := time.Now()
			deadline := *ctx.deadline.Load()
			rctx, cancel := context.WithDeadline(t.ctx, deadline)
			v, err := lease.Renew(rctx)
			cancel()
			switch {
			case err == nil && v > 0:
				if !expiry.Stop() {
					continue // the deadline passed first; the term is over
				}
				deadline = sent.Add(v)
				ctx.deadline.Store(&deadline)
				expiry.Reset(time.Until(deadline))
				renew.Reset(v / 3)
			case errors.Is(err, ErrLockLost):
				t.cancel(lostCause(err))
				cfg.logger.Warn("lock lost", zap.Error(err))
				return
			default:
				if err == nil {
					err = fmt.Errorf("transport returned validity %v", v)
				}
				retry := min(time.Until(deadline)/4, time.Second)
				cfg.logger.Info("renewal failed; retrying", zap.Error(err), zap.Duration("retry", retry))
				renew.Reset(max(retry, 10*time.Millisecond))
			}
		}
	}
}
