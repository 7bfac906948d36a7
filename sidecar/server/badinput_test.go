package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/wire"
)

// keeper holds "kept" through v1 and "legacy-kept" through the legacy
// protocol, so that tests can check bad input leaves both untouched.
type keeper struct {
	e       *env
	st      *testStream
	ev      wire.Event
	legacyT uint64
}

func newKeeper(e *env) *keeper {
	e.t.Helper()
	k := &keeper{e: e}
	k.st, k.ev = e.acquired("kept", "keeper")
	var ls wire.LockState
	e.doJSON("PUT", "/locks/legacy-kept", "", 200, &ls)
	k.legacyT = ls.Token
	return k
}

// check fails the test if either lock changed hands or the keeper's stream
// said anything.
func (k *keeper) check(t *testing.T) {
	t.Helper()
	if got, want := k.e.state("kept"), (wire.LockState{Name: "kept", Holder: "keeper", Token: k.ev.Token}); got != want {
		t.Errorf("kept: %+v, want %+v", got, want)
	}
	if got, want := k.e.state("legacy-kept"), (wire.LockState{Name: "legacy-kept", Holder: "elector-1", Token: k.legacyT}); got != want {
		t.Errorf("legacy-kept: %+v, want %+v", got, want)
	}
	select {
	case ev, ok := <-k.st.events:
		t.Errorf("keeper's stream got %+v (open %v), want nothing", ev, ok)
	default:
	}
}

func TestBadInput(t *testing.T) {
	e := newEnv(t, Config{})
	k := newKeeper(e)
	long := strings.Repeat("a", core.MaxNameLength+1)
	big := `{"identity":"` + strings.Repeat("x", wire.MaxBodyBytes) + `"}`
	sess := k.ev.Session
	tests := []struct {
		name         string
		method, path string
		body         string
		header       map[string]string
		status       int
		code         string
		allow        string
	}{
		// Unknown paths.
		{name: "root", method: "GET", path: "/", status: 404, code: "not_found"},
		{name: "unknown", method: "GET", path: "/nope", status: 404, code: "not_found"},
		{name: "v1 locks no name", method: "GET", path: "/v1/locks", status: 404, code: "not_found"},
		{name: "unknown op", method: "POST", path: "/v1/locks/a/steal", status: 404, code: "not_found"},
		{name: "too deep", method: "POST", path: "/v1/locks/a/acquire/x", status: 404, code: "not_found"},
		{name: "trailing slash", method: "POST", path: "/v1/locks/a/acquire/", status: 404, code: "not_found"},
		{name: "legacy too deep", method: "GET", path: "/locks/a/b", status: 404, code: "not_found"},
		{name: "debug off", method: "POST", path: "/debug/revoke/kept", status: 404, code: "not_found"},
		{name: "v2", method: "GET", path: "/v2/locks/a", status: 404, code: "not_found"},

		// Wrong methods.
		{name: "GET acquire", method: "GET", path: "/v1/locks/kept/acquire", status: 405, code: "method_not_allowed", allow: "POST"},
		{name: "DELETE state", method: "DELETE", path: "/v1/locks/kept", status: 405, code: "method_not_allowed", allow: "GET, HEAD"},
		{name: "POST watch", method: "POST", path: "/v1/locks/kept/watch", status: 405, code: "method_not_allowed", allow: "GET"},
		{name: "PUT renew", method: "PUT", path: "/v1/locks/kept/renew", body: `{"session":"` + sess + `"}`, status: 405, code: "method_not_allowed", allow: "POST"},
		{name: "GET release", method: "GET", path: "/v1/locks/kept/release", status: 405, code: "method_not_allowed", allow: "POST"},
		{name: "DELETE legacy", method: "DELETE", path: "/locks/legacy-kept", status: 405, code: "method_not_allowed", allow: "GET, HEAD, PUT"},
		{name: "POST legacy", method: "POST", path: "/locks/legacy-kept", status: 405, code: "method_not_allowed", allow: "GET, HEAD, PUT"},
		{name: "POST healthz", method: "POST", path: "/healthz", status: 405, code: "method_not_allowed", allow: "GET, HEAD"},
		{name: "PATCH metrics", method: "PATCH", path: "/metrics", status: 405, code: "method_not_allowed", allow: "GET, HEAD"},

		// Invalid names, on every endpoint that takes one.
		{name: "upper case", method: "POST", path: "/v1/locks/Kept/acquire", body: `{"identity":"x"}`, status: 400, code: "invalid_name"},
		{name: "underscore", method: "GET", path: "/v1/locks/a_b", status: 400, code: "invalid_name"},
		{name: "empty name", method: "POST", path: "/v1/locks//acquire", body: `{"identity":"x"}`, status: 400, code: "invalid_name"},
		{name: "escaped slash", method: "POST", path: "/v1/locks/kept%2Facquire/acquire", body: `{"identity":"x"}`, status: 400, code: "invalid_name"},
		{name: "dot dot", method: "GET", path: "/v1/locks/../watch", status: 400, code: "invalid_name"},
		{name: "too long", method: "GET", path: "/v1/locks/" + long + "/watch", status: 400, code: "invalid_name"},
		// net/http itself rejects a malformed request URI, before any
		// handler runs, with a plain-text 400.
		{name: "bad escape", method: "GET", path: "/v1/locks/%zz", status: 400},
		{name: "unicode", method: "PUT", path: "/locks/%C3%A4", status: 400, code: "invalid_name"},
		{name: "legacy upper", method: "GET", path: "/locks/KEPT", status: 400, code: "invalid_name"},
		{name: "renew bad name", method: "POST", path: "/v1/locks/-kept/renew", body: `{"session":"` + sess + `"}`, status: 400, code: "invalid_name"},
		{name: "release bad name", method: "POST", path: "/v1/locks/kept-/release", body: `{"session":"` + sess + `"}`, status: 400, code: "invalid_name"},

		// Bodies.
		{name: "too large", method: "POST", path: "/v1/locks/a/acquire", body: big, status: 413, code: "too_large"},
		{name: "too large chunked", method: "POST", path: "/v1/locks/a/acquire", body: big, header: map[string]string{"X-Chunked": "1"}, status: 413, code: "too_large"},
		{name: "too large legacy", method: "PUT", path: "/locks/a", body: big, status: 413, code: "too_large"},
		{name: "too large release", method: "POST", path: "/v1/locks/kept/release", body: `{"session":"` + sess + `","pad":"` + strings.Repeat("x", wire.MaxBodyBytes) + `"}`, status: 413, code: "too_large"},
		{name: "too large watch", method: "GET", path: "/v1/locks/kept/watch", body: big, status: 413, code: "too_large"},
		{name: "empty body", method: "POST", path: "/v1/locks/a/acquire", status: 400, code: "bad_request"},
		{name: "malformed", method: "POST", path: "/v1/locks/a/acquire", body: `{"identity":`, status: 400, code: "bad_request"},
		{name: "not JSON", method: "POST", path: "/v1/locks/a/acquire", body: `identity=x`, status: 400, code: "bad_request"},
		{name: "array", method: "POST", path: "/v1/locks/a/acquire", body: `[]`, status: 400, code: "bad_request"},
		{name: "null", method: "POST", path: "/v1/locks/a/acquire", body: `null`, status: 400, code: "bad_request"},
		{name: "unknown field", method: "POST", path: "/v1/locks/a/acquire", body: `{"identity":"x","lease":5}`, status: 400, code: "bad_request"},
		{name: "trailing data", method: "POST", path: "/v1/locks/a/acquire", body: `{"identity":"x"} {}`, status: 400, code: "bad_request"},
		{name: "wrong type", method: "POST", path: "/v1/locks/a/acquire", body: `{"identity":5}`, status: 400, code: "bad_request"},
		{name: "wait not bool", method: "POST", path: "/v1/locks/a/acquire", body: `{"identity":"x","wait":"yes"}`, status: 400, code: "bad_request"},
		{name: "empty identity", method: "POST", path: "/v1/locks/a/acquire", body: `{"identity":""}`, status: 400, code: "bad_request"},
		{name: "long identity", method: "POST", path: "/v1/locks/a/acquire", body: `{"identity":"` + strings.Repeat("x", 254) + `"}`, status: 400, code: "bad_request"},
		{name: "control identity", method: "POST", path: "/v1/locks/a/acquire", body: `{"identity":"a\nb"}`, status: 400, code: "bad_request"},
		{name: "tab identity", method: "POST", path: "/v1/locks/a/acquire", body: `{"identity":"a\tb"}`, status: 400, code: "bad_request"},
		{name: "DEL identity", method: "POST", path: "/v1/locks/a/acquire", body: `{"identity":"a\u007f"}`, status: 400, code: "bad_request"},
		{name: "C1 identity", method: "POST", path: "/v1/locks/a/acquire", body: `{"identity":"a\u0085"}`, status: 400, code: "bad_request"},
		{name: "bad UTF-8 identity", method: "POST", path: "/v1/locks/a/acquire", body: "{\"identity\":\"\xff\"}", status: 400, code: "bad_request"},
		{name: "renew no session", method: "POST", path: "/v1/locks/kept/renew", body: `{}`, status: 400, code: "bad_request"},
		{name: "release no session", method: "POST", path: "/v1/locks/kept/release", body: `{"session":""}`, status: 400, code: "bad_request"},
		{name: "release unknown field", method: "POST", path: "/v1/locks/kept/release", body: `{"session":"` + sess + `","force":true}`, status: 400, code: "bad_request"},

		// Well-formed requests that must not touch the kept locks.
		{name: "take kept", method: "POST", path: "/v1/locks/kept/acquire", body: `{"identity":"thief"}`, status: 409, code: "locked"},
		{name: "legacy take kept", method: "PUT", path: "/locks/kept", status: 409, code: "locked"},
		{name: "v1 take legacy-kept", method: "POST", path: "/v1/locks/legacy-kept/acquire", body: `{"identity":"thief"}`, status: 409, code: "locked"},
		{name: "renew unknown session", method: "POST", path: "/v1/locks/kept/renew", body: `{"session":"s1"}`, status: 404, code: "unknown_session"},
		{name: "renew session on other lock", method: "POST", path: "/v1/locks/other/renew", body: `{"session":"` + sess + `"}`, status: 404, code: "unknown_session"},
		{name: "release session on other lock", method: "POST", path: "/v1/locks/other/release", body: `{"session":"` + sess + `"}`, status: 404, code: "unknown_session"},
		{name: "release unknown session", method: "POST", path: "/v1/locks/kept/release", body: `{"session":"nope"}`, status: 404, code: "unknown_session"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			req, err := http.NewRequestWithContext(ctx, tt.method, e.url(""), body)
			if err != nil {
				t.Fatal(err)
			}
			req.URL.Opaque = tt.path // send the path exactly as written
			if tt.header["X-Chunked"] != "" {
				req.ContentLength = -1 // no Content-Length: the limit must still hold
				req.Body = io.NopCloser(strings.NewReader(tt.body))
			}
			resp, err := e.hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Errorf("status %d, want %d; body %s", resp.StatusCode, tt.status, b)
			}
			if tt.code != "" {
				var eb wire.ErrorBody
				if err := json.Unmarshal(b, &eb); err != nil || eb.Code != tt.code || eb.Error == "" {
					t.Errorf("body %s, want a JSON error with code %q and a message", b, tt.code)
				}
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type %q, want application/json", ct)
				}
			}
			if tt.allow != "" {
				if got := resp.Header.Get("Allow"); got != tt.allow {
					t.Errorf("Allow %q, want %q", got, tt.allow)
				}
			}
			k.check(t)
		})
	}
}

// rawConn opens a plain TCP connection to the server.
func (e *env) rawConn() net.Conn {
	e.t.Helper()
	c, err := net.Dial("tcp", e.ts.Listener.Addr().String())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(waitFor))
	return c
}

func TestSlowClients(t *testing.T) {
	const timeout = 300 * time.Millisecond
	e := newEnv(t, Config{ReadHeaderTimeout: timeout, ReadTimeout: 2 * timeout, IdleTimeout: 2 * timeout})
	k := newKeeper(e)

	t.Run("stalled headers", func(t *testing.T) {
		start := time.Now() // before the server can start its clock
		c := e.rawConn()
		fmt.Fprintf(c, "POST /v1/locks/kept/release HTTP/1.1\r\nHost: x\r\n") // and nothing more
		n, err := c.Read(make([]byte, 1))
		if n != 0 || err == nil {
			t.Fatalf("read %d bytes, %v; want the server to close the connection", n, err)
		}
		if el := time.Since(start); el < timeout {
			t.Errorf("closed after %v, before the header timeout %v", el, timeout)
		}
		k.check(t)
	})

	t.Run("stalled body", func(t *testing.T) {
		c := e.rawConn()
		fmt.Fprintf(c, "POST /v1/locks/kept/release HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"session\":")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var eb wire.ErrorBody
		if resp.StatusCode != http.StatusRequestTimeout || json.Unmarshal(b, &eb) != nil || eb.Code != wire.CodeBadRequest {
			t.Errorf("got %s %s, want 408 with code bad_request", resp.Status, b)
		}
		k.check(t)
	})

	t.Run("idle keep-alive", func(t *testing.T) {
		c := e.rawConn()
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Fatalf("read %d bytes, %v; want the idle connection closed", n, err)
		}
	})

	t.Run("streams outlive the read timeout", func(t *testing.T) {
		// net/http clears the read deadline once a request's body is read,
		// so ReadTimeout does not cut long-lived streams. The keeper's
		// stream is older than the timeouts by now; check it still holds
		// and renews, and that a watch outlives them too.
		w := e.open("GET", "/v1/locks/late/watch", "")
		w.wantHead(200)
		if ev := w.next(); ev.Holder != "" {
			t.Fatalf("first watch line %+v, want a free lock", ev)
		}
		time.Sleep(3 * timeout) // the point of the test: let the timeouts pass
		k.check(t)
		var rr wire.RenewResponse
		e.doJSON("POST", "/v1/locks/kept/renew", `{"session":"`+k.ev.Session+`"}`, 200, &rr)
		e.acquired("late", "web-1")
		if ev := w.next(); ev.Holder != "web-1" {
			t.Errorf("watch line %+v, want holder web-1", ev)
		}
	})
}
