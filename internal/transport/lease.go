package transport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptrace"
	"strconv"
	"sync"
	"time"

	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/trace"
	"github.com/mpsync/mpsync/internal/wire"
)

// Lease is one acquisition of a lock through the elector, carried by the
// acquire stream. It is safe for concurrent use. It owns one goroutine,
// which reads the stream and ends with the lease.
type Lease struct {
	c        *Client
	name     string
	session  string
	token    uint64
	validity time.Duration
	cancel   context.CancelFunc // ends the stream's request
	quiet    *silence           // ends the stream when the elector falls silent
	done     chan struct{}      // closed by run when the lease has ended

	mu        sync.Mutex
	err       error
	releasing bool // Release has been called
}

// Token is the lease's fencing token: greater than that of every earlier
// acquisition of the lock.
func (l *Lease) Token() uint64 { return l.token }

// Validity is how long the holder may act on the lease, counted from when
// Acquire sent its request (the elector has already subtracted the drift
// allowance and margin of the timing model).
func (l *Lease) Validity() time.Duration { return l.validity }

// Done is closed when the lease ends: lost, released, or the stream that
// carries it broke or fell silent for Silence (the elector is gone). It
// closes at once when the elector tells of a loss or its connection drops.
func (l *Lease) Done() <-chan struct{} { return l.done }

// Err is nil while the lease lasts and after a release. After a loss it
// wraps core.ErrLockLost and the reason: core.ErrRevoked, core.ErrExpired,
// or core.ErrUnavailable when the elector shut down, its backend failed or
// the stream broke.
func (l *Lease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// run reads the acquire stream until its last line or its end, then ends
// the lease.
func (l *Lease) run(br *bufio.Reader, body io.ReadCloser) {
	quiet := l.quiet
	var err error
	lost := false
	for {
		ev, rerr := readEvent(br)
		if rerr != nil {
			err = fmt.Errorf("%w: %w: %w: the stream from the elector at %s ended without a release or a loss (elector gone?): %w",
				core.ErrLockLost, core.ErrUnavailable, errStreamBroke, l.c.base, quiet.explain(rerr))
			break
		}
		quiet.heard(ev)
		if ev.Type == wire.EventReleased {
			break
		}
		if ev.Type == wire.EventLost {
			lost = true
			err = lostError(ev)
			break
		}
		// Heartbeats, and types for later versions: read on.
	}
	quiet.stop()
	l.cancel()
	body.Close()
	l.mu.Lock()
	if l.releasing && !lost {
		err = nil // our own Release ended it, whatever the stream said last
	}
	l.err = err
	l.mu.Unlock()
	close(l.done)
}

// traceConn returns ctx, and while tracing is on (package internal/trace)
// ctx with an httptrace.ClientTrace that marks step when the request has
// its connection, saying whether it was reused from the pool.
func traceConn(ctx context.Context, step string) context.Context {
	if !trace.Enabled() {
		return ctx
	}
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		trace.Mark(step, "reused", strconv.FormatBool(i.Reused))
	}})
}

// errStreamBroke is wrapped in the error of a lease whose stream ended with
// no last line (released or lost): the connection broke or fell silent.
var errStreamBroke = errors.New("stream broke")

// lostError is the error of a lost event.
func lostError(ev wire.Event) error {
	switch ev.Reason {
	case wire.ReasonRevoked:
		return fmt.Errorf("%w: %w", core.ErrLockLost, core.ErrRevoked)
	case wire.ReasonExpired:
		return fmt.Errorf("%w: %w", core.ErrLockLost, core.ErrExpired)
	case wire.ReasonShutdown, wire.ReasonBackend:
		return fmt.Errorf("%w: %w (%s): %s", core.ErrLockLost, core.ErrUnavailable, ev.Reason, ev.Error)
	}
	return fmt.Errorf("%w: %s", core.ErrLockLost, ev.Error)
}

func (l *Lease) ended() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// Renew sends one renew request and returns the lease's new validity,
// counted from when Renew sent it. Once the lease has ended, here or at the
// elector, it fails with an error wrapping core.ErrLockLost; an error
// wrapping core.ErrUnavailable may be transient.
func (l *Lease) Renew(ctx context.Context) (time.Duration, error) {
	if l.ended() {
		cause := l.Err()
		if cause == nil {
			cause = core.ErrNotHeld
		}
		return 0, fmt.Errorf("%w: lease on %q has ended: %w", core.ErrLockLost, l.name, cause)
	}
	var out wire.RenewResponse
	if err := l.c.post(ctx, l.c.lockURL(l.name, "renew"), l.name, wire.SessionRequest{Session: l.session}, &out); err != nil {
		return 0, err
	}
	return time.Duration(out.ValidityMs) * time.Millisecond, nil
}

// Release gives the lock up: one release request, then the stream is
// closed (which alone would make the elector release it, should the request
// have failed), and Release returns once the lease has ended. Done is then
// closed and Err is nil, unless a loss came first. Release on a lease that
// has ended, here or at the elector (which answers 404 unknown_session), or
// a second Release, does nothing and returns nil. The error,
// if any, is the release request's; the lease has ended all the same.
func (l *Lease) Release(ctx context.Context) error {
	l.mu.Lock()
	again := l.releasing
	l.releasing = true
	l.mu.Unlock()
	if again || l.ended() {
		return nil
	}
	err := l.c.post(traceConn(ctx, trace.ReleaseConn), l.c.lockURL(l.name, "release"), l.name, wire.SessionRequest{Session: l.session}, nil)
	if errors.Is(err, errUnknownSession) {
		err = nil // the lease ended at the elector before the request came: released all the same
	}
	l.cancel()
	<-l.done // prompt: cancelling the request ends run's read
	if err != nil && !errors.Is(err, ctx.Err()) {
		return fmt.Errorf("transport: release of %q: %w", l.name, err)
	}
	return err
}
