package server

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

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
