package server

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/wire"
)

// mpClient does exactly what Metaparticle Sync's JavaScript client
// (metaparticle-io/sync javascript/lib/lock.js) does, one step per call,
// with the 10 s timers left to the test:
//
//	lock():     GET /locks/NAME; on 404 or 200, PUT /locks/NAME (no body);
//	            PUT 200 -> acquired; anything else -> try again later
//	holdLock(): GET; on 200, PUT; PUT not 200 while held -> lost
type mpClient struct {
	e    *env
	name string
	held bool
	lost bool
}

// step runs one timer's worth of the client and returns the status codes.
func (c *mpClient) step() (get, put int) {
	c.e.t.Helper()
	get, _, _ = c.e.do("GET", "/locks/"+c.name, "")
	if !c.held {
		if get != 404 && get != 200 {
			return get, 0 // setTimeout(lockInternal, 10 s)
		}
		put, _, _ = c.e.do("PUT", "/locks/"+c.name, "")
		c.held = put == 200
		return get, put
	}
	if get != 200 {
		return get, 0 // holdLock: setTimeout(holdLock, 10 s)
	}
	put, _, _ = c.e.do("PUT", "/locks/"+c.name, "")
	if put != 200 {
		c.held, c.lost = false, true
	}
	return get, put
}

func TestLegacyMetaparticleClient(t *testing.T) {
	const ttl = core.MinLease // 30 s in production; short here to see expiry
	e := newEnv(t, Config{LegacyTTL: ttl})
	js := &mpClient{e: e, name: "a"}

	// Never held: GET 404, PUT 200.
	if get, put := js.step(); get != 404 || put != 200 || !js.held {
		t.Fatalf("first lock(): GET %d PUT %d held %v; want 404, 200, held", get, put, js.held)
	}
	var st wire.LockState
	e.doJSON("GET", "/locks/a", "", 200, &st)
	if st.Holder != "elector-1" || st.Token == 0 {
		t.Errorf("GET while held: %+v, want holder elector-1 with a token", st)
	}
	// The legacy holder and a v1 client exclude each other.
	var eb wire.ErrorBody
	e.doJSON("POST", "/v1/locks/a/acquire", `{"identity":"web-1"}`, http.StatusConflict, &eb)
	if eb.Holder != "elector-1" {
		t.Errorf("v1 acquire of a legacy-held lock: %+v, want 409 naming elector-1", eb)
	}
	// holdLock() renews: GET 200, PUT 200, same token.
	for i := range 3 {
		if get, put := js.step(); get != 200 || put != 200 || !js.held {
			t.Fatalf("renewal %d: GET %d PUT %d; want 200, 200", i, get, put)
		}
	}
	var again wire.LockState
	e.doJSON("GET", "/locks/a", "", 200, &again)
	if again.Token != st.Token {
		t.Errorf("token changed from %d to %d across renewals", st.Token, again.Token)
	}

	// A v1 client waits; the JS client stops renewing (unlock() just stops
	// the timers), so the lease expires after the TTL and the waiter gets
	// the lock.
	waiter := e.open("POST", "/v1/locks/a/acquire", `{"identity":"web-1","wait":true}`)
	start := time.Now()
	waiter.wantHead(200)
	ev := waiter.granted()
	t.Logf("legacy lease (TTL %v) expired and passed to the v1 waiter after %v", ttl, time.Since(start))
	if ev.Type != wire.EventAcquired || ev.Token <= st.Token {
		t.Fatalf("waiter got %+v, want acquired with a token above %d", ev, st.Token)
	}
	// The JS client's next holdLock(): GET 200 (someone holds it), PUT 409:
	// it reports the loss.
	if get, put := js.step(); get != 200 || put != 409 || !js.lost {
		t.Fatalf("holdLock() after expiry: GET %d PUT %d lost %v; want 200, 409, lost", get, put, js.lost)
	}
	// A fresh lock() while v1 holds it: GET 200, PUT 409, try again later.
	js2 := &mpClient{e: e, name: "a"}
	if get, put := js2.step(); get != 200 || put != 409 || js2.held {
		t.Fatalf("lock() while v1 holds: GET %d PUT %d; want 200, 409", get, put)
	}
	// v1 releases; the next try gets it.
	e.doJSON("POST", "/v1/locks/a/release", `{"session":"`+ev.Session+`"}`, 200, nil)
	waiter.next()
	if get, put := js2.step(); get != 404 || put != 200 || !js2.held {
		t.Fatalf("lock() after the v1 release: GET %d PUT %d; want 404, 200", get, put)
	}
}

func TestLegacyConcurrentPuts(t *testing.T) {
	e := newEnv(t, Config{})
	// Clients of one elector share its identity: all of them hold it.
	var wg sync.WaitGroup
	codes := make([]int, 8)
	for i := range codes {
		wg.Go(func() { codes[i], _, _ = e.do("PUT", "/locks/a", "") })
	}
	wg.Wait()
	for i, c := range codes {
		if c != 200 {
			t.Errorf("PUT %d: %d, want 200", i, c)
		}
	}
	if held, _ := e.mem.Stats(); held != 1 {
		t.Errorf("%d locks held, want 1", held)
	}
}

func TestLegacyBodyIgnored(t *testing.T) {
	e := newEnv(t, Config{})
	e.doJSON("PUT", "/locks/a", `{"anything": ["at", "all"]}`, 200, nil)
	e.doJSON("PUT", "/locks/a", `not even JSON`, 200, nil)
	status, _, _ := e.do("HEAD", "/locks/a", "")
	if status != 200 {
		t.Errorf("HEAD of a held legacy lock: %d, want 200", status)
	}
}

func TestLegacyRevoked(t *testing.T) {
	e := newEnv(t, Config{Debug: true})
	js := &mpClient{e: e, name: "a"}
	js.step()
	e.doJSON("POST", "/debug/revoke/a", "", 200, nil)
	require.Eventually(t, func() bool { return e.metric("mpsync_elector_locks_held") == "0" }, waitFor, 10*time.Millisecond, "legacy grant forgotten")
	// holdLock(): GET 404 now (the JS client just waits; the Python, Java
	// and .NET clients report the loss on a GET that is not 200).
	if get, put := js.step(); get != 404 || put != 0 {
		t.Errorf("holdLock() after revoke: GET %d PUT %d; want 404 and no PUT", get, put)
	}
	if got := e.metric(`mpsync_elector_losses_total{reason="revoked"}`); got != "1" {
		t.Errorf("revoked losses %s, want 1", got)
	}
}

// legacyEntries is how many legacy locks the server remembers.
func (s *Server) legacyEntries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.legacy)
}

// TestLegacyMapShrinks: the server forgets a legacy lock once it is not
// held and no PUT of it is under way: after the lease ends, after a 409,
// after a GET.
func TestLegacyMapShrinks(t *testing.T) {
	e := newEnv(t, Config{LegacyTTL: core.MinLease})
	e.acquired("taken", "web-1")
	for i := range 100 {
		e.doJSON("PUT", fmt.Sprintf("/locks/legacy-%d", i), "", 200, nil)
		e.doJSON("GET", fmt.Sprintf("/locks/never-%d", i), "", 404, nil)
	}
	e.doJSON("PUT", "/locks/taken", "", 409, nil)
	require.Equal(t, 100, e.s.legacyEntries(), "the 100 held legacy locks, and nothing for the 409 or the GETs")
	// The leases end a second after the last PUT; then the map is empty.
	require.Eventually(t, func() bool { return e.s.legacyEntries() == 0 }, waitFor, 10*time.Millisecond, "legacy locks forgotten after their leases ended")
	// A forgotten lock is taken again with a greater token.
	var st wire.LockState
	e.doJSON("PUT", "/locks/legacy-0", "", 200, &st)
	assert.Greater(t, st.Token, uint64(100), "token of legacy-0 taken again")
}
