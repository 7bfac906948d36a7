package memory

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mpsync/mpsync/internal/core"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newTable(t *testing.T) *Table {
	t.Helper()
	tb, err := NewTable(15 * time.Second)
	require.NoError(t, err)
	t.Cleanup(tb.Close)
	return tb
}

// entries is how many locks the table remembers.
func (t *Table) entries() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.locks)
}

// watchOnce runs a Watch of name until its first state and returns it.
func watchOnce(t *testing.T, tb *Table, name string) core.Holder {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got core.Holder
	err := tb.Watch(ctx, name, func(h core.Holder) { got = h; cancel() })
	require.ErrorIs(t, err, context.Canceled)
	return got
}

// TestForgetsUnusedLocks: a lock with no holder, no waiter and no watcher is
// dropped, however it was used; one still in use is kept.
func TestForgetsUnusedLocks(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		use  func(t *testing.T, tb *Table)
	}{
		{"watched", func(t *testing.T, tb *Table) { watchOnce(t, tb, "a") }},
		{"acquired and released", func(t *testing.T, tb *Table) {
			g, err := tb.Acquire(ctx, core.Request{Name: "a", Identity: "x"})
			require.NoError(t, err)
			require.NoError(t, g.Release(ctx))
		}},
		{"revoked", func(t *testing.T, tb *Table) {
			_, err := tb.Acquire(ctx, core.Request{Name: "a", Identity: "x"})
			require.NoError(t, err)
			require.True(t, tb.Revoke("a"))
		}},
		{"waiter gave up, then holder released", func(t *testing.T, tb *Table) {
			g, err := tb.Acquire(ctx, core.Request{Name: "a", Identity: "x"})
			require.NoError(t, err)
			wctx, cancel := context.WithCancel(ctx)
			errc := make(chan error, 1)
			go func() {
				_, err := tb.Acquire(wctx, core.Request{Name: "a", Identity: "y", Wait: true})
				errc <- err
			}()
			require.Eventually(t, func() bool { _, w := tb.Stats(); return w == 1 }, 10*time.Second, time.Millisecond)
			cancel()
			require.ErrorIs(t, <-errc, context.Canceled)
			require.NoError(t, g.Release(ctx))
		}},
		{"refused while held, then released", func(t *testing.T, tb *Table) {
			g, err := tb.Acquire(ctx, core.Request{Name: "a", Identity: "x"})
			require.NoError(t, err)
			_, err = tb.Acquire(ctx, core.Request{Name: "a", Identity: "y"})
			require.ErrorIs(t, err, core.ErrLocked)
			require.NoError(t, g.Release(ctx))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := newTable(t)
			tt.use(t, tb)
			assert.Equal(t, 0, tb.entries(), "locks remembered after use")
		})
	}

	t.Run("kept while in use", func(t *testing.T) {
		tb := newTable(t)
		_, err := tb.Acquire(ctx, core.Request{Name: "held", Identity: "x"})
		require.NoError(t, err)
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		watching := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			var once bool
			done <- tb.Watch(wctx, "watched", func(core.Holder) {
				if !once {
					once = true
					close(watching)
				}
			})
		}()
		<-watching
		assert.Equal(t, 2, tb.entries())
		cancel()
		require.ErrorIs(t, <-done, context.Canceled)
		assert.Equal(t, 1, tb.entries(), "the held lock must be kept")
	})

	t.Run("expired", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			tb, err := NewTable(core.MinLease)
			require.NoError(t, err)
			defer tb.Close()
			g, err := tb.Acquire(ctx, core.Request{Name: "a", Identity: "x"})
			require.NoError(t, err)
			<-g.Done()
			require.ErrorIs(t, g.Err(), core.ErrExpired)
			assert.Equal(t, 0, tb.entries())
		})
	})
}

// TestTokensIncreaseAcrossEviction: a lock forgotten and taken again gets a
// greater token than before, and a free forgotten lock reports a token no
// less than its last holder's.
func TestTokensIncreaseAcrossEviction(t *testing.T) {
	ctx := context.Background()
	tb := newTable(t)
	var last uint64
	for round := range 5 {
		g, err := tb.Acquire(ctx, core.Request{Name: "a", Identity: "x"})
		require.NoError(t, err)
		require.Greater(t, g.Token(), last, "round %d", round)
		last = g.Token()
		require.NoError(t, g.Release(ctx))
		require.Equal(t, 0, tb.entries(), "round %d: a not forgotten", round)
		// Other locks move the one counter on meanwhile.
		for i := range round {
			o, err := tb.Acquire(ctx, core.Request{Name: fmt.Sprintf("other-%d", i), Identity: "y"})
			require.NoError(t, err)
			require.NoError(t, o.Release(ctx))
		}
		h := watchOnce(t, tb, "a")
		require.Empty(t, h.Identity)
		require.GreaterOrEqual(t, h.Token, last, "round %d: free token went back", round)
	}
}

// TestHeapReturns: 100,000 distinct names watched, held and released leave
// the heap near where it started.
func TestHeapReturns(t *testing.T) {
	ctx := context.Background()
	tb := newTable(t)
	before := heapAlloc()
	for i := range 100_000 {
		name := fmt.Sprintf("name-%d", i)
		watchOnce(t, tb, name)
		g, err := tb.Acquire(ctx, core.Request{Name: name, Identity: "x"})
		require.NoError(t, err)
		require.NoError(t, g.Release(ctx))
	}
	after := heapAlloc()
	t.Logf("heap after GC: %d bytes before, %d after 100,000 names", before, after)
	assert.Equal(t, 0, tb.entries())
	// 100,000 remembered entries would be well over 10 MB.
	assert.Less(t, after, before+2<<20, "heap grew by %d bytes", after-before)
}

func heapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
