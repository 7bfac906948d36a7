package server

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitFor bounds every wait for something that should happen promptly. It
// is generous: the machine may be slow and shared.
const waitFor = 10 * time.Second

// env is a Server on the memory backend behind a real loopback socket.
type env struct {
	t   *testing.T
	s   *Server
	mem *backend.Memory
	ts  *httptest.Server
	hc  *http.Client
}

// newEnv starts a Server with cfg, filling in a memory backend (15 s leases)
// and the identity "elector-1" when cfg leaves them out.
func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	e := &env{t: t}
	if cfg.Backend == nil {
		mem, err := backend.NewMemory(15 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		e.mem = mem
		cfg.Backend = mem
	} else if mem, ok := cfg.Backend.(*backend.Memory); ok {
		e.mem = mem
	}
	if cfg.Identity == "" {
		cfg.Identity = "elector-1"
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.s = s
	e.ts = httptest.NewUnstartedServer(s)
	hs := s.HTTPServer()
	e.ts.Config.ReadHeaderTimeout = hs.ReadHeaderTimeout
	e.ts.Config.ReadTimeout = hs.ReadTimeout
	e.ts.Config.IdleTimeout = hs.IdleTimeout
	e.ts.Start()
	e.hc = e.ts.Client()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		e.ts.Close()
	})
	return e
}

func (e *env) url(path string) string { return e.ts.URL + path }

// do sends one request and returns the status, the headers and the body.
func (e *env) do(method, path, body string) (int, http.Header, []byte) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, e.url(path), rd)
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, b
}

// doJSON is do, decoding the body into out and checking the status.
func (e *env) doJSON(method, path, body string, wantStatus int, out any) {
	e.t.Helper()
	status, _, b := e.do(method, path, body)
	if status != wantStatus {
		e.t.Fatalf("%s %s %s: status %d, want %d; body %s", method, path, body, status, wantStatus, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("%s %s: body %q: %v", method, path, b, err)
		}
	}
}

func (e *env) state(name string) wire.LockState {
	e.t.Helper()
	var st wire.LockState
	e.doJSON("GET", "/v1/locks/"+name, "", http.StatusOK, &st)
	return st
}

// head is how a stream request was answered.
type head struct {
	status int
	body   []byte // the body of an answer other than 200
	err    error
}

// testStream is a streamed request (acquire or watch) read in the
// background.
type testStream struct {
	t      *testing.T
	cancel context.CancelFunc
	head   chan head       // one value
	events chan wire.Event // the lines but heartbeats; closed at the end of the stream
	done   chan struct{}
	// heartbeats counts the heartbeat lines, which events leaves out.
	heartbeats atomic.Int32
}

// open starts a streamed request. Closing it (cancel) closes the
// connection, as a client process that dies would.
func (e *env) open(method, path, body string) *testStream {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st := &testStream{
		t:      e.t,
		cancel: cancel,
		head:   make(chan head, 1),
		events: make(chan wire.Event, 64),
		done:   make(chan struct{}),
	}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, e.url(path), rd)
	if err != nil {
		e.t.Fatal(err)
	}
	go func() {
		defer close(st.done)
		defer close(st.events)
		resp, err := e.hc.Do(req)
		if err != nil {
			st.head <- head{err: err}
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			st.head <- head{status: resp.StatusCode, body: b}
			return
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
			st.head <- head{status: resp.StatusCode, err: &contentTypeError{ct}}
			return
		}
		st.head <- head{status: resp.StatusCode}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var ev wire.Event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				ev = wire.Event{Type: "unparsable: " + sc.Text()}
			}
			if ev.Type == wire.EventHeartbeat {
				st.heartbeats.Add(1)
				continue
			}
			st.events <- ev
		}
	}()
	e.t.Cleanup(st.close)
	return st
}

type contentTypeError struct{ ct string }

func (e *contentTypeError) Error() string {
	return "Content-Type " + e.ct + ", want application/x-ndjson"
}

// close ends the request and waits for the reader.
func (st *testStream) close() {
	st.cancel()
	<-st.done
}

// wantHead waits for the answer's status and checks it.
func (st *testStream) wantHead(status int) head {
	st.t.Helper()
	select {
	case h := <-st.head:
		if h.err != nil {
			st.t.Fatalf("stream request: %v", h.err)
		}
		if h.status != status {
			st.t.Fatalf("stream status %d, want %d; body %s", h.status, status, h.body)
		}
		return h
	case <-time.After(waitFor):
		st.t.Fatalf("no answer within %v", waitFor)
	}
	return head{}
}

// next waits for the next line.
func (st *testStream) next() wire.Event {
	st.t.Helper()
	select {
	case ev, ok := <-st.events:
		if !ok {
			st.t.Fatal("stream ended; want another line")
		}
		return ev
	case <-time.After(waitFor):
		st.t.Fatalf("no stream line within %v", waitFor)
	}
	return wire.Event{}
}

// granted waits for the line that follows the answer of an acquire that
// may have waited: the acquired line, after a waiting line if the grant did
// not come at once.
func (st *testStream) granted() wire.Event {
	st.t.Helper()
	ev := st.next()
	if ev.Type == wire.EventWaiting {
		ev = st.next()
	}
	return ev
}

// wantWaiting checks that the stream was answered 200 with a waiting line.
func (st *testStream) wantWaiting() {
	st.t.Helper()
	st.wantHead(http.StatusOK)
	if ev := st.next(); ev.Type != wire.EventWaiting {
		st.t.Fatalf("first line %+v, want waiting", ev)
	}
}

// wantEnd waits for the stream to end with no more lines.
func (st *testStream) wantEnd() {
	st.t.Helper()
	select {
	case ev, ok := <-st.events:
		if ok {
			st.t.Fatalf("got line %+v, want the end of the stream", ev)
		}
	case <-time.After(waitFor):
		st.t.Fatalf("stream did not end within %v", waitFor)
	}
}

// acquired opens an acquire stream that must be granted at once.
func (e *env) acquired(name, identity string) (*testStream, wire.Event) {
	e.t.Helper()
	st := e.open("POST", "/v1/locks/"+name+"/acquire", `{"identity":"`+identity+`"}`)
	st.wantHead(http.StatusOK)
	ev := st.next()
	if ev.Type != wire.EventAcquired || ev.Session == "" || ev.Token == 0 || ev.ValidityMs <= 0 {
		e.t.Fatalf("first line %+v, want an acquired event with session, token and validity", ev)
	}
	return st, ev
}
