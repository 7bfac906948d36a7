package mpsync

import (
	"context"
	"sync"

	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/transport"
)

// HTTPTransport is the Transport to an elector over HTTP, speaking the v1
// protocol of PROTOCOL.md: one streamed request per held lease or watch,
// plus a short request per renewal and release. Create it with
// NewHTTPTransport; the zero value is not usable. It is safe for concurrent
// use, and Locks and Elections may share one.
//
// All exchanges of one HTTPTransport share one connection pool, which keeps
// idle connections for reuse until Close or CloseIdleConnections.
//
// Locks and Elections made with WithElector, or with the default address,
// use one HTTPTransport per elector address for the whole process, made on
// first use and never closed.
type HTTPTransport struct {
	c *transport.Client
}

var _ Transport = (*HTTPTransport)(nil)

// NewHTTPTransport returns a new HTTPTransport, with its own connection
// pool, to the elector at addr ("http://host:port" or "host:port"). It does
// not contact the elector; errors from its methods wrap ErrUnavailable and
// name the address when the elector cannot be reached. The caller owns it
// and closes it with Close once the Locks and Elections using it are done.
func NewHTTPTransport(addr string) (*HTTPTransport, error) {
	c, err := transport.New(addr)
	if err != nil {
		return nil, err
	}
	return &HTTPTransport{c}, nil
}

// shared holds the process-wide HTTPTransports of WithElector and the
// default address, by base URL.
var shared struct {
	sync.Mutex
	m map[string]*HTTPTransport
}

// sharedHTTPTransport returns the process-wide HTTPTransport to addr,
// making it on first use. Addresses that differ only in spelling
// ("host:port" and "http://host:port") share one.
func sharedHTTPTransport(addr string) (*HTTPTransport, error) {
	t, err := NewHTTPTransport(addr)
	if err != nil {
		return nil, err
	}
	shared.Lock()
	defer shared.Unlock()
	if old, ok := shared.m[t.Addr()]; ok {
		t.c.Close() // never used: it holds nothing
		return old, nil
	}
	if shared.m == nil {
		shared.m = make(map[string]*HTTPTransport)
	}
	shared.m[t.Addr()] = t
	return t, nil
}

// Addr is the elector's base URL, such as "http://127.0.0.1:13131".
func (t *HTTPTransport) Addr() string { return t.c.Addr() }

// Acquire implements Transport. A refusal without wait is a *LockedError
// naming the holder the elector reported.
func (t *HTTPTransport) Acquire(ctx context.Context, name, identity string, wait bool) (Lease, error) {
	l, err := t.c.Acquire(ctx, name, identity, wait)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Watch implements Transport over the elector's watch stream; the elector
// coalesces the changes a slow fn cannot take.
func (t *HTTPTransport) Watch(ctx context.Context, name string, fn func(Holder)) error {
	return t.c.Watch(ctx, name, func(h core.Holder) { fn(Holder(h)) })
}

// CloseIdleConnections closes the connections that no exchange is using
// now. Live leases and watches are not affected.
func (t *HTTPTransport) CloseIdleConnections() { t.c.CloseIdleConnections() }

// Close ends the HTTPTransport. Later calls fail at once with an error
// wrapping ErrUnavailable and ErrClosed. The leases it still carries end as
// if the elector had gone away: their leadership contexts end with a cause
// wrapping ErrLockLost and ErrUnavailable, and the elector releases the
// locks when their streams close. Watches it carries fail the same way.
// Then its idle connections are closed. Close always returns nil; it may be
// called more than once.
func (t *HTTPTransport) Close() error {
	t.c.Close()
	return nil
}
