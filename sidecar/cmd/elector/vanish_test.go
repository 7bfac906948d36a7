package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/internal/wire"
)

// These tests speak to a real elector process over raw sockets, with
// hand-written HTTP/1.1 requests, as clients this project did not write
// would: each sends bytes after its request (what some HTTP clients do
// after a body, or the start of a pipelined request), which stops net/http
// from watching the connection for its close, and then goes away. Each runs
// next to a healthy SDK client that keeps locking and unlocking and must see
// no error. The elector must notice each vanished client through its
// heartbeats, within about two transport.HeartbeatIntervals; the tests wait
// on conditions with waitFor (10 s), which is still shorter than the 15 s
// lease a vanished holder would otherwise keep.

// rawStream is a v1 stream over a raw socket.
type rawStream struct {
	t     *testing.T
	conn  net.Conn
	br    *bufio.Reader
	lines *bufio.Reader // the answer's body, once head has read it
}

// dialRaw connects to the elector and sends one hand-written request, with
// a body if body is not empty. It does not read the answer.
func dialRaw(t *testing.T, addr, method, path, body string) *rawStream {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	req := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\n", method, path, addr)
	if body != "" {
		req += fmt.Sprintf("Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	req += "\r\n" + body
	_, err = io.WriteString(conn, req)
	require.NoError(t, err)
	return &rawStream{t: t, conn: conn, br: bufio.NewReader(conn)}
}

// head reads the answer's status line and headers and checks for 200.
func (rs *rawStream) head() {
	rs.t.Helper()
	require.NoError(rs.t, rs.conn.SetReadDeadline(time.Now().Add(waitFor)))
	resp, err := http.ReadResponse(rs.br, nil)
	require.NoError(rs.t, err)
	require.Equal(rs.t, http.StatusOK, resp.StatusCode)
	rs.lines = bufio.NewReader(resp.Body)
}

// line reads the next stream line that is not a heartbeat.
func (rs *rawStream) line() wire.Event {
	rs.t.Helper()
	if rs.lines == nil {
		rs.head()
	}
	require.NoError(rs.t, rs.conn.SetReadDeadline(time.Now().Add(waitFor)))
	for {
		b, err := rs.lines.ReadBytes('\n')
		require.NoError(rs.t, err)
		var ev wire.Event
		require.NoError(rs.t, json.Unmarshal(b, &ev), "line %q", b)
		if ev.Type != wire.EventHeartbeat {
			return ev
		}
	}
}

// vanish sends trailing bytes after the request and closes the socket.
func (rs *rawStream) vanish() time.Time {
	rs.t.Helper()
	_, err := io.WriteString(rs.conn, "\r\n")
	require.NoError(rs.t, err)
	require.NoError(rs.t, rs.conn.Close())
	return time.Now()
}

// healthy is an SDK client that locks and unlocks a lock of its own in a
// loop until stopped, and records any error.
type healthy struct {
	cancel context.CancelFunc
	done   chan struct{}
	tr     mpsync.Transport
	mu     sync.Mutex
	cycles int
	err    error
}

// startHealthy starts a healthy client on lock name; the end of the test
// stops it and checks that it saw no error and made progress.
func startHealthy(t *testing.T, addr, name string) *healthy {
	t.Helper()
	tr, err := mpsync.NewHTTPTransport(addr)
	require.NoError(t, err)
	l, err := mpsync.NewLock(name, mpsync.WithTransport(tr), mpsync.WithIdentity("healthy"))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	h := &healthy{cancel: cancel, done: make(chan struct{}), tr: tr}
	go h.run(ctx, l)
	h.waitCycles(t, 3)
	t.Cleanup(func() { h.stop(t) })
	return h
}

func (h *healthy) run(ctx context.Context, l *mpsync.Lock) {
	defer close(h.done)
	for ctx.Err() == nil {
		held, err := l.Lock(ctx)
		if err == nil {
			select {
			case <-held.Done():
				err = fmt.Errorf("lock lost while held: %w", context.Cause(held))
			case <-time.After(5 * time.Millisecond):
			}
			if uerr := l.Unlock(); err == nil {
				err = uerr
			}
		}
		if err != nil && !errors.Is(err, context.Canceled) {
			h.mu.Lock()
			h.err = errors.Join(h.err, err)
			h.mu.Unlock()
			return
		}
		h.mu.Lock()
		h.cycles++
		h.mu.Unlock()
	}
}

func (h *healthy) count() (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cycles, h.err
}

// waitCycles waits until the client has locked and unlocked n more times.
func (h *healthy) waitCycles(t *testing.T, n int) {
	t.Helper()
	start, _ := h.count()
	require.Eventually(t, func() bool {
		c, err := h.count()
		require.NoError(t, err, "healthy client")
		return c >= start+n
	}, waitFor, 10*time.Millisecond, fmt.Sprintf("the healthy client locks %d more times", n))
}

func (h *healthy) stop(t *testing.T) {
	h.cancel()
	<-h.done
	h.tr.(interface{ CloseIdleConnections() }).CloseIdleConnections()
	c, err := h.count()
	assert.NoError(t, err, "healthy client")
	t.Logf("healthy client: %d lock/unlock cycles, no error", c)
}

// noKeepAlive reads the elector's state without leaving a connection open,
// so that descriptor counts are the streams'.
var noKeepAlive = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// metric returns the value of a series on the elector's /metrics.
func (p *proc) metric(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := noKeepAlive.Get("http://" + p.addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err)
			return f
		}
	}
	t.Fatalf("no series %s on /metrics", series)
	return 0
}

// holder returns the holder of lock name.
func (p *proc) holder(t *testing.T, name string) string {
	t.Helper()
	resp, err := noKeepAlive.Get("http://" + p.addr + "/v1/locks/" + name)
	require.NoError(t, err)
	defer resp.Body.Close()
	var st wire.LockState
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
	return st.Holder
}

// fds counts the elector process's open descriptors.
func (p *proc) fds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.Pid()))
	require.NoError(t, err)
	return len(ents)
}

// sdkLock returns an SDK lock on name with its own transport, which is
// closed at the end of the test.
func sdkLock(t *testing.T, addr, name, identity string) *mpsync.Lock {
	t.Helper()
	tr, err := mpsync.NewHTTPTransport(addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tr.Close() })
	l, err := mpsync.NewLock(name, mpsync.WithTransport(tr), mpsync.WithIdentity(identity))
	require.NoError(t, err)
	return l
}

// lockAsync starts l.Lock and returns a channel that gets its result, and
// the moment it returned.
func lockAsync(l *mpsync.Lock) <-chan lockResult {
	got := make(chan lockResult, 1)
	go func() {
		ctx, err := l.Lock(context.Background())
		got <- lockResult{ctx, err, time.Now()}
	}()
	return got
}

type lockResult struct {
	held context.Context
	err  error
	at   time.Time
}

func wantGranted(t *testing.T, got <-chan lockResult) lockResult {
	t.Helper()
	select {
	case r := <-got:
		require.NoError(t, r.err)
		return r
	case <-time.After(waitFor):
		t.Fatalf("waiter not granted within %v (the lease is 15 s)", waitFor)
	}
	return lockResult{}
}

// TestVanishedHolder: a raw client holds a lock, sends trailing bytes and
// closes its socket; the elector releases the lock as a disconnect, and an
// SDK waiter gets it within the detection bound, not after the lease.
func TestVanishedHolder(t *testing.T) {
	p := startElector(t)
	startHealthy(t, p.addr, "healthy")
	disconnects := p.metric(t, `mpsync_elector_releases_total{cause="disconnect"}`)

	raw := dialRaw(t, p.addr, "POST", "/v1/locks/v/acquire", `{"identity":"raw"}`)
	require.Equal(t, wire.EventAcquired, raw.line().Type)
	waiter := sdkLock(t, p.addr, "v", "waiter")
	got := lockAsync(waiter)
	require.Eventually(t, func() bool { return p.metric(t, "mpsync_elector_waiters") == 1 }, waitFor, 10*time.Millisecond, "the SDK waiter queued")

	closed := raw.vanish()
	r := wantGranted(t, got)
	t.Logf("vanished holder's close -> next waiter's grant: %v", r.at.Sub(closed))
	assert.Equal(t, "waiter", p.holder(t, "v"))
	assert.Equal(t, disconnects+1, p.metric(t, `mpsync_elector_releases_total{cause="disconnect"}`))
	assert.NoError(t, waiter.Unlock())
}

// TestVanishedWaiter: a raw client waits for a lock, sends trailing bytes
// and closes its socket; it leaves the queue, and when the holder releases,
// the SDK waiter queued behind it gets the lock at once.
func TestVanishedWaiter(t *testing.T) {
	p := startElector(t)
	startHealthy(t, p.addr, "healthy")

	holder := sdkLock(t, p.addr, "w", "holder")
	_, err := holder.Lock(context.Background())
	require.NoError(t, err)
	raw := dialRaw(t, p.addr, "POST", "/v1/locks/w/acquire", `{"identity":"raw","wait":true}`)
	require.Equal(t, wire.EventWaiting, raw.line().Type)
	require.Eventually(t, func() bool { return p.metric(t, "mpsync_elector_waiters") == 1 }, waitFor, 10*time.Millisecond, "the raw waiter queued")
	waiter := sdkLock(t, p.addr, "w", "waiter")
	got := lockAsync(waiter)
	require.Eventually(t, func() bool { return p.metric(t, "mpsync_elector_waiters") == 2 }, waitFor, 10*time.Millisecond, "the SDK waiter queued behind it")

	closed := raw.vanish()
	require.Eventually(t, func() bool { return p.metric(t, "mpsync_elector_waiters") == 1 }, waitFor, 10*time.Millisecond, "the raw waiter left the queue")
	t.Logf("vanished waiter's close -> out of the queue: %v", time.Since(closed))

	released := time.Now()
	require.NoError(t, holder.Unlock())
	r := wantGranted(t, got)
	t.Logf("holder's release -> the real waiter's grant: %v", r.at.Sub(released))
	assert.Equal(t, "waiter", p.holder(t, "w"))
	assert.NoError(t, waiter.Unlock())
}

// TestVanishedWatches: raw clients open watches, send trailing bytes and
// close their sockets; the watchers gauge, the elector's descriptors and
// its goroutines come back to what they were.
func TestVanishedWatches(t *testing.T) {
	const watches = 1000
	p := startElector(t)
	startHealthy(t, p.addr, "healthy")
	watchers := p.metric(t, "mpsync_elector_watchers")
	fds, goroutines := p.fds(t), p.metric(t, "go_goroutines")

	for i := range watches {
		raw := dialRaw(t, p.addr, "GET", fmt.Sprintf("/v1/locks/watched-%d/watch", i%10), "")
		require.Equal(t, wire.EventHolder, raw.line().Type)
		raw.vanish()
	}
	t.Logf("after %d abandoned watches: %d descriptors (%d before), %v goroutines (%v before), %v watchers",
		watches, p.fds(t), fds, p.metric(t, "go_goroutines"), goroutines, p.metric(t, "mpsync_elector_watchers"))
	start := time.Now()
	// The healthy client's connections and the metrics scrapes come and
	// go: allow a few descriptors and goroutines of slack.
	require.Eventually(t, func() bool { return p.metric(t, "mpsync_elector_watchers") == watchers }, waitFor, 10*time.Millisecond, "the watchers gauge back")
	require.Eventually(t, func() bool { return p.fds(t) <= fds+4 }, waitFor, 10*time.Millisecond, "the descriptors back")
	require.Eventually(t, func() bool { return p.metric(t, "go_goroutines") <= goroutines+8 }, waitFor, 10*time.Millisecond, "the goroutines back")
	t.Logf("back within %v: %d descriptors, %v goroutines", time.Since(start), p.fds(t), p.metric(t, "go_goroutines"))
}

// TestUnreadStreams: raw clients that never read their answers (a held
// acquire and a watch) do not disturb the healthy client, keep what they
// hold while their sockets stay open, and are cleaned up once closed.
func TestUnreadStreams(t *testing.T) {
	p := startElector(t)
	h := startHealthy(t, p.addr, "healthy")
	watchers := p.metric(t, "mpsync_elector_watchers")

	holder := dialRaw(t, p.addr, "POST", "/v1/locks/u/acquire", `{"identity":"unread"}`)
	watch := dialRaw(t, p.addr, "GET", "/v1/locks/u/watch", "")
	require.Eventually(t, func() bool { return p.holder(t, "u") == "unread" }, waitFor, 10*time.Millisecond, "the unread holder holds")
	require.Eventually(t, func() bool { return p.metric(t, "mpsync_elector_watchers") == watchers+1 }, waitFor, 10*time.Millisecond, "the unread watch is open")
	// The point of the test: let heartbeats pile up unread for several
	// intervals while the healthy client works on. A client that does not
	// read but keeps its socket is alive: it keeps its lock.
	time.Sleep(3 * wire.HeartbeatInterval)
	h.waitCycles(t, 10)
	assert.Equal(t, "unread", p.holder(t, "u"))
	assert.Equal(t, watchers+1, p.metric(t, "mpsync_elector_watchers"))

	holder.vanish()
	watch.vanish()
	require.Eventually(t, func() bool { return p.holder(t, "u") == "" }, waitFor, 10*time.Millisecond, "the unread holder's lock released")
	require.Eventually(t, func() bool { return p.metric(t, "mpsync_elector_watchers") == watchers }, waitFor, 10*time.Millisecond, "the unread watch ended")
	h.waitCycles(t, 3)
}
