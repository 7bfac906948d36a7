package server

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/wire"
)

func TestHealthReadyMetrics(t *testing.T) {
	e := newEnv(t, Config{})
	tests := []struct {
		name, path string
		status     int
		contains   string
	}{
		{"healthz", "/healthz", 200, `"ok"`},
		{"readyz", "/readyz", 200, `"ready"`},
		{"metrics", "/metrics", 200, "mpsync_elector_locks_held 0"},
		{"go collector", "/metrics", 200, "go_goroutines"},
		{"process collector", "/metrics", 200, "process_open_fds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, _, body := e.do("GET", tt.path, "")
			if status != tt.status || !strings.Contains(string(body), tt.contains) {
				t.Errorf("GET %s: %d %q, want %d containing %q", tt.path, status, body, tt.status, tt.contains)
			}
		})
	}
}

func TestAcquireRenewRelease(t *testing.T) {
	e := newEnv(t, Config{})
	if got, want := e.state("a"), (wire.LockState{Name: "a"}); got != want {
		t.Fatalf("state of a free lock: %+v, want %+v", got, want)
	}
	st, ev := e.acquired("a", "web-1")
	if want := core.Validity(15 * time.Second).Milliseconds(); ev.ValidityMs != want {
		t.Errorf("validityMs %d, want %d (core.Validity of the 15 s lease)", ev.ValidityMs, want)
	}
	if got, want := e.state("a"), (wire.LockState{Name: "a", Holder: "web-1", Token: ev.Token}); got != want {
		t.Errorf("state while held: %+v, want %+v", got, want)
	}

	var rr wire.RenewResponse
	e.doJSON("POST", "/v1/locks/a/renew", `{"session":"`+ev.Session+`"}`, 200, &rr)
	if rr.ValidityMs != ev.ValidityMs {
		t.Errorf("renew validityMs %d, want %d", rr.ValidityMs, ev.ValidityMs)
	}

	e.doJSON("POST", "/v1/locks/a/release", `{"session":"`+ev.Session+`"}`, 200, nil)
	if got := st.next(); got.Type != wire.EventReleased {
		t.Errorf("after release: line %+v, want released", got)
	}
	st.wantEnd()
	if got, want := e.state("a"), (wire.LockState{Name: "a", Token: ev.Token}); got != want {
		t.Errorf("state after release: %+v, want %+v", got, want)
	}
	// The ended session is unknown: renew and release of it are 404.
	for _, op := range []string{"release", "renew"} {
		var eb wire.ErrorBody
		e.doJSON("POST", "/v1/locks/a/"+op, `{"session":"`+ev.Session+`"}`, http.StatusNotFound, &eb)
		if eb.Code != wire.CodeUnknownSession {
			t.Errorf("%s after release: code %q, want %q", op, eb.Code, wire.CodeUnknownSession)
		}
	}
}

// TestReleasedSessionIsUnknownAtOnce: once a release is answered, its
// session is no live session, even while its stream has not ended yet (the
// client has not read the released line): a renew gets 404, not 410.
func TestReleasedSessionIsUnknownAtOnce(t *testing.T) {
	e := newEnv(t, Config{})
	st, ev := e.acquired("a", "web-1")
	e.doJSON("POST", "/v1/locks/a/release", `{"session":"`+ev.Session+`"}`, 200, nil)
	var eb wire.ErrorBody
	e.doJSON("POST", "/v1/locks/a/renew", `{"session":"`+ev.Session+`"}`, http.StatusNotFound, &eb)
	assert.Equal(t, wire.CodeUnknownSession, eb.Code, "renew after the release was answered")
	assert.Equal(t, wire.EventReleased, st.next().Type, "the stream's last line")
	st.wantEnd()
}

func TestAcquireLockedAndWait(t *testing.T) {
	e := newEnv(t, Config{})
	_, first := e.acquired("a", "web-1")

	var eb wire.ErrorBody
	e.doJSON("POST", "/v1/locks/a/acquire", `{"identity":"web-2"}`, http.StatusConflict, &eb)
	if eb.Code != wire.CodeLocked || eb.Holder != "web-1" {
		t.Errorf("not-wait on a held lock: %+v, want code locked, holder web-1", eb)
	}

	// A waiter is answered 200 and a waiting line while the lock is held,
	// and heartbeats while it waits.
	waiter := e.open("POST", "/v1/locks/a/acquire", `{"identity":"web-2","wait":true}`)
	waiter.wantWaiting()
	require.Eventually(t, func() bool { _, w := e.mem.Stats(); return w == 1 }, waitFor, 10*time.Millisecond, "waiter queued")
	require.Eventually(t, func() bool { return waiter.heartbeats.Load() > 0 }, waitFor, 10*time.Millisecond, "a heartbeat while waiting")
	e.doJSON("POST", "/v1/locks/a/release", `{"session":"`+first.Session+`"}`, 200, nil)
	ev := waiter.next()
	if ev.Type != wire.EventAcquired || ev.Token <= first.Token {
		t.Fatalf("waiter got %+v, want acquired with a token above %d", ev, first.Token)
	}
	if min := core.Validity(15 * time.Second).Milliseconds(); ev.ValidityMs <= min {
		t.Errorf("waited grant: validityMs %d, want more than %d (time waited counts from the request)", ev.ValidityMs, min)
	}
}

// waitedBackend is the memory backend with grants that claim to have
// waited a fixed time (their Validity includes it, as every backend's
// does) and count renewals.
type waitedBackend struct {
	*backend.Memory
	waited time.Duration
	renews atomic.Int32
}

func (b *waitedBackend) Acquire(ctx context.Context, req core.Request) (backend.Grant, error) {
	g, err := b.Memory.Acquire(ctx, req)
	if err != nil {
		return nil, err
	}
	return &waitedGrant{Grant: g, b: b}, nil
}

type waitedGrant struct {
	backend.Grant
	b *waitedBackend
}

func (g *waitedGrant) Validity() time.Duration {
	return core.WaitedValidity(15*time.Second, g.b.waited)
}

func (g *waitedGrant) Renew(ctx context.Context) (time.Duration, error) {
	g.b.renews.Add(1)
	return g.Grant.Renew(ctx)
}

// TestWaitedGrantIsNotRenewed: the server sends a waiter the validity its
// grant reports (the backend has counted the wait in), whatever the
// backend, and does not renew a grant on being granted.
func TestWaitedGrantIsNotRenewed(t *testing.T) {
	mem, err := backend.NewMemory(15 * time.Second)
	require.NoError(t, err)
	wb := &waitedBackend{Memory: mem, waited: 3 * time.Second}
	e := newEnv(t, Config{Backend: wb})
	e.mem = mem
	_, first := e.acquired("a", "web-1")
	waiter := e.open("POST", "/v1/locks/a/acquire", `{"identity":"web-2","wait":true}`)
	require.Eventually(t, func() bool { _, w := e.mem.Stats(); return w == 1 }, waitFor, 10*time.Millisecond, "waiter queued")
	waiter.wantWaiting()
	e.doJSON("POST", "/v1/locks/a/release", `{"session":"`+first.Session+`"}`, 200, nil)
	ev := waiter.next()
	require.Equal(t, wire.EventAcquired, ev.Type, "waiter got %+v", ev)
	want := (core.Validity(15*time.Second) + core.LeastElapsed(wb.waited)).Milliseconds()
	assert.Equal(t, want, ev.ValidityMs, "validityMs: the grant's Validity, Waited×(1-2ρ) included")
	assert.Zero(t, wb.renews.Load(), "renewals of the grant on being granted")
}

func TestClientGoneReleases(t *testing.T) {
	e := newEnv(t, Config{})
	holder, _ := e.acquired("a", "web-1")
	waiter := e.open("POST", "/v1/locks/a/acquire", `{"identity":"web-2","wait":true}`)
	require.Eventually(t, func() bool { _, w := e.mem.Stats(); return w == 1 }, waitFor, 10*time.Millisecond, "waiter queued")

	// A waiter that goes away leaves the queue.
	waiter.close()
	require.Eventually(t, func() bool { _, w := e.mem.Stats(); return w == 0 }, waitFor, 10*time.Millisecond, "waiter dropped")

	// A holder that goes away releases the lock.
	holder.close()
	require.Eventually(t, func() bool { return e.state("a").Holder == "" }, waitFor, 10*time.Millisecond, "lock released")
	if held, _ := e.mem.Stats(); held != 0 {
		t.Errorf("%d locks held after every client went away, want 0", held)
	}
}

func TestLoss(t *testing.T) {
	tests := []struct {
		name   string
		cfg    Config
		lease  time.Duration
		cause  func(e *env)
		reason string
	}{
		{
			name:   "revoked",
			cfg:    Config{Debug: true},
			cause:  func(e *env) { e.doJSON("POST", "/debug/revoke/a", "", 200, nil) },
			reason: wire.ReasonRevoked,
		},
		{
			name:   "expired",
			lease:  core.MinLease,
			cause:  func(*env) {}, // not renewed
			reason: wire.ReasonExpired,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.lease != 0 {
				mem, err := newMemory(tt.lease)
				if err != nil {
					t.Fatal(err)
				}
				tt.cfg.Backend = mem
			}
			e := newEnv(t, tt.cfg)
			st, ev := e.acquired("a", "web-1")
			tt.cause(e)
			got := st.next()
			if got.Type != wire.EventLost || got.Code != wire.CodeLost || got.Reason != tt.reason || got.Error == "" {
				t.Errorf("line %+v, want lost, code lost, reason %s, an error message", got, tt.reason)
			}
			st.wantEnd()
			var eb wire.ErrorBody
			e.doJSON("POST", "/v1/locks/a/renew", `{"session":"`+ev.Session+`"}`, http.StatusNotFound, &eb)
			if eb.Code != wire.CodeUnknownSession {
				t.Errorf("renew after the loss: code %q, want %q", eb.Code, wire.CodeUnknownSession)
			}
		})
	}
}

func TestWatch(t *testing.T) {
	e := newEnv(t, Config{})
	w := e.open("GET", "/v1/locks/a/watch", "")
	w.wantHead(200)
	want := func(holder string, token uint64) {
		t.Helper()
		ev := w.next()
		if ev.Type != wire.EventHolder || ev.Holder != holder || ev.Token != token {
			t.Fatalf("watch line %+v, want holder %q token %d", ev, holder, token)
		}
	}
	want("", 0)
	_, ev := e.acquired("a", "web-1")
	want("web-1", ev.Token)
	e.doJSON("POST", "/v1/locks/a/release", `{"session":"`+ev.Session+`"}`, 200, nil)
	want("", ev.Token)
	if got := e.metric("mpsync_elector_watchers"); got != "1" {
		t.Errorf("watchers gauge %s, want 1", got)
	}
	w.close()
	require.Eventually(t, func() bool { return e.metric("mpsync_elector_watchers") == "0" }, waitFor, 10*time.Millisecond, "watch ended")
}

// TestWatchHolderLineShape checks the exact bytes of a holder line: both
// fields are always present, even when empty or zero.
func TestWatchHolderLineShape(t *testing.T) {
	b, err := json.Marshal(wire.HolderEvent{Type: wire.EventHolder})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"type":"holder","holder":"","token":0}`; got != want {
		t.Errorf("free-lock holder line %s, want %s", got, want)
	}
}

// metric returns the value of an unlabelled series on /metrics.
func (e *env) metric(series string) string {
	e.t.Helper()
	_, _, body := e.do("GET", "/metrics", "")
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

func TestMetricsCount(t *testing.T) {
	e := newEnv(t, Config{})
	_, ev := e.acquired("a", "web-1")
	waiter := e.open("POST", "/v1/locks/a/acquire", `{"identity":"web-2","wait":true}`)
	require.Eventually(t, func() bool { return e.metric("mpsync_elector_waiters") == "1" }, waitFor, 10*time.Millisecond, "waiters gauge 1")
	if got := e.metric("mpsync_elector_locks_held"); got != "1" {
		t.Errorf("locks_held %s, want 1", got)
	}
	e.doJSON("POST", "/v1/locks/a/release", `{"session":"`+ev.Session+`"}`, 200, nil)
	waiter.wantHead(200)
	require.Eventually(t, func() bool {
		return e.metric(`mpsync_elector_acquisitions_total{protocol="v1"}`) == "2" &&
			e.metric(`mpsync_elector_releases_total{cause="request"}`) == "1" &&
			e.metric("mpsync_elector_waiters") == "0"
	}, waitFor, 10*time.Millisecond, "counters")
}

func TestShutdown(t *testing.T) {
	e := newEnv(t, Config{})
	holder, _ := e.acquired("a", "web-1")
	waiter := e.open("POST", "/v1/locks/a/acquire", `{"identity":"web-2","wait":true}`)
	waiter.wantWaiting()
	require.Eventually(t, func() bool { _, w := e.mem.Stats(); return w == 1 }, waitFor, 10*time.Millisecond, "waiter queued")
	watcher := e.open("GET", "/v1/locks/a/watch", "")
	watcher.wantHead(200)
	watcher.next()
	e.doJSON("PUT", "/locks/b", "", 200, nil)

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := e.s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	t.Logf("Shutdown took %v", time.Since(start))

	ev := holder.next()
	if ev.Type != wire.EventLost || ev.Reason != wire.ReasonShutdown {
		t.Errorf("holder got %+v, want lost with reason shutdown", ev)
	}
	holder.wantEnd()
	// The waiter was answered 200 and a waiting line; the shutdown is an
	// error line with the code a 503 would have.
	if ev := waiter.next(); ev.Type != wire.EventError || ev.Code != wire.CodeUnavailable {
		t.Errorf("waiter got %+v, want an error line with code unavailable", ev)
	}
	waiter.wantEnd()
	for {
		ev := watcher.next()
		if ev.Type == wire.EventHolder {
			continue // the release may show before the end
		}
		if ev.Type != wire.EventError || ev.Code != wire.CodeUnavailable {
			t.Errorf("watcher's last line %+v, want an error event with code unavailable", ev)
		}
		break
	}
	watcher.wantEnd()
	if held, waiting := e.mem.Stats(); held != 0 || waiting != 0 {
		t.Errorf("after Shutdown: %d held, %d waiting; want none", held, waiting)
	}
	// Later requests that would take or watch a lock get 503.
	for _, r := range []struct{ method, path, body string }{
		{"POST", "/v1/locks/c/acquire", `{"identity":"x"}`},
		{"GET", "/v1/locks/c/watch", ""},
		{"PUT", "/locks/c", ""},
		{"GET", "/readyz", ""},
	} {
		if status, _, body := e.do(r.method, r.path, r.body); status != http.StatusServiceUnavailable {
			t.Errorf("%s %s after Shutdown: %d %s, want 503", r.method, r.path, status, body)
		}
	}
	if status, _, _ := e.do("GET", "/healthz", ""); status != 200 {
		t.Errorf("healthz after Shutdown: %d, want 200 while still serving", status)
	}
}

func TestNewRejects(t *testing.T) {
	mem, err := newMemory(core.MinLease)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close(context.Background())
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no backend", Config{Identity: "x"}},
		{"no identity", Config{Backend: mem}},
		{"short legacy TTL", Config{Backend: mem, Identity: "x", LegacyTTL: time.Millisecond}},
		{"debug without revoke", Config{Backend: noRevoke{mem}, Identity: "x", Debug: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); err == nil {
				t.Error("New succeeded, want an error")
			}
		})
	}
}

// noRevoke hides the memory backend's Revoke.
type noRevoke struct{ backend.Backend }

func newMemory(lease time.Duration) (*backend.Memory, error) { return backend.NewMemory(lease) }

// watchCounter is the memory backend counting its Watch calls.
type watchCounter struct {
	*backend.Memory
	watches atomic.Int32
}

func (b *watchCounter) Watch(ctx context.Context, name string, fn func(core.Holder)) error {
	b.watches.Add(1)
	return b.Memory.Watch(ctx, name, fn)
}

// TestRefusalNamesHolderWithoutWatch: a 409, from v1 and from the legacy
// PUT, names the holder the backend's refusal carried, and the server
// opens no watch to find it.
func TestRefusalNamesHolderWithoutWatch(t *testing.T) {
	mem, err := backend.NewMemory(15 * time.Second)
	require.NoError(t, err)
	wc := &watchCounter{Memory: mem}
	e := newEnv(t, Config{Backend: wc})
	e.acquired("a", "web-1")

	var eb wire.ErrorBody
	e.doJSON("POST", "/v1/locks/a/acquire", `{"identity":"web-2"}`, http.StatusConflict, &eb)
	assert.Equal(t, wire.CodeLocked, eb.Code, "v1 409 code")
	assert.Equal(t, "web-1", eb.Holder, "v1 409 holder")

	eb = wire.ErrorBody{}
	e.doJSON("PUT", "/locks/a", "", http.StatusConflict, &eb)
	assert.Equal(t, wire.CodeLocked, eb.Code, "legacy 409 code")
	assert.Equal(t, "web-1", eb.Holder, "legacy 409 holder")

	assert.Zero(t, wc.watches.Load(), "backend watches opened to answer the refusals")
}
