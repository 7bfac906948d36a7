package transport_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/internal/transport"
)

// These tests drive the SDK's public API over the HTTP transport against a
// real elector process on the memory backend.

// patience bounds every wait for something that should happen promptly.
const patience = 10 * time.Second

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), patience)
	t.Cleanup(cancel)
	return ctx
}

func newTransport(t *testing.T, addr string) *mpsync.HTTPTransport {
	t.Helper()
	tr, err := mpsync.NewHTTPTransport(addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

func newLock(t *testing.T, tr mpsync.Transport, name, id string) *mpsync.Lock {
	t.Helper()
	l, err := mpsync.NewLock(name, mpsync.WithTransport(tr), mpsync.WithIdentity(id))
	require.NoError(t, err)
	return l
}

func TestSDKLockedError(t *testing.T) {
	addr, _ := transport.StartElector(t, "--backend", "memory")
	tr := newTransport(t, addr)
	a, b := newLock(t, tr, "jobs", "a"), newLock(t, tr, "jobs", "b")
	_, err := a.Lock(ctxFor(t))
	require.NoError(t, err)
	defer a.Unlock()
	_, err = b.TryLock(ctxFor(t))
	assert.ErrorIs(t, err, mpsync.ErrLocked)
	var le *mpsync.LockedError
	require.ErrorAs(t, err, &le)
	assert.Equal(t, "jobs", le.Name)
	assert.Equal(t, "a", le.Holder)
}

// TestSDKResign: over HTTP, the leader hands over to a waiting candidate
// and leads again when that one resigns in turn.
func TestSDKResign(t *testing.T) {
	addr, _ := transport.StartElector(t, "--backend", "memory")
	start := func(id string) (*mpsync.Election, func()) {
		e, err := mpsync.NewElection("jobs", mpsync.WithTransport(newTransport(t, addr)), mpsync.WithIdentity(id))
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- e.Run(ctx) }()
		return e, func() {
			cancel()
			for range e.Events() {
			}
			assert.ErrorIs(t, <-done, context.Canceled)
		}
	}
	until := func(e *mpsync.Election, ok func(mpsync.Event) bool) mpsync.Event {
		t.Helper()
		for {
			select {
			case ev, open := <-e.Events():
				require.True(t, open, "Events closed")
				if ok(ev) {
					return ev
				}
			case <-time.After(patience):
				require.FailNow(t, "no such event")
			}
		}
	}
	isLeader := func(ev mpsync.Event) bool { return ev.Role == mpsync.Leader }

	a, stopA := start("a")
	defer stopA()
	first := until(a, isLeader)
	b, stopB := start("b")
	defer stopB()
	until(b, func(ev mpsync.Event) bool { return ev.Leader == "a" })

	require.NoError(t, a.Resign(ctxFor(t)))
	assert.ErrorIs(t, context.Cause(first.Context), mpsync.ErrResigned)
	lead := until(b, isLeader)
	assert.Greater(t, lead.Token, first.Token)
	until(a, func(ev mpsync.Event) bool { return ev.Role == mpsync.Follower && ev.Leader == "b" })

	require.NoError(t, b.Resign(ctxFor(t)))
	again := until(a, isLeader)
	assert.Greater(t, again.Token, lead.Token)
}

// TestHTTPTransportClose: Close ends the leases a transport carries, as an
// elector that goes away would, the elector releases them, and later calls
// fail with ErrClosed.
func TestHTTPTransportClose(t *testing.T) {
	addr, _ := transport.StartElector(t, "--backend", "memory")
	tr, err := mpsync.NewHTTPTransport(addr)
	require.NoError(t, err)
	a := newLock(t, tr, "jobs", "a")
	held, err := a.Lock(ctxFor(t))
	require.NoError(t, err)
	watching := make(chan struct{}, 1)
	watched := make(chan error, 1)
	go func() {
		watched <- tr.Watch(t.Context(), "jobs", func(mpsync.Holder) {
			select {
			case watching <- struct{}{}:
			default:
			}
		})
	}()
	select {
	case <-watching:
	case <-time.After(patience):
		require.FailNow(t, "no watch state")
	}

	require.NoError(t, tr.Close())
	select {
	case err := <-watched:
		assert.ErrorIs(t, err, mpsync.ErrClosed, "the watch's error")
		assert.ErrorIs(t, err, mpsync.ErrUnavailable, "the watch's error")
	case <-time.After(patience):
		require.FailNow(t, "the watch outlived Close")
	}
	select {
	case <-held.Done():
	case <-time.After(patience):
		require.FailNow(t, "the term outlived Close")
	}
	assert.ErrorIs(t, context.Cause(held), mpsync.ErrLockLost)
	assert.ErrorIs(t, context.Cause(held), mpsync.ErrUnavailable)
	assert.NoError(t, a.Unlock(), "Unlock after the loss")
	_, err = a.TryLock(ctxFor(t))
	assert.ErrorIs(t, err, mpsync.ErrClosed)
	assert.ErrorIs(t, err, mpsync.ErrUnavailable)
	assert.NoError(t, tr.Close(), "a second Close")

	// The elector released the lock when the stream closed: another
	// client waits for it and gets it.
	b := newLock(t, newTransport(t, addr), "jobs", "b")
	bheld, err := b.Lock(ctxFor(t))
	require.NoError(t, err)
	tok, _ := mpsync.FencingToken(bheld)
	atok, _ := mpsync.FencingToken(held)
	assert.Greater(t, tok, atok)
	require.NoError(t, b.Unlock())
}

// TestUnlockContextOverHTTP: a release bounded by an already ended
// context still gives the lock up, through the closing of the lease's
// stream.
func TestUnlockContextOverHTTP(t *testing.T) {
	addr, _ := transport.StartElector(t, "--backend", "memory")
	tr := newTransport(t, addr)
	a, b := newLock(t, tr, "jobs", "a"), newLock(t, tr, "jobs", "b")
	_, err := a.Lock(ctxFor(t))
	require.NoError(t, err)
	ended, cancel := context.WithCancel(t.Context())
	cancel()
	assert.ErrorIs(t, a.UnlockContext(ended), context.Canceled)
	_, err = b.Lock(ctxFor(t))
	require.NoError(t, err, "the lock was not given up")
	require.NoError(t, b.Unlock())
}
