package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/wire"
)

// rawAcquire sends an acquire of name by identity over a connection of its
// own, followed by extra (bytes past the request), and reads the answer up
// to the acquired line.
func rawAcquire(t *testing.T, e *env, name, identity, extra string) (net.Conn, *http.Response, *bufio.Reader, wire.Event) {
	t.Helper()
	c, err := net.Dial("tcp", e.ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	body := `{"identity":"` + identity + `"}`
	fmt.Fprintf(c, "POST /v1/locks/%s/acquire HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s%s", name, len(body), body, extra)
	_ = c.SetReadDeadline(time.Now().Add(waitFor))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewReader(resp.Body)
	ev := readEvent(t, lines)
	if ev.Type != wire.EventAcquired {
		t.Fatalf("first line %+v, want acquired", ev)
	}
	return c, resp, lines, ev
}

// readEvent reads the next line that is not a heartbeat.
func readEvent(t *testing.T, r *bufio.Reader) wire.Event {
	t.Helper()
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		var ev wire.Event
		if err := json.Unmarshal(line, &ev); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if ev.Type != wire.EventHeartbeat {
			return ev
		}
	}
}

// TestHeldStreamEndsItsConnection: a held acquire stream says
// Connection: close, is chunked, ends with the body's last chunk after its
// last line, and then its connection is closed.
func TestHeldStreamEndsItsConnection(t *testing.T) {
	e := newEnv(t, Config{})
	c, resp, lines, ev := rawAcquire(t, e, "detached", "web-1", "")
	if !resp.Close {
		t.Error("the answer does not say Connection: close")
	}
	if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("transfer encoding %v, want chunked", resp.TransferEncoding)
	}
	e.doJSON("POST", "/v1/locks/detached/release", `{"session":"`+ev.Session+`"}`, http.StatusOK, nil)
	if ev := readEvent(t, lines); ev.Type != wire.EventReleased {
		t.Fatalf("line %+v, want released", ev)
	}
	if rest, err := io.ReadAll(lines); err != nil || len(rest) > 0 {
		t.Fatalf("after the released line: %q, %v; want the end of the body", rest, err)
	}
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes after the body; want the connection closed", n)
	}
}

// TestHeldStreamNoticesCloseAfterExtraBytes: a holder that sent bytes past
// its request and then closes its connection loses its lock at once (on
// the next heartbeat at the latest, as before), not at the lease's end.
func TestHeldStreamNoticesCloseAfterExtraBytes(t *testing.T) {
	e := newEnv(t, Config{})
	c, _, _, _ := rawAcquire(t, e, "extra", "web-1", "\r\n")
	if h := e.state("extra").Holder; h != "web-1" {
		t.Fatalf("holder %q, want web-1", h)
	}
	c.Close()
	require.Eventually(t, func() bool { return e.state("extra").Holder == "" }, waitFor, 10*time.Millisecond,
		"the lock was not released after its holder closed the connection")
}

// TestProfiling: /debug/pprof/ is served only with Config.Profiling.
func TestProfiling(t *testing.T) {
	off := newEnv(t, Config{})
	if status, _, _ := off.do("GET", "/debug/pprof/", ""); status != http.StatusNotFound {
		t.Errorf("without Profiling: status %d, want 404", status)
	}
	on := newEnv(t, Config{Profiling: true})
	status, _, body := on.do("GET", "/debug/pprof/goroutine?debug=1", "")
	if status != http.StatusOK || !strings.Contains(string(body), "goroutine profile:") {
		t.Errorf("with Profiling: status %d, body %.80q; want 200 and a goroutine profile", status, body)
	}
	if status, _, _ := on.do("GET", "/debug/pprof/", ""); status != http.StatusOK {
		t.Errorf("with Profiling: index status %d, want 200", status)
	}
}

// TestHeldStreamOneGoroutine: a detached held stream is served by one
// goroutine, which reads its connection, writes its heartbeats and learns
// of its grant's end; there were two (a keeper and a reader).
func TestHeldStreamOneGoroutine(t *testing.T) {
	e := newEnv(t, Config{})
	// Let the server's own goroutines settle before counting.
	e.doJSON("GET", "/healthz", "", http.StatusOK, nil)
	e.hc.CloseIdleConnections()
	before := runtime.NumGoroutine()
	const n = 20
	for i := range n {
		rawAcquire(t, e, fmt.Sprintf("one-%d", i), "web-1", "")
	}
	// Their handlers return once detached; what is left is one each.
	var extra atomic.Int64
	if !assert.Eventually(t, func() bool {
		extra.Store(int64(runtime.NumGoroutine() - before))
		return extra.Load() <= n+2
	}, waitFor, 10*time.Millisecond, "the goroutines of %d held streams", n) {
		t.Logf("%d goroutines more than before the %d held streams, want about one each", extra.Load(), n)
	}
	if held, _ := e.mem.Stats(); held != n {
		t.Errorf("%d locks held, want %d", held, n)
	}
}

// TestHeldStreamHeartbeats: a detached held stream writes a heartbeat
// every wire.HeartbeatInterval while it holds, its connection's read
// deadline being its timer.
func TestHeldStreamHeartbeats(t *testing.T) {
	e := newEnv(t, Config{})
	c, _, lines, _ := rawAcquire(t, e, "beats", "web-1", "")
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(waitFor))
	for i := range 2 {
		line, err := lines.ReadBytes('\n')
		require.NoError(t, err, "heartbeat %d", i+1)
		var ev wire.Event
		require.NoError(t, json.Unmarshal(line, &ev), "line %q", line)
		require.Equal(t, wire.EventHeartbeat, ev.Type, "line %d after the acquired one", i+1)
	}
	// Two heartbeats cannot come before two intervals have begun.
	if el := time.Since(start); el < wire.HeartbeatInterval {
		t.Errorf("two heartbeats within %v, want one per %v", el, wire.HeartbeatInterval)
	}
	if h := e.state("beats").Holder; h != "web-1" {
		t.Errorf("holder %q after the heartbeats, want web-1", h)
	}
}

// failingWrites is a connection whose writes fail and whose reads wait
// (net.Pipe honours read deadlines): a client that cannot be written to
// but has not closed.
type failingWrites struct{ net.Conn }

func (failingWrites) Write([]byte) (int, error) { return 0, errors.New("write refused") }

// TestKeepDetachedReleasesOnFailedHeartbeat: when a heartbeat cannot be
// written to a detached stream, its lock is released (as a disconnect) and
// the stream's goroutine ends.
func TestKeepDetachedReleasesOnFailedHeartbeat(t *testing.T) {
	e := newEnv(t, Config{})
	g, err := e.mem.Acquire(context.Background(), core.Request{Name: "failing", Identity: "web-1"})
	require.NoError(t, err)
	server, client := net.Pipe()
	defer client.Close()
	st := &stream{raw: failingWrites{server}, buf: make([]byte, 0, detachedBuf), started: true}
	done := make(chan struct{})
	e.s.keepHeld(st, &session{name: "failing", identity: "web-1", grant: g}, func() {
		st.end()
		close(done)
	})
	select {
	case <-done:
	case <-time.After(waitFor):
		t.Fatalf("the stream's goroutine did not end within %v of a failing heartbeat", waitFor)
	}
	select {
	case <-g.Done():
	default:
		t.Fatal("the grant is still held after its heartbeat failed")
	}
	assert.NoError(t, g.Err(), "the grant's Err: released, not lost")
	assert.Equal(t, "1", e.metric(`mpsync_elector_releases_total{cause="disconnect"}`), "disconnect releases counted")
}

// TestStreamWaitWake: wait returns at its deadline (not gone), at once
// after wake (called before or during the wait, from another goroutine),
// and with gone when the client closes; bytes the client sends are read
// and ignored.
func TestStreamWaitWake(t *testing.T) {
	newPiped := func(t *testing.T) (*stream, net.Conn) {
		server, client := net.Pipe()
		t.Cleanup(func() { server.Close(); client.Close() })
		return &stream{raw: server, buf: make([]byte, 0, detachedBuf)}, client
	}
	waitAsync := func(st *stream, at time.Time) <-chan bool {
		ch := make(chan bool, 1)
		go func() { ch <- st.wait(at) }()
		return ch
	}
	result := func(t *testing.T, ch <-chan bool) bool {
		t.Helper()
		select {
		case gone := <-ch:
			return gone
		case <-time.After(waitFor):
			t.Fatalf("wait did not return within %v", waitFor)
			return false
		}
	}
	far := func() time.Time { return time.Now().Add(time.Hour) }

	t.Run("deadline", func(t *testing.T) {
		st, client := newPiped(t)
		ch := waitAsync(st, time.Now().Add(50*time.Millisecond))
		// Read and ignored; the write ends, at the latest, when the pipe
		// is closed.
		go func() { _, _ = client.Write([]byte(strings.Repeat("x", 3*detachedBuf))) }()
		assert.False(t, result(t, ch), "gone at the deadline")
	})
	t.Run("wake during", func(t *testing.T) {
		st, client := newPiped(t)
		ch := waitAsync(st, far())
		_, _ = client.Write([]byte("x")) // the wait has begun reading
		st.wake()
		assert.False(t, result(t, ch), "gone after wake")
	})
	t.Run("wake before", func(t *testing.T) {
		st, _ := newPiped(t)
		st.wake()
		assert.False(t, result(t, waitAsync(st, far())), "gone after wake")
	})
	t.Run("client closes", func(t *testing.T) {
		st, client := newPiped(t)
		ch := waitAsync(st, far())
		client.Close()
		assert.True(t, result(t, ch), "gone after the client closed")
	})
}

// TestShutdownWakesDetachedStreams: Shutdown wakes the stream of every
// session that a detached stream serves, rather than leave each to notice
// at its next heartbeat; a stream detached after Shutdown began is woken
// at once.
func TestShutdownWakesDetachedStreams(t *testing.T) {
	e := newEnv(t, Config{})
	piped := func() *stream {
		server, client := net.Pipe()
		t.Cleanup(func() { server.Close(); client.Close() })
		return &stream{raw: server, buf: make([]byte, 0, detachedBuf)}
	}
	_, before := e.s.addSession("wake-1", "web-1", nil)
	early := piped()
	e.s.detached(before, early)
	_, notDetached := e.s.addSession("wake-2", "web-1", nil) // served by net/http: nothing to wake
	require.False(t, early.woken.Load(), "a stream woken before Shutdown")

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, e.s.Shutdown(ctx))
	assert.True(t, early.woken.Load(), "the detached stream woken by Shutdown")
	assert.Nil(t, notDetached.st)

	_, after := e.s.addSession("wake-3", "web-1", nil)
	late := piped()
	e.s.detached(after, late)
	assert.True(t, late.woken.Load(), "a stream detached after Shutdown began, woken at once")
}

// TestHeldStreamMovesToSmallerStack: a held stream's goroutine hands the
// stream to a fresh goroutine once new goroutines get smaller stacks than
// it got (at a heartbeat), and the stream goes on as before there.
func TestHeldStreamMovesToSmallerStack(t *testing.T) {
	e := newEnv(t, Config{})
	var size atomic.Uint64
	size.Store(4096)
	e.s.stackStart = size.Load // before any stream starts
	_, _, lines, ev := rawAcquire(t, e, "moves", "web-1", "")
	movedBy := "created by github.com/mpsync/mpsync/sidecar/server.(*Server).keepDetached"
	stacks := func() string {
		buf := make([]byte, 1<<20)
		return string(buf[:runtime.Stack(buf, true)])
	}
	require.NotContains(t, stacks(), movedBy, "a held stream moved before new stacks got smaller")
	size.Store(2048)
	require.Eventually(t, func() bool { return strings.Contains(stacks(), movedBy) }, waitFor, 10*time.Millisecond,
		"the held stream's goroutine did not move to a fresh one")
	e.doJSON("POST", "/v1/locks/moves/release", `{"session":"`+ev.Session+`"}`, http.StatusOK, nil)
	if ev := readEvent(t, lines); ev.Type != wire.EventReleased {
		t.Fatalf("line %+v after the move and a release, want released", ev)
	}
	if rest, err := io.ReadAll(lines); err != nil || len(rest) > 0 {
		t.Fatalf("after the released line: %q, %v; want the end of the body", rest, err)
	}
}
