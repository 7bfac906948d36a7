// Package memory is an in-memory lock table: the authority behind the SDK's
// public test double (package mpsynctest) and the elector's memory backend.
//
// It implements the same semantics as the distributed backends: at most one
// holder per lock, a fencing token that grows with every acquisition, leases
// that expire when not renewed within their duration, FIFO hand-off to
// waiters, and watchers that learn of every change of holder. It has no
// sockets and its only clock is the machine's (clock.Real, the standard
// library's timers), so testing/synctest can drive it.
//
// Memory returns: a lock with no holder, no waiter and no watcher is
// forgotten, so a table that has seen a million names keeps only those in
// use. Fencing tokens come from one counter for the whole table, so they
// stay strictly increasing for each lock across that: every acquisition's
// token is greater than every earlier one's, of any lock; they are not
// consecutive for one lock. A free lock reports a token no less than its
// last holder's: that holder's while the table remembers the lock, the
// table's latest token once it has forgotten it (0 on a table that never
// granted any).
package memory

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/mpsync/mpsync/internal/clock"
	"github.com/mpsync/mpsync/internal/core"
)

// Table is an in-memory lock table. Create it with NewTable; it is safe for
// concurrent use. Close it to end every lease and wake every waiter.
type Table struct {
	lease time.Duration

	mu       sync.Mutex
	locks    map[string]*entry // only locks in use: see dropIfIdleLocked
	tokens   uint64            // the latest token granted, of any lock
	sessions uint64
	closed   bool
}

type entry struct {
	name     string
	token    uint64 // token of the latest acquisition; at creation, t.tokens
	held     *Grant
	waiters  []*waiter
	watchers map[chan struct{}]struct{}
}

type waiter struct {
	req    core.Request
	called time.Time   // when Acquire was called
	grant  chan *Grant // buffered; nil grant means the table closed
}

// NewTable returns an empty table whose leases last lease unless a core.Request
// says otherwise. lease must be at least core.MinLease.
func NewTable(lease time.Duration) (*Table, error) {
	if lease < core.MinLease {
		return nil, fmt.Errorf("memory: lease duration %v is shorter than %v", lease, core.MinLease)
	}
	return &Table{lease: lease, locks: make(map[string]*entry)}, nil
}

func (t *Table) entryLocked(name string) *entry {
	e := t.locks[name]
	if e == nil {
		e = &entry{name: name, token: t.tokens, watchers: make(map[chan struct{}]struct{})}
		t.locks[name] = e
	}
	return e
}

// dropIfIdleLocked forgets e if nobody holds, waits for or watches it.
// Nothing refers to it then but ended grants, which never touch it again.
func (t *Table) dropIfIdleLocked(e *entry) {
	if e.held == nil && len(e.waiters) == 0 && len(e.watchers) == 0 && t.locks[e.name] == e {
		delete(t.locks, e.name)
	}
}

// Acquire takes the lock for req.Identity. If the lock is free and nobody
// waits for it, it is granted at once. Otherwise, without req.Wait it fails
// with a *core.LockedError (errors.Is core.ErrLocked) that names the
// holder; with req.Wait it queues behind earlier waiters until granted, ctx
// ends (ctx.Err(), and nothing is left held) or the table closes
// (core.ErrClosed).
//
// The grant's Validity counts from the moment Acquire was called, the time
// it waited included.
func (t *Table) Acquire(ctx context.Context, req core.Request) (*Grant, error) {
	called := time.Now()
	if err := core.ValidateName(req.Name); err != nil {
		return nil, err
	}
	if err := core.ValidateIdentity(req.Identity); err != nil {
		return nil, err
	}
	if req.Lease == 0 {
		req.Lease = t.lease
	}
	if req.Lease < core.MinLease {
		return nil, fmt.Errorf("memory: lease duration %v is shorter than %v", req.Lease, core.MinLease)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, core.ErrClosed
	}
	e := t.entryLocked(req.Name)
	if e.held == nil && len(e.waiters) == 0 {
		g := t.grantLocked(e, req, called)
		t.mu.Unlock()
		return g, nil
	}
	if !req.Wait {
		refused := &core.LockedError{Name: req.Name, Detail: fmt.Sprintf("a waiter holds %q", req.Name)}
		if e.held != nil {
			refused.Holder = e.held.identity
			refused.Detail = fmt.Sprintf("%q holds %q", e.held.identity, req.Name)
		}
		t.mu.Unlock()
		return nil, refused
	}
	w := &waiter{req: req, called: called, grant: make(chan *Grant, 1)}
	e.waiters = append(e.waiters, w)
	t.mu.Unlock()

	select {
	case g := <-w.grant:
		if g == nil {
			return nil, core.ErrClosed
		}
		return g, nil
	case <-ctx.Done():
	}
	t.mu.Lock()
	for i, x := range e.waiters {
		if x == w {
			e.waiters = append(e.waiters[:i], e.waiters[i+1:]...)
			t.dropIfIdleLocked(e)
			t.mu.Unlock()
			return nil, ctx.Err()
		}
	}
	t.mu.Unlock()
	// Granted (or closed) as ctx ended: give it straight back.
	if g := <-w.grant; g != nil {
		g.end(nil)
	}
	return nil, ctx.Err()
}

// grantLocked grants e to req, whose Acquire was called at called.
func (t *Table) grantLocked(e *entry, req core.Request, called time.Time) *Grant {
	t.tokens++
	e.token = t.tokens
	t.sessions++
	g := &Grant{
		t:        t,
		e:        e,
		identity: req.Identity,
		session:  "s" + strconv.FormatUint(t.sessions, 10),
		token:    e.token,
		lease:    req.Lease,
		waited:   time.Since(called),
	}
	g.armLocked()
	e.held = g
	t.notifyLocked(e)
	return g
}

func (t *Table) notifyLocked(e *entry) {
	for ch := range e.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Holder returns the current holder of name, and false if nobody holds it.
func (t *Table) Holder(name string) (core.Holder, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.locks[name]
	if e == nil || e.held == nil {
		return core.Holder{}, false
	}
	return core.Holder{Identity: e.held.identity, Token: e.held.token}, true
}

// Revoke ends the current lease on name as a real loss would (the holder's
// Done channel closes and Err reports core.ErrRevoked) and hands the lock to
// the next waiter. It reports whether there was a holder.
func (t *Table) Revoke(name string) bool {
	t.mu.Lock()
	e := t.locks[name]
	var g *Grant
	if e != nil {
		g = e.held
	}
	t.mu.Unlock()
	if g == nil {
		return false
	}
	return g.end(core.ErrRevoked)
}

// Stats reports how many locks are held and how many callers wait.
func (t *Table) Stats() (held, waiting int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range t.locks {
		if e.held != nil {
			held++
		}
		waiting += len(e.waiters)
	}
	return held, waiting
}

// Watch calls fn with the state of name, then again after every change of
// holder, until ctx ends (it returns ctx.Err()) or the table closes
// (core.ErrClosed). A slow fn does not block the table: changes that happen
// while it runs coalesce, and the next call gets the latest state. fn is
// called from the goroutine that called Watch, never with a lock held.
func (t *Table) Watch(ctx context.Context, name string, fn func(core.Holder)) error {
	if err := core.ValidateName(name); err != nil {
		return err
	}
	ch := make(chan struct{}, 1)
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return core.ErrClosed
	}
	e := t.entryLocked(name)
	e.watchers[ch] = struct{}{}
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		delete(e.watchers, ch)
		t.dropIfIdleLocked(e)
		t.mu.Unlock()
	}()

	var last core.Holder
	first := true
	for {
		t.mu.Lock()
		closed := t.closed
		var h core.Holder
		if e.held != nil {
			h = core.Holder{Identity: e.held.identity, Token: e.held.token}
		} else {
			h = core.Holder{Token: e.token}
		}
		t.mu.Unlock()
		if closed {
			return core.ErrClosed
		}
		if first || h != last {
			first = false
			last = h
			fn(h)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Close ends every lease (their Err reports core.ErrClosed), fails every
// waiting Acquire with core.ErrClosed and ends every Watch. Later calls fail
// with core.ErrClosed. Close is idempotent.
func (t *Table) Close() {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.closed = true
	var held []*Grant
	for _, e := range t.locks {
		if e.held != nil {
			held = append(held, e.held)
		}
		for _, w := range e.waiters {
			w.grant <- nil
		}
		e.waiters = nil
		t.notifyLocked(e)
	}
	t.mu.Unlock()
	for _, g := range held {
		g.end(core.ErrClosed)
	}
}

// Grant is one acquisition of a lock: a lease that lasts until released,
// revoked, or not renewed within its duration. It is safe for concurrent use.
type Grant struct {
	t        *Table
	e        *entry
	identity string
	session  string
	token    uint64
	lease    time.Duration
	waited   time.Duration // from the Acquire call to the grant
	ending   core.Ending   // ended by endLocked

	// guarded by t.mu
	expiry clock.Deadline // re-armed by every renewal
	ended  bool
	err    error
}

// armLocked (re)starts the lease's expiry: with no renewal within the
// lease duration the grant ends with core.ErrExpired.
func (g *Grant) armLocked() {
	g.expiry.Arm(clock.Real{}, g.lease, &g.t.mu, func() { g.endLocked(core.ErrExpired) })
}

// Session is unique to this acquisition within the table.
func (g *Grant) Session() string { return g.session }

// Token is the fencing token: greater than that of every earlier
// acquisition in this table, of this lock or any other.
func (g *Grant) Token() uint64 { return g.token }

// Validity is how long the holder may act on the lease, counted from when
// Acquire was called: core.WaitedValidity of the lease duration and the
// time the call waited for the grant.
func (g *Grant) Validity() time.Duration { return core.WaitedValidity(g.lease, g.waited) }

// Done is closed when the lease ends for any reason.
func (g *Grant) Done() <-chan struct{} { return g.ending.Done() }

// AfterDone arranges for f to be called, on a goroutine of its own, when
// the lease ends for any reason, or at once if it has ended: a way to learn
// of the end with no goroutine waiting on Done meanwhile. stop unregisters
// f and reports whether that kept it from being called, as the stop of
// context.AfterFunc does.
func (g *Grant) AfterDone(f func()) (stop func() bool) { return g.ending.AfterDone(f) }

// Err is nil while the lease lasts and after a release; after a loss it
// says why: core.ErrRevoked, core.ErrExpired or core.ErrClosed.
func (g *Grant) Err() error {
	g.t.mu.Lock()
	defer g.t.mu.Unlock()
	return g.err
}

// Renew extends the lease by its full duration from now and returns the
// validity, counted from when Renew was called. It fails with an error
// wrapping core.ErrLockLost once the lease has ended.
func (g *Grant) Renew(ctx context.Context) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	g.t.mu.Lock()
	defer g.t.mu.Unlock()
	if g.ended {
		reason := g.err
		if reason == nil {
			reason = core.ErrNotHeld
		}
		return 0, fmt.Errorf("%w: %w", core.ErrLockLost, reason)
	}
	g.armLocked()
	return core.Validity(g.lease), nil
}

// Release ends the lease and hands the lock to the next waiter. Releasing a
// lease that has already ended does nothing and returns nil.
func (g *Grant) Release(ctx context.Context) error {
	g.end(nil)
	return nil
}

// end ends the lease with reason (nil for a release) and reports whether it
// was still live.
func (g *Grant) end(reason error) bool {
	g.t.mu.Lock()
	defer g.t.mu.Unlock()
	return g.endLocked(reason)
}

// endLocked is end with t.mu held.
func (g *Grant) endLocked(reason error) bool {
	t := g.t
	if g.ended {
		return false
	}
	g.ended = true
	g.err = reason
	g.expiry.Stop()
	g.ending.End()
	e := g.e
	if e.held == g {
		e.held = nil
		if len(e.waiters) > 0 && !t.closed {
			w := e.waiters[0]
			e.waiters = e.waiters[1:]
			w.grant <- t.grantLocked(e, w.req, w.called)
		} else {
			t.notifyLocked(e)
			t.dropIfIdleLocked(e)
		}
	}
	return true
}
