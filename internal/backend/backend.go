// Package backend defines what the elector needs from a coordination
// backend, and provides the in-memory one. The Kubernetes Lease backend lives
// in its own package so that the memory backend never compiles client-go.
package backend

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/memory"
)

// Grant is one acquisition of a lock, held until released or lost: an
// mpsync.Lease (one definition of Token, Validity, Done, Err, Renew and
// Release, with the same contracts on both sides of the wire) plus the
// session the elector names it by. Validity counts from when Acquire was
// called, however long it waited: the backend adds the time waited, through
// core.WaitedValidity, so that its caller needs no renewal and no knowledge
// of which backend it has (docs/DESIGN.md, "The timing model"). Renew fails
// with an error wrapping core.ErrLockLost once the lease has ended.
// Implementations are safe for concurrent use.
type Grant interface {
	mpsync.Lease
	// Session is unique to this acquisition within the backend.
	Session() string
}

// AfterDoner is implemented by grants that can call a function when they
// end, with no goroutine waiting on Done meanwhile: the grants of both
// backends here (their core.Ending). The elector serves a held stream on
// one goroutine that learns of its grant's end so (see AfterDone).
type AfterDoner interface {
	// AfterDone arranges for f to be called, on a goroutine of its own,
	// when the grant ends (Done is closed), however it ends, or at once if
	// it has ended. stop unregisters f and reports whether that kept f
	// from being called; false if f has been started or stop was called
	// before, as the stop of context.AfterFunc reports.
	AfterDone(f func()) (stop func() bool)
}

// AfterDone is g's AfterDone if g is an AfterDoner. Otherwise it waits on
// g.Done on a goroutine of its own until the grant ends (then it calls f)
// or stop is called, with the same contract.
func AfterDone(g Grant, f func()) (stop func() bool) {
	if a, ok := g.(AfterDoner); ok {
		return a.AfterDone(f)
	}
	var state atomic.Int32 // 0 waiting, 1 f called, 2 stopped
	stopped := make(chan struct{})
	go func() {
		select {
		case <-g.Done():
			if state.CompareAndSwap(0, 1) {
				f()
			}
		case <-stopped:
		}
	}()
	return func() bool {
		if !state.CompareAndSwap(0, 2) {
			return false
		}
		close(stopped)
		return true
	}
}

// Backend keeps locks. Implementations are safe for concurrent use.
type Backend interface {
	// Acquire takes req.Name for req.Identity: at once, or after waiting if
	// req.Wait, or fails with a *core.LockedError (errors.Is
	// core.ErrLocked) naming the holder it saw, if any. If ctx ends
	// while waiting it returns ctx.Err() and leaves nothing held.
	Acquire(ctx context.Context, req core.Request) (Grant, error)
	// Watch calls fn with the state of name and again after every change of
	// holder until ctx ends; slow callers get the latest state.
	Watch(ctx context.Context, name string, fn func(core.Holder)) error
	// Ready reports whether the backend can serve requests now.
	Ready(ctx context.Context) error
	// Close releases every lease this backend holds, fails waiters and ends
	// watches. Later calls fail with core.ErrClosed.
	Close(ctx context.Context) error
}

// Memory is the in-memory backend: locks live in this process only, in a
// memory.Table that it keeps to itself. Create it with NewMemory. Its
// grants are AfterDoners.
type Memory struct {
	t *memory.Table
}

// NewMemory returns a memory backend whose leases last lease by default.
func NewMemory(lease time.Duration) (*Memory, error) {
	t, err := memory.NewTable(lease)
	if err != nil {
		return nil, err
	}
	return &Memory{t: t}, nil
}

// Acquire implements Backend.
func (m *Memory) Acquire(ctx context.Context, req core.Request) (Grant, error) {
	g, err := m.t.Acquire(ctx, req)
	if err != nil {
		return nil, err
	}
	return g, nil
}

// Watch implements Backend.
func (m *Memory) Watch(ctx context.Context, name string, fn func(core.Holder)) error {
	return m.t.Watch(ctx, name, fn)
}

// Revoke ends the current lease on name as a real loss would (its Err
// reports core.ErrRevoked) and reports whether there was one. It makes
// Memory a server.Revoker, for the elector's debug endpoint.
func (m *Memory) Revoke(name string) bool { return m.t.Revoke(name) }

// Holder returns the current holder of name, and false if nobody holds it.
func (m *Memory) Holder(name string) (core.Holder, bool) { return m.t.Holder(name) }

// Stats reports how many locks are held and how many callers wait.
func (m *Memory) Stats() (held, waiting int) { return m.t.Stats() }

// Ready implements Backend: memory is always ready until closed.
func (m *Memory) Ready(context.Context) error { return nil }

// Close implements Backend.
func (m *Memory) Close(context.Context) error {
	m.t.Close()
	return nil
}
