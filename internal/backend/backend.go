// Package backend defines what the elector needs from a coordination
// backend, and provides the in-memory one. The Kubernetes Lease backend lives
// in its own package so that the memory backend never compiles client-go.
package backend

import (
	"context"
	"time"

	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/fake"
)

// Grant is one acquisition of a lock, held until released or lost.
// Implementations are safe for concurrent use.
type Grant interface {
	// Session is unique to this acquisition within the backend.
	Session() string
	// Token is the fencing token: greater than every earlier acquisition's.
	Token() uint64
	// Validity is how long the holder may act on the lease, counted from
	// when Acquire was called (docs/DESIGN.md, "The timing model").
	Validity() time.Duration
	// Done is closed when the lease ends for any reason.
	Done() <-chan struct{}
	// Err is nil while the lease lasts and after a release, and says why
	// after a loss.
	Err() error
	// Renew extends the lease and returns its validity counted from when
	// Renew was called. After the lease ended it fails with an error
	// wrapping core.ErrLockLost.
	Renew(ctx context.Context) (time.Duration, error)
	// Release ends the lease, so that the next waiter can take it. It is a
	// no-op on a lease that already ended.
	Release(ctx context.Context) error
}

// Waited is implemented by a Grant whose Validity counts from the write
// that granted it rather than from the Acquire call: Waited is how long,
// on the backend's clock, that write was sent after Acquire was called. A
// holder that counts from when it asked may add Waited, shrunk by the
// drift bound, to Validity. Without it a grant that came after a long
// wait must be renewed to be of use (its validity mostly spent).
type Waited interface {
	Waited() time.Duration
}

// Backend keeps locks. Implementations are safe for concurrent use.
type Backend interface {
	// Acquire takes req.Name for req.Identity: at once, or after waiting if
	// req.Wait, or fails with an error wrapping core.ErrLocked. If ctx ends
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

// Memory is the in-memory backend: locks live in this process only.
type Memory struct {
	*fake.Table
}

// NewMemory returns a memory backend whose leases last lease by default.
func NewMemory(lease time.Duration) (*Memory, error) {
	t, err := fake.NewTable(lease)
	if err != nil {
		return nil, err
	}
	return &Memory{Table: t}, nil
}

// Acquire implements Backend.
func (m *Memory) Acquire(ctx context.Context, req core.Request) (Grant, error) {
	g, err := m.Table.Acquire(ctx, req)
	if err != nil {
		return nil, err
	}
	return g, nil
}

// Ready implements Backend: memory is always ready until closed.
func (m *Memory) Ready(context.Context) error { return nil }

// Close implements Backend.
func (m *Memory) Close(context.Context) error {
	m.Table.Close()
	return nil
}
