package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"time"

	"github.com/mpsync/mpsync/internal/transport"
	"github.com/mpsync/mpsync/internal/wire"
	"github.com/mpsync/mpsync/test/faults/history"
)

// With -abandon, the client does not use the SDK: it is a client this
// project did not write, one that abandons its connections. For each lock
// it loops: a hand-written acquire that waits, on a raw socket; bytes after
// the request (which stop net/http from watching the connection for its
// close); and then it walks away, either closing the socket or leaving it
// open and unread for a while. It never renews. Some of its requests are
// abandoned while they still wait.
//
// A term it got is recorded as the SDK's are, only as far as it may act:
// from the acquired line to the moment it walks away, and never past its
// validity, counted from when it sent the request (PROTOCOL.md). A holder
// stopped by SIGSTOP past that moment records the validity's end.

// idleMax is the longest an abandoned socket is left open and unread.
const idleMax = 3 * time.Second

// restMax is the longest pause between two acquires of one lock. A socket
// left open keeps the lock until its lease expires, so the pause keeps the
// abandoning client from holding up the others most of the time.
const restMax = 2 * time.Second

// errWalkedAway says the client walked away from a request that waited.
var errWalkedAway = errors.New("walked away while waiting")

// abandonLoop takes the lock name over and over through raw sockets until
// ctx ends.
func (c *client) abandonLoop(ctx context.Context, name string, holdMax time.Duration, rng *rand.Rand) {
	backoff := minBackoff
	for ctx.Err() == nil {
		err := c.abandonOnce(ctx, name, holdMax, rng)
		if err == nil || errors.Is(err, errWalkedAway) {
			backoff = minBackoff
			pause(ctx, time.Duration(rng.Int64N(int64(restMax))))
			continue
		}
		if ctx.Err() != nil {
			return
		}
		c.lockErrs.Add(1)
		pause(ctx, backoff)
		backoff = min(2*backoff, maxBackoff)
	}
}

// abandonOnce is one raw acquire of name, held (if granted) for up to
// holdMax, then abandoned.
func (c *client) abandonOnce(ctx context.Context, name string, holdMax time.Duration, rng *rand.Rand) error {
	conn, err := net.DialTimeout("tcp", c.elector, time.Second)
	if err != nil {
		return err
	}
	stopClosing := context.AfterFunc(ctx, func() { conn.Close() })
	defer stopClosing()
	// The socket is left behind in any case: closed now, or later.
	defer c.walkAway(conn, rng)

	body := fmt.Sprintf(`{"identity":%q,"wait":true}`, c.name)
	sent := time.Now()
	req := fmt.Sprintf("POST /v1/locks/%s/acquire HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		name, c.elector, len(body), body)
	if _, err := io.WriteString(conn, req); err != nil {
		return err
	}
	leaveWaiting := rng.IntN(4) == 0
	ev, err := rawGrant(conn, leaveWaiting)
	if err != nil {
		return err
	}
	t := c.beginRaw(name, ev.Token, sent.Add(time.Duration(ev.ValidityMs)*time.Millisecond))
	if t == nil {
		return nil
	}
	// Bytes after the request: from here on net/http does not see the
	// close, only the heartbeats do.
	_, _ = io.WriteString(conn, "\r\n")
	// A quarter of the terms act to the last moment of their validity,
	// while the socket is still open: the elector must not have handed the
	// lock on by then.
	hold := time.Duration(rng.Int64N(int64(holdMax) + 1))
	if rng.IntN(4) == 0 {
		hold = time.Until(t.deadline)
	}
	act(ctx, t.deadline, hold)
	c.endRaw(t)
	return nil
}

// rawGrant reads the answer to a raw acquire up to its acquired line,
// skipping waiting and heartbeat lines, with the read deadline of
// transport.Silence on each line. With leaveWaiting, it walks away at the
// first waiting line, after sending bytes past the request.
func rawGrant(conn net.Conn, leaveWaiting bool) (wire.Event, error) {
	_ = conn.SetReadDeadline(time.Now().Add(transport.Silence))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return wire.Event{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return wire.Event{}, fmt.Errorf("acquire answered %s", resp.Status)
	}
	lines := bufio.NewReader(resp.Body)
	for {
		_ = conn.SetReadDeadline(time.Now().Add(transport.Silence))
		b, err := lines.ReadBytes('\n')
		if err != nil {
			return wire.Event{}, err
		}
		var ev wire.Event
		if err := json.Unmarshal(b, &ev); err != nil {
			return wire.Event{}, fmt.Errorf("stream line %q: %w", b, err)
		}
		switch ev.Type {
		case wire.EventAcquired:
			return ev, nil
		case wire.EventWaiting:
			if leaveWaiting {
				_, _ = io.WriteString(conn, "\r\n")
				return wire.Event{}, errWalkedAway
			}
		case wire.EventError:
			return wire.Event{}, fmt.Errorf("acquire stream: %s: %s", ev.Code, ev.Error)
		}
	}
}

// walkAway leaves conn: closes it now, or half the time leaves it open and
// unread for up to idleMax first.
func (c *client) walkAway(conn net.Conn, rng *rand.Rand) {
	if rng.IntN(2) == 0 {
		conn.Close()
		return
	}
	time.AfterFunc(time.Duration(rng.Int64N(int64(idleMax))), func() { conn.Close() })
}

// rawTerm is one recorded term of a raw holder.
type rawTerm struct {
	lock     string
	token    uint64
	deadline time.Time // the end of its validity
}

// beginRaw records the start of a raw term valid until deadline, or returns
// nil, recording nothing, if that has passed: its holder never acts on it.
func (c *client) beginRaw(lock string, token uint64, deadline time.Time) *rawTerm {
	start := time.Now()
	if !start.Before(deadline) {
		c.skipped.Add(1)
		return nil
	}
	c.terms.Add(1)
	c.write(history.Record{Ev: history.Acquire, T: c.mono.At(start), Lock: lock, Client: c.name, Token: token})
	return &rawTerm{lock: lock, token: token, deadline: deadline}
}

// endRaw records the end of t: now, or its deadline if that came first.
func (c *client) endRaw(t *rawTerm) {
	end := time.Now()
	cause := "abandoned"
	if t.deadline.Before(end) {
		end, cause = t.deadline, "expired"
	}
	c.write(history.Record{Ev: history.End, T: c.mono.At(end), Lock: t.lock, Client: c.name, Token: t.token, Cause: cause})
}

// act stands for the raw holder's work: it runs for d, or until deadline
// or ctx ends, looking at the clock as work that must stop with the term
// would.
func act(ctx context.Context, deadline time.Time, d time.Duration) {
	until := time.Now().Add(d)
	tick := time.NewTicker(checkEvery)
	defer tick.Stop()
	for now := time.Now(); now.Before(until) && now.Before(deadline) && ctx.Err() == nil; now = time.Now() {
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// abandonUsage documents -abandon.
const abandonUsage = "act as a client that abandons its connections: raw-socket acquires of -locks, bytes after each request, no renewals, no elections"
