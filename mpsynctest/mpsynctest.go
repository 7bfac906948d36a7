// Package mpsynctest provides an in-memory elector for unit tests of code
// that uses package mpsync, in the manner of net/http/httptest: a real
// implementation of the lock semantics (one holder at a time, fencing
// tokens, FIFO hand-off, lease expiry, watches) with no sockets, plus knobs
// for the faults a test wants to provoke.
//
//	f := mpsynctest.NewElector()
//	defer f.Close()
//	lock, _ := mpsync.NewLock("test", mpsync.WithTransport(f.Transport()))
//
// Its transport answers as the elector's does: a refused TryLock is a
// *mpsync.LockedError naming the holder, and after Close requests fail
// with errors wrapping mpsync.ErrClosed. It does not import package
// testing.
package mpsynctest

import (
	"context"
	"fmt"
	"time"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/memory"
)

// DefaultLeaseDuration is the lease duration of an Elector made without
// LeaseDuration, as for the real elector.
const DefaultLeaseDuration = 15 * time.Second

// An Elector is an in-memory elector. Create it with NewElector; it is safe
// for concurrent use. Every Transport it returns shares its lock table, as
// clients of one elector do.
type Elector struct {
	table *memory.Table
}

// An Option configures an Elector.
type Option func(*options)

type options struct {
	lease time.Duration
}

// LeaseDuration sets how long a lease lasts without renewal (at least one
// second; shorter values are raised to one second). Lock renews at a third
// of the validity (its first renewal at a random moment between a sixth
// and a third), so only a holder that stops renewing loses its lease.
func LeaseDuration(d time.Duration) Option {
	return func(o *options) { o.lease = max(d, core.MinLease) }
}

// NewElector returns an Elector with no locks held.
func NewElector(opts ...Option) *Elector {
	o := options{lease: DefaultLeaseDuration}
	for _, opt := range opts {
		opt(&o)
	}
	t, err := memory.NewTable(o.lease)
	if err != nil {
		panic(fmt.Sprintf("mpsynctest: %v", err)) // unreachable: lease >= MinLease
	}
	return &Elector{table: t}
}

// Transport returns a transport to this elector for mpsync.WithTransport.
func (f *Elector) Transport() mpsync.Transport { return transport{f.table} }

// Holder returns the identity of the current holder of the lock name, and
// false if nobody holds it.
func (f *Elector) Holder(name string) (string, bool) {
	h, ok := f.table.Holder(name)
	return h.Identity, ok
}

// Token returns the fencing token of the current holder of the lock name,
// and false if nobody holds it.
func (f *Elector) Token(name string) (uint64, bool) {
	h, ok := f.table.Holder(name)
	return h.Token, ok
}

// Revoke ends the current holder's lease on the lock name as a real loss
// would: the holder's leadership context ends with a cause wrapping
// mpsync.ErrLockLost and mpsync.ErrRevoked, and the lock passes to the next
// waiter. It reports whether there was a holder.
func (f *Elector) Revoke(name string) bool { return f.table.Revoke(name) }

// Close ends every lease, as an elector that shuts down does, fails every
// waiter and watch with an error, and makes later requests fail.
func (f *Elector) Close() { f.table.Close() }

type transport struct {
	table *memory.Table
}

// Acquire implements mpsync.Transport. A refusal is a *mpsync.LockedError,
// as from the elector.
func (t transport) Acquire(ctx context.Context, name, identity string, wait bool) (mpsync.Lease, error) {
	g, err := t.table.Acquire(ctx, core.Request{Name: name, Identity: identity, Wait: wait})
	if err != nil {
		return nil, err
	}
	return g, nil
}

// Watch implements mpsync.Transport.
func (t transport) Watch(ctx context.Context, name string, fn func(mpsync.Holder)) error {
	return t.table.Watch(ctx, name, func(h core.Holder) { fn(mpsync.Holder(h)) })
}
