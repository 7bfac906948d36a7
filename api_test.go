package mpsync_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/mpsynctest"
)

// TestLockedErrorNamesHolder: a refused TryLock is a *LockedError naming
// the holder, and still an ErrLocked.
func TestLockedErrorNamesHolder(t *testing.T) {
	f := mpsynctest.NewElector()
	defer f.Close()
	a, err := mpsync.NewLock("test", mpsync.WithTransport(f.Transport()), mpsync.WithIdentity("a"))
	require.NoError(t, err)
	b, err := mpsync.NewLock("test", mpsync.WithTransport(f.Transport()), mpsync.WithIdentity("b"))
	require.NoError(t, err)
	_, err = a.Lock(t.Context())
	require.NoError(t, err)
	defer a.Unlock()

	_, err = b.TryLock(t.Context())
	require.Error(t, err)
	assert.ErrorIs(t, err, mpsync.ErrLocked)
	var le *mpsync.LockedError
	require.ErrorAs(t, err, &le)
	assert.Equal(t, "a", le.Holder)
	assert.Equal(t, "test", le.Name)
	assert.Contains(t, err.Error(), `"a" holds "test"`)
}

// releaseStuck wraps a transport so that its leases' Release blocks until
// its context ends, like a release to an elector that does not answer;
// then it releases for real, so that nothing is left held.
type releaseStuck struct{ mpsync.Transport }

func (r releaseStuck) Acquire(ctx context.Context, name, id string, wait bool) (mpsync.Lease, error) {
	l, err := r.Transport.Acquire(ctx, name, id, wait)
	if err != nil {
		return nil, err
	}
	return stuckRelease{l}, nil
}

type stuckRelease struct{ mpsync.Lease }

func (l stuckRelease) Release(ctx context.Context) error {
	<-ctx.Done()
	_ = l.Lease.Release(context.Background())
	return ctx.Err()
}

// TestUnlockBounds: Unlock gives a stuck release 5 s; UnlockContext the
// caller's bound. Either way the leadership context ends at once.
func TestUnlockBounds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := mpsynctest.NewElector()
		defer f.Close()
		l, err := mpsync.NewLock("test", mpsync.WithTransport(releaseStuck{f.Transport()}), mpsync.WithIdentity("a"))
		require.NoError(t, err)

		held, err := l.Lock(t.Context())
		require.NoError(t, err)
		start := time.Now()
		err = l.Unlock()
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Equal(t, 5*time.Second, time.Since(start), "Unlock's bound on the release")
		assert.ErrorIs(t, context.Cause(held), mpsync.ErrUnlocked)

		held, err = l.Lock(t.Context())
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		start = time.Now()
		err = l.UnlockContext(ctx)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Equal(t, 300*time.Millisecond, time.Since(start), "UnlockContext's bound is the caller's")
		assert.ErrorIs(t, context.Cause(held), mpsync.ErrUnlocked)
		assert.ErrorIs(t, l.UnlockContext(t.Context()), mpsync.ErrNotHeld)
		synctest.Wait() // the keeper's release has run to its end
		_, held2 := f.Holder("test")
		assert.False(t, held2, "the lock is still held after the stuck releases returned")
	})
}

// nextEvent returns the next event of e, failing the test if none comes
// while the bubble's goroutines can still make progress.
func nextEvent(t *testing.T, e *mpsync.Election) mpsync.Event {
	t.Helper()
	select {
	case ev, ok := <-e.Events():
		require.True(t, ok, "Events closed")
		return ev
	case <-time.After(time.Minute):
		require.FailNow(t, "no event within a minute")
	}
	return mpsync.Event{}
}

// nextLeader skips Follower events up to the next Leader event of e.
func nextLeader(t *testing.T, e *mpsync.Election) mpsync.Event {
	t.Helper()
	for {
		if ev := nextEvent(t, e); ev.Role == mpsync.Leader {
			return ev
		}
	}
}

func startElection(t *testing.T, f *mpsynctest.Elector, id string) (*mpsync.Election, context.CancelFunc) {
	t.Helper()
	e, err := mpsync.NewElection("test", mpsync.WithTransport(f.Transport()), mpsync.WithIdentity(id))
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

// TestResignHandsOver: the leader resigns, another candidate leads, the
// one that resigned stays a candidate and leads again when the other
// resigns in turn.
func TestResignHandsOver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := mpsynctest.NewElector()
		defer f.Close()
		a, stopA := startElection(t, f, "a")
		defer stopA()
		first := nextLeader(t, a)
		b, stopB := startElection(t, f, "b")
		defer stopB()
		ev := nextEvent(t, b)
		for ev.Leader != "a" { // the start's may say nobody leads
			require.Equal(t, mpsync.Follower, ev.Role)
			ev = nextEvent(t, b)
		}
		require.Equal(t, mpsync.Follower, ev.Role)

		assert.ErrorIs(t, b.Resign(t.Context()), mpsync.ErrNotHeld, "a follower cannot resign")
		require.NoError(t, a.Resign(t.Context()))
		assert.ErrorIs(t, context.Cause(first.Context), mpsync.ErrResigned)
		_, held := f.Holder("test")
		require.True(t, held)
		id, _ := f.Holder("test")
		assert.Equal(t, "b", id, "Resign returned before b led")

		lead := nextLeader(t, b) // perhaps after a Follower event: nobody leads
		assert.Greater(t, lead.Token, first.Token)
		// a: a Follower event, ending up naming b.
		ev = nextEvent(t, a)
		require.Equal(t, mpsync.Follower, ev.Role)
		for ev.Leader != "b" {
			ev = nextEvent(t, a)
			require.Equal(t, mpsync.Follower, ev.Role)
		}
		assert.Equal(t, lead.Token, ev.Token)

		require.NoError(t, b.Resign(t.Context()))
		again := nextLeader(t, a) // a stayed a candidate
		assert.Greater(t, again.Token, lead.Token)
	})
}

// TestResignAlone: with no other candidate, Resign waits out its context,
// and the candidate then leads again.
func TestResignAlone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := mpsynctest.NewElector()
		defer f.Close()
		a, stop := startElection(t, f, "a")
		defer stop()
		first := nextLeader(t, a)

		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		start := time.Now()
		resigned := make(chan error, 1)
		go func() { resigned <- a.Resign(ctx) }()
		synctest.Wait() // released, and standing aside
		assert.ErrorIs(t, context.Cause(first.Context), mpsync.ErrResigned)
		_, held := f.Holder("test")
		assert.False(t, held, "held while standing aside")
		ev := nextEvent(t, a)
		assert.Equal(t, mpsync.Follower, ev.Role)
		assert.Empty(t, ev.Leader)
		assert.ErrorIs(t, <-resigned, context.DeadlineExceeded)
		assert.Equal(t, 3*time.Second, time.Since(start))

		again := nextLeader(t, a)
		assert.Greater(t, again.Token, first.Token)
	})
}

func TestResignBeforeRun(t *testing.T) {
	f := mpsynctest.NewElector()
	defer f.Close()
	e, err := mpsync.NewElection("test", mpsync.WithTransport(f.Transport()))
	require.NoError(t, err)
	assert.ErrorIs(t, e.Resign(t.Context()), mpsync.ErrNotHeld)
}

// TestObserverSlowReader: a reader that falls behind gets the latest
// holder, not a backlog; a change and its undoing while unread send
// nothing.
func TestObserverSlowReader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := mpsynctest.NewElector()
		defer f.Close()
		o, err := mpsync.NewObserver("test", mpsync.WithTransport(f.Transport()))
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- o.Run(ctx) }()
		synctest.Wait()
		assert.Equal(t, mpsync.Holder{}, <-o.Events())

		var last uint64
		for _, id := range []string{"a", "b", "c"} {
			l, err := mpsync.NewLock("test", mpsync.WithTransport(f.Transport()), mpsync.WithIdentity(id))
			require.NoError(t, err)
			held, err := l.Lock(t.Context())
			require.NoError(t, err)
			last, _ = mpsync.FencingToken(held)
			synctest.Wait() // the observer has seen it, and its reader is behind
			if id != "c" {
				require.NoError(t, l.Unlock())
				synctest.Wait()
			} else {
				defer l.Unlock()
			}
		}
		assert.Equal(t, mpsync.Holder{Identity: "c", Token: last}, <-o.Events(), "the latest holder, with no backlog")
		select {
		case h := <-o.Events():
			assert.Fail(t, "a second event with no change", "%+v", h)
		default:
		}
		cancel()
		for range o.Events() {
		}
		<-done
	})
}

func TestNewObserverValidates(t *testing.T) {
	_, err := mpsync.NewObserver("Not_A_Name")
	assert.ErrorIs(t, err, mpsync.ErrInvalidName)
}
