package mpsync

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/memory"
)

// TestLeadershipContextAfterPause shows what the package doc promises of a
// process resumed from a pause past its local deadline, before its expiry
// timer has run. The pause is simulated by moving the term's deadline into
// the past while its timer is an hour away: exactly the state a resumed
// process is in until the runtime runs its timers.
//
//   - The leadership context itself reports the loss at once: Err and Done
//     check the deadline on every call.
//   - A context derived from it with context.WithValue does too, as its Err
//     is the leadership context's.
//   - A context derived with context.WithTimeout (WithCancel, WithDeadline)
//     keeps its own state, which package context sets only when the parent
//     is cancelled: it may still report nil, until the leadership context is
//     looked at or its timer fires; then it reports the loss at once.
//   - ValidUntil, read through any derived context, already says the term
//     is over.
type testKey struct{}

func TestLeadershipContextAfterPause(t *testing.T) {
	table, err := memory.NewTable(time.Hour)
	require.NoError(t, err)
	defer table.Close()
	lease, err := table.Acquire(context.Background(), core.Request{Name: "a", Identity: "x"})
	require.NoError(t, err)
	cfg := &config{logger: zap.NewNop()}
	term := startTerm(context.Background(), cfg, lease, time.Now().Add(time.Hour))
	defer func() {
		term.cancel(ErrUnlocked)
		<-term.done
	}()
	held := context.Context(term.ctx)

	derived, cancel := context.WithTimeout(held, time.Hour)
	defer cancel()
	valued := context.WithValue(held, testKey{}, "v")
	require.NoError(t, derived.Err())

	past := time.Now().Add(-time.Millisecond)
	term.ctx.deadline.Store(&past) // the pause: the deadline has passed, the timer has not fired

	until, ok := ValidUntil(derived)
	require.True(t, ok)
	assert.False(t, time.Now().Before(until), "ValidUntil through a derived context says the term may last")
	assert.NoError(t, derived.Err(), "a WithTimeout child learns of the loss only when its parent is cancelled (if this fails, the gap is closed: update the package doc)")

	// The leadership context itself, and a WithValue child, report the
	// loss on the first look, with the expiry as its cause.
	require.ErrorIs(t, valued.Err(), context.Canceled)
	require.ErrorIs(t, held.Err(), context.Canceled)
	select {
	case <-held.Done():
	default:
		t.Fatal("held.Done() not closed after its deadline passed")
	}
	cause := context.Cause(held)
	assert.True(t, errors.Is(cause, ErrLockLost) && errors.Is(cause, ErrExpired), "cause %v, want ErrLockLost and ErrExpired", cause)

	// Looking at it cancelled it, and with it every context derived from it.
	assert.ErrorIs(t, derived.Err(), context.Canceled)
	assert.ErrorIs(t, context.Cause(derived), ErrExpired)
	tok, ok := FencingToken(derived)
	assert.True(t, ok && tok == lease.Token(), "FencingToken(derived) = %d, %v; want %d", tok, ok, lease.Token())
}
