package server

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/wire"
)

// limitEnv is a Server with small Limits served the way the elector serves
// it: HTTPServer over Listener, on a loopback socket.
type limitEnv struct {
	t    *testing.T
	s    *Server
	addr string
}

func newLimitEnv(t *testing.T, l Limits) *limitEnv {
	t.Helper()
	mem, err := backend.NewMemory(15 * time.Second)
	require.NoError(t, err)
	s, err := New(Config{Backend: mem, Identity: "elector-1", Limits: l})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	hs := s.HTTPServer()
	served := make(chan error, 1)
	go func() { served <- hs.Serve(s.Listener(ln)) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		assert.NoError(t, s.Shutdown(ctx))
		assert.NoError(t, hs.Shutdown(ctx))
		assert.ErrorIs(t, <-served, http.ErrServerClosed)
	})
	return &limitEnv{t: t, s: s, addr: ln.Addr().String()}
}

// rawConn is a client connection that speaks HTTP/1.1 by hand.
type rawConn struct {
	c  net.Conn
	br *bufio.Reader
}

func (e *limitEnv) dial() *rawConn {
	e.t.Helper()
	c, err := net.Dial("tcp", e.addr)
	require.NoError(e.t, err)
	e.t.Cleanup(func() { c.Close() })
	require.NoError(e.t, c.SetDeadline(time.Now().Add(waitFor)))
	return &rawConn{c: c, br: bufio.NewReader(c)}
}

// do sends one request and reads the head of the answer, and its body
// unless it is a stream, which it leaves open.
func (rc *rawConn) do(t *testing.T, method, path, body string) (*http.Response, []byte) {
	t.Helper()
	req := method + " " + path + " HTTP/1.1\r\nHost: x\r\n"
	if body != "" || method == http.MethodPost {
		req += "Content-Length: " + itoa(len(body)) + "\r\n"
	}
	_, err := io.WriteString(rc.c, req+"\r\n"+body)
	require.NoError(t, err)
	resp, err := http.ReadResponse(rc.br, nil)
	require.NoError(t, err)
	if resp.StatusCode == http.StatusOK && resp.Header.Get("Content-Type") == "application/x-ndjson" {
		line, err := rc.br.ReadBytes('\n')
		require.NoError(t, err)
		return resp, line
	}
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, b
}

func itoa(n int) string { return strconv.Itoa(n) }

// requireRefused checks a 503 unavailable answer that closes its connection.
func requireRefused(t *testing.T, resp *http.Response, body []byte, mention string) {
	t.Helper()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "body %s", body)
	assert.True(t, resp.Close, "the refusal must close its connection")
	var eb wire.ErrorBody
	require.NoError(t, json.Unmarshal(body, &eb), "body %s", body)
	assert.Equal(t, wire.CodeUnavailable, eb.Code)
	assert.Contains(t, eb.Error, mention)
}

func TestStreamLimit(t *testing.T) {
	e := newLimitEnv(t, Limits{MaxConnections: 8, MaxStreams: 4}) // 2 acquire, 2 watch
	watches := []*rawConn{e.dial(), e.dial()}
	for _, w := range watches {
		resp, _ := w.do(t, http.MethodGet, "/v1/locks/a/watch", "")
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	resp, body := e.dial().do(t, http.MethodGet, "/v1/locks/b/watch", "")
	requireRefused(t, resp, body, "--max-streams")
	assert.Equal(t, 1.0, testutil.ToFloat64(e.s.lm.refusals.WithLabelValues(limitWatchStreams)))

	// Watches cannot take the acquires' half, nor the probes.
	holder := e.dial()
	resp, line := holder.do(t, http.MethodPost, "/v1/locks/a/acquire", `{"identity":"me"}`)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", line)
	resp, _ = e.dial().do(t, http.MethodGet, "/healthz", "")
	assert.Equal(t, http.StatusOK, resp.StatusCode)

	// A slot comes back when its stream ends.
	watches[0].c.Close()
	require.Eventually(t, func() bool {
		resp, _ := e.dial().do(t, http.MethodGet, "/v1/locks/b/watch", "")
		return resp.StatusCode == http.StatusOK
	}, waitFor, 10*time.Millisecond)
}

func TestConnectionLimit(t *testing.T) {
	l := Limits{MaxConnections: 4, MaxStreams: 2}
	e := newLimitEnv(t, l)
	// Ordinary connections, left idle after one request.
	for range l.MaxConnections {
		resp, _ := e.dial().do(t, http.MethodGet, "/healthz", "")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.False(t, resp.Close)
	}
	// The reserve serves short requests, one per connection, and no streams.
	resp, _ := e.dial().do(t, http.MethodGet, "/readyz", "")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, resp.Close, "a reserve connection serves one request")
	resp, body := e.dial().do(t, http.MethodGet, "/v1/locks/a/watch", "")
	requireRefused(t, resp, body, "--max-connections")

	// Past the reserve: a bare 503, then the connection closes.
	require.Eventually(t, func() bool { return testutil.ToFloat64(e.s.lm.connections) == float64(l.MaxConnections) },
		waitFor, 10*time.Millisecond, "the reserve connections close after their request")
	var held []*rawConn
	for range ReserveFor(l.MaxConnections) {
		held = append(held, e.dial())
	}
	require.Eventually(t, func() bool { return testutil.ToFloat64(e.s.lm.connections) == float64(l.MaxConnections+len(held)) },
		waitFor, 10*time.Millisecond)
	over := e.dial()
	resp, err := http.ReadResponse(over.br, nil)
	require.NoError(t, err)
	body, err = io.ReadAll(resp.Body)
	require.NoError(t, err)
	requireRefused(t, resp, body, "--max-connections")
	_, err = over.br.ReadByte()
	assert.ErrorIs(t, err, io.EOF)
	assert.Equal(t, 2.0, testutil.ToFloat64(e.s.lm.refusals.WithLabelValues(limitConnections)))
}

func TestLimitsFor(t *testing.T) {
	tests := []struct {
		nofile       uint64
		conns, strms int
	}{
		{256, 165, 123},
		{1024, 885, 663},
		{1 << 20, DefaultMaxConnections, DefaultMaxConnections * 3 / 4},
	}
	for _, tt := range tests {
		l, err := LimitsFor(tt.nofile)
		require.NoError(t, err)
		assert.Equal(t, Limits{MaxConnections: tt.conns, MaxStreams: tt.strms}, l, "LimitsFor(%d)", tt.nofile)
		assert.LessOrEqual(t, uint64(l.Descriptors()), tt.nofile)
	}
	_, err := LimitsFor(80)
	assert.ErrorIs(t, err, errDescriptors)
}
