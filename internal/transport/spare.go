package transport

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"
)

// A lease's renewals and its release are short requests beside the lease's
// own stream, which holds its connection for as long as the lease lasts
// (and an Election's watch holds another). Without an idle connection in
// the pool, each of them dials the elector first: a connect, the
// elector's accept and the setup of the connection on both sides, on the
// path of a handover between the holder's signal and its release write
// (0.2 to 1.5 ms on an idle 2-core machine, tens under load; see
// docs/BENCHMARKS.md, the handover breakdown). So the Client keeps count
// of its idle connections and, when a grant leaves none, opens a spare in
// the background, a moment later, with one GET /healthz, whose connection
// then waits in the pool.
//
// The count comes from the requests' own traces (httptrace: a connection
// taken from the pool, one put back) and from the connections' Close; it
// is a hint, used for nothing but this.

const (
	// spareTimeout bounds the request that opens a spare connection.
	spareTimeout = 2 * time.Second
	// spareDelay is how long after a grant the spare is opened: not at
	// once, when the grant is on its way to the application (the next
	// leader's event, in a handover) and the spare's request would take
	// its CPU, but well before the first renewal, at least a sixth of the
	// lease on.
	spareDelay = 20 * time.Millisecond
)

// spares counts a Client's idle connections and opens spare ones.
type spares struct {
	idle    atomic.Int64 // connections idle in the pool
	opening atomic.Bool  // a spare is being opened
}

// conn is a connection of the Client's pool, which knows whether it is
// idle in the pool.
type conn struct {
	net.Conn
	s      *spares
	mu     sync.Mutex
	idle   bool
	closed bool
}

// dialer wraps dial so that the connections it makes are counted in s.
func (s *spares) dialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &conn{Conn: c, s: s}, nil
	}
}

// setIdle records that c went into the pool (idle) or out of it.
func (c *conn) setIdle(idle bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.idle == idle {
		return
	}
	c.idle = idle
	if idle {
		c.s.idle.Add(1)
	} else {
		c.s.idle.Add(-1)
	}
}

func (c *conn) Close() error {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		if c.idle {
			c.idle = false
			c.s.idle.Add(-1)
		}
	}
	c.mu.Unlock()
	return c.Conn.Close()
}

// track returns ctx with the trace that keeps s's count for a request.
func (s *spares) track(ctx context.Context) context.Context {
	var used *conn
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) {
			if c, ok := i.Conn.(*conn); ok {
				used = c
				c.setIdle(false)
			}
		},
		PutIdleConn: func(err error) {
			if err == nil && used != nil {
				used.setIdle(true)
			}
		},
	})
}

// ensureSpare opens a spare connection to the elector in the background,
// spareDelay from now, if the pool has no idle one then and no spare is
// being opened already.
func (c *Client) ensureSpare() {
	s := &c.spares
	if s.idle.Load() > 0 || c.closed.Err() != nil || !s.opening.CompareAndSwap(false, true) {
		return
	}
	time.AfterFunc(spareDelay, func() {
		defer s.opening.Store(false)
		if s.idle.Load() > 0 || c.closed.Err() != nil {
			return // a request has left one meanwhile, or the client is closed
		}
		ctx, cancel := context.WithTimeout(c.closed, spareTimeout)
		defer cancel()
		resp, err := c.do(ctx, http.MethodGet, c.base+"/healthz", "", nil)
		if err != nil {
			return // the elector is away: the next request will say so
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxLine))
		resp.Body.Close()
		c.dropIfClosed()
	})
}
