package transport

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/wire"
)

func TestNew(t *testing.T) {
	tests := []struct {
		addr, want string
		ok         bool
	}{
		{"127.0.0.1:13131", "http://127.0.0.1:13131", true},
		{"http://127.0.0.1:13131", "http://127.0.0.1:13131", true},
		{"http://127.0.0.1:13131/", "http://127.0.0.1:13131", true},
		{"https://elector.local:443", "https://elector.local:443", true},
		{"localhost:13131", "http://localhost:13131", true},
		{"", "", false},
		{"ftp://127.0.0.1:13131", "", false},
		{"http://", "", false},
		{"http://127.0.0.1:13131/v1", "", false},
		{"http://127.0.0.1:13131?x=1", "", false},
		{"http://user@127.0.0.1:13131", "", false},
		{"http://[::1", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			c, err := New(tt.addr)
			if (err == nil) != tt.ok {
				t.Fatalf("New(%q) error %v, want ok %v", tt.addr, err, tt.ok)
			}
			if err == nil && c.Addr() != tt.want {
				t.Errorf("Addr() %q, want %q", c.Addr(), tt.want)
			}
		})
	}
}

func TestAcquireRenewRelease(t *testing.T) {
	e := startElector(t, "--lease-duration", "15s")
	c := e.client()

	l, err := c.Acquire(bg(), "a", "web-1", false)
	if err != nil {
		t.Fatal(err)
	}
	if l.Token() == 0 {
		t.Error("token 0, want a positive fencing token")
	}
	if want := core.Validity(15 * time.Second); l.Validity() != want {
		t.Errorf("Validity %v, want %v", l.Validity(), want)
	}

	_, err = c.Acquire(bg(), "a", "web-2", false)
	if !errors.Is(err, core.ErrLocked) {
		t.Errorf("second Acquire: %v, want ErrLocked", err)
	}

	v, err := l.Renew(bg())
	if err != nil || v != core.Validity(15*time.Second) {
		t.Errorf("Renew: %v, %v; want %v, nil", v, err, core.Validity(15*time.Second))
	}
	select {
	case <-l.Done():
		t.Fatal("Done closed while held")
	default:
	}
	if err := l.Release(bg()); err != nil {
		t.Fatalf("Release: %v", err)
	}
	waitDone(t, l)
	if err := l.Err(); err != nil {
		t.Errorf("Err after Release: %v, want nil", err)
	}
	if err := l.Release(bg()); err != nil {
		t.Errorf("second Release: %v, want nil", err)
	}
	if _, err := l.Renew(bg()); !errors.Is(err, core.ErrLockLost) {
		t.Errorf("Renew after Release: %v, want ErrLockLost", err)
	}
	// Released at the elector too: another identity gets it at once.
	l2, err := c.Acquire(bg(), "a", "web-2", false)
	if err != nil {
		t.Fatalf("Acquire after Release: %v", err)
	}
	if l2.Token() <= l.Token() {
		t.Errorf("token %d after %d, want it to grow", l2.Token(), l.Token())
	}
	if err := l2.Release(bg()); err != nil {
		t.Fatal(err)
	}
}

func TestRenewAfterLossAtElector(t *testing.T) {
	e := startElector(t, "--debug-endpoints")
	c := e.client()
	l, err := c.Acquire(bg(), "a", "web-1", false)
	if err != nil {
		t.Fatal(err)
	}
	e.post("/debug/revoke/a")
	waitDone(t, l)
	if err := l.Err(); !errors.Is(err, core.ErrLockLost) || !errors.Is(err, core.ErrRevoked) {
		t.Errorf("Err %v, want ErrLockLost and ErrRevoked", err)
	}
	if errors.Is(l.Err(), errStreamBroke) {
		t.Errorf("Err %v, want a lost line, not a broken stream", l.Err())
	}
	// A renew that crosses the loss gets 410 lost, or 404 unknown_session
	// once the elector has forgotten the session: a loss either way.
	var out wire.RenewResponse
	if err := c.post(bg(), c.lockURL("a", "renew"), "a", wire.SessionRequest{Session: l.session}, &out); !errors.Is(err, core.ErrLockLost) {
		t.Errorf("renew of a revoked session: %v, want ErrLockLost", err)
	}
	if _, err := l.Renew(bg()); !errors.Is(err, core.ErrLockLost) {
		t.Errorf("Renew of an ended lease: %v, want ErrLockLost", err)
	}
	if err := l.Release(bg()); err != nil {
		t.Errorf("Release after loss: %v, want nil", err)
	}
}

// TestUnknownSession: the elector answers renew and release of a session it
// does not know with 404 unknown_session. Renew takes that as a loss;
// Release as done, so it stays idempotent for the SDK. The session is made
// unknown by changing the id the lease sends, before the lease is shared.
func TestUnknownSession(t *testing.T) {
	e := startElector(t)
	c := e.client()
	l, err := c.Acquire(bg(), "a", "web-1", false)
	if err != nil {
		t.Fatal(err)
	}
	l.session = "not-" + l.session
	_, err = l.Renew(bg())
	if !errors.Is(err, core.ErrLockLost) || !errors.Is(err, errUnknownSession) {
		t.Errorf("Renew of an unknown session: %v, want ErrLockLost and errUnknownSession", err)
	}
	if err := l.Release(bg()); err != nil {
		t.Errorf("Release of an unknown session: %v, want nil", err)
	}
	// Release closed the stream, which released the lock all the same.
	require.Eventually(t, func() bool {
		l2, err := c.Acquire(bg(), "a", "web-2", false)
		if err != nil {
			return false
		}
		return l2.Release(bg()) == nil
	}, waitFor, 10*time.Millisecond, "the lock is free after Release")
}

func TestExpired(t *testing.T) {
	e := startElector(t, "--lease-duration", "1s")
	c := e.client()
	l, err := c.Acquire(bg(), "a", "web-1", false)
	if err != nil {
		t.Fatal(err)
	}
	if l.Validity() >= time.Second {
		t.Errorf("Validity %v of a 1 s lease, want less than 1 s", l.Validity())
	}
	waitDone(t, l) // not renewed
	if err := l.Err(); !errors.Is(err, core.ErrLockLost) || !errors.Is(err, core.ErrExpired) {
		t.Errorf("Err %v, want ErrLockLost and ErrExpired", err)
	}
}

func TestAcquireWaitAndCancel(t *testing.T) {
	e := startElector(t)
	c := e.client()
	holder, err := c.Acquire(bg(), "a", "web-1", false)
	if err != nil {
		t.Fatal(err)
	}

	// A wait whose context ends returns ctx.Err() itself and leaves
	// nothing queued.
	ctx, cancel := context.WithTimeout(bg(), 200*time.Millisecond)
	defer cancel()
	_, err = c.Acquire(ctx, "a", "web-2", true)
	if err != context.DeadlineExceeded {
		t.Errorf("Acquire past its deadline: %v, want context.DeadlineExceeded itself", err)
	}
	require.Eventually(t, func() bool { return e.metric("mpsync_elector_waiters") == "0" }, waitFor, 10*time.Millisecond, "no waiter left")

	// A wait that is granted.
	got := make(chan *Lease, 1)
	go func() {
		l, err := c.Acquire(bg(), "a", "web-3", true)
		if err != nil {
			t.Errorf("waiting Acquire: %v", err)
		}
		got <- l
	}()
	require.Eventually(t, func() bool { return e.metric("mpsync_elector_waiters") == "1" }, waitFor, 10*time.Millisecond, "waiter queued")
	if err := holder.Release(bg()); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-got:
		if l == nil {
			t.FailNow()
		}
		if l.Token() <= holder.Token() {
			t.Errorf("token %d after %d, want it to grow", l.Token(), holder.Token())
		}
		if err := l.Release(bg()); err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitFor):
		t.Fatal("waiter not granted")
	}

	// An already-ended context sends nothing.
	done, cancel2 := context.WithCancel(bg())
	cancel2()
	if _, err := c.Acquire(done, "a", "web-4", true); err != context.Canceled {
		t.Errorf("Acquire with an ended context: %v, want context.Canceled", err)
	}
}

func TestLeaseOutlivesAcquireContext(t *testing.T) {
	e := startElector(t)
	c := e.client()
	ctx, cancel := context.WithCancel(bg())
	l, err := c.Acquire(ctx, "a", "web-1", true)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	// Still held after the context ended: renewals work and others are
	// refused.
	if _, err := l.Renew(bg()); err != nil {
		t.Errorf("Renew after the Acquire context ended: %v", err)
	}
	if _, err := c.Acquire(bg(), "a", "web-2", false); !errors.Is(err, core.ErrLocked) {
		t.Errorf("other Acquire: %v, want ErrLocked", err)
	}
	select {
	case <-l.Done():
		t.Errorf("lease ended with its Acquire context: %v", l.Err())
	default:
	}
	if err := l.Release(bg()); err != nil {
		t.Fatal(err)
	}
}

func TestInvalidName(t *testing.T) {
	c, err := New("127.0.0.1:1") // never contacted
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Acquire(bg(), "Bad_Name", "x", false); !errors.Is(err, core.ErrInvalidName) {
		t.Errorf("Acquire: %v, want ErrInvalidName", err)
	}
	if err := c.Watch(bg(), "", func(core.Holder) {}); !errors.Is(err, core.ErrInvalidName) {
		t.Errorf("Watch: %v, want ErrInvalidName", err)
	}
}

func TestElectorErrors(t *testing.T) {
	e := startElector(t)
	c := e.client()
	// The elector checks what the client does not: identity.
	_, err := c.Acquire(bg(), "a", "", false)
	if err == nil || errors.Is(err, core.ErrUnavailable) || errors.Is(err, core.ErrLocked) {
		t.Errorf("Acquire with no identity: %v, want a bad-request error", err)
	}
}

func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nobody listens there now
	c, err := New(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	if _, err := c.Acquire(bg(), "a", "x", true); !errors.Is(err, core.ErrUnavailable) {
		t.Errorf("Acquire: %v, want ErrUnavailable", err)
	}
	if err := c.Watch(bg(), "a", func(core.Holder) {}); !errors.Is(err, core.ErrUnavailable) {
		t.Errorf("Watch: %v, want ErrUnavailable", err)
	}
}

func TestWatch(t *testing.T) {
	e := startElector(t)
	c := e.client()
	ctx, cancel := context.WithCancel(bg())
	defer cancel()
	states := make(chan core.Holder, 16)
	werr := make(chan error, 1)
	go func() { werr <- c.Watch(ctx, "a", func(h core.Holder) { states <- h }) }()
	next := func() core.Holder {
		t.Helper()
		select {
		case h := <-states:
			return h
		case <-time.After(waitFor):
			t.Fatal("no watch state")
		}
		return core.Holder{}
	}
	if h := next(); h != (core.Holder{}) {
		t.Errorf("first state %+v, want free, never held", h)
	}
	l, err := c.Acquire(bg(), "a", "web-1", false)
	if err != nil {
		t.Fatal(err)
	}
	if h := next(); h != (core.Holder{Identity: "web-1", Token: l.Token()}) {
		t.Errorf("state %+v, want web-1 with token %d", h, l.Token())
	}
	if err := l.Release(bg()); err != nil {
		t.Fatal(err)
	}
	if h := next(); h != (core.Holder{Token: l.Token()}) {
		t.Errorf("state %+v, want free with the last token %d", h, l.Token())
	}
	cancel()
	select {
	case err := <-werr:
		if err != context.Canceled {
			t.Errorf("Watch returned %v, want context.Canceled itself", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Watch did not return after its context ended")
	}
}
