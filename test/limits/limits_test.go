package limits_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/internal/electorproc"
	"github.com/mpsync/mpsync/internal/wire"
)

const (
	// nofile is the descriptor limit the electors run with: 165
	// connections (and a reserve of 10), 62 acquire and 61 watch streams.
	nofile = 256
	// waitFor bounds every wait; generous, for a slow shared machine.
	waitFor = 30 * time.Second
	// lease is short so that the healthy holder renews during a flood.
	lease = 2 * time.Second
	// slack is how far above its start the elector's descriptors and
	// goroutines may stay after a flood.
	slack = 10
)

func startElector(t *testing.T) *electorproc.Process {
	t.Helper()
	p, err := electorproc.StartNofile(electorBin, nofile, waitFor, "--lease-duration", lease.String(), "--log-level", "info")
	require.NoError(t, err)
	t.Cleanup(func() {
		assert.True(t, p.Stop(waitFor), "elector did not stop on SIGTERM")
		assert.NoError(t, p.Err(), "elector exit status")
		if t.Failed() {
			t.Logf("elector log:\n%s", p.Log())
		}
	})
	return p
}

// metric reads one series of the elector's /metrics.
func metric(t *testing.T, p *electorproc.Process, series string) float64 {
	t.Helper()
	v, err := p.Metric(series)
	require.NoError(t, err)
	require.NotEmpty(t, v, "no series %s", series)
	f, err := strconv.ParseFloat(v, 64)
	require.NoError(t, err)
	return f
}

// fds counts the elector's open descriptors.
func fds(t *testing.T, p *electorproc.Process) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.Pid()))
	require.NoError(t, err)
	return len(ents)
}

// probe asks for path on a connection of its own and reports the status.
func probe(t *testing.T, p *electorproc.Process, path string) int {
	t.Helper()
	c := http.Client{Timeout: waitFor, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + p.Addr + path)
	require.NoError(t, err, "GET %s", path)
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// healthy is an SDK client next to the flood: it holds one lock throughout
// and, with loop, takes and gives back another again and again. Any error
// fails the test.
type healthy struct {
	t      *testing.T
	tr     mpsync.Transport
	holder *mpsync.Lock
	held   context.Context
	stop   chan struct{}
	done   chan struct{}
	cycles atomic.Int64
}

func startHealthy(t *testing.T, addr string, loop bool) *healthy {
	t.Helper()
	tr, err := mpsync.NewHTTPTransport(addr)
	require.NoError(t, err)
	h := &healthy{t: t, tr: tr, holder: newLock(t, tr, "held"), stop: make(chan struct{}), done: make(chan struct{})}
	h.held, err = h.holder.Lock(ctx(t))
	require.NoError(t, err)
	if !loop {
		close(h.done)
		return h
	}
	busy := newLock(t, tr, "busy")
	go func() {
		defer close(h.done)
		for {
			select {
			case <-h.stop:
				return
			default:
			}
			if _, err := busy.Lock(ctx(t)); err != nil {
				t.Errorf("healthy client: Lock: %v", err)
				return
			}
			if err := busy.Unlock(); err != nil {
				t.Errorf("healthy client: Unlock: %v", err)
				return
			}
			h.cycles.Add(1)
		}
	}()
	return h
}

// finish stops the loop and checks that the holder still holds and
// releases, and that a new lock is taken.
func (h *healthy) finish() {
	t := h.t
	t.Helper()
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	<-h.done
	assert.NoError(t, h.held.Err(), "the healthy holder lost its lock: %v", context.Cause(h.held))
	assert.NoError(t, h.holder.Unlock(), "the healthy holder's release")
	fresh := newLock(t, h.tr, "fresh")
	_, err := fresh.Lock(ctx(t))
	require.NoError(t, err, "a new Lock after the flood")
	assert.NoError(t, fresh.Unlock())
	h.tr.(interface{ CloseIdleConnections() }).CloseIdleConnections()
}

func newLock(t *testing.T, tr mpsync.Transport, name string) *mpsync.Lock {
	t.Helper()
	l, err := mpsync.NewLock(name, mpsync.WithTransport(tr), mpsync.WithIdentity("healthy"))
	require.NoError(t, err)
	return l
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return c
}

// rawRequest dials addr, sends req (when not empty) and reads the head of
// the answer: for a 200 stream its first line, else its whole body. The
// connection stays open; the caller closes it.
func rawRequest(addr, req string) (net.Conn, *http.Response, []byte, error) {
	c, err := net.DialTimeout("tcp", addr, waitFor)
	if err != nil {
		return nil, nil, nil, err
	}
	_ = c.SetDeadline(time.Now().Add(waitFor))
	if req != "" {
		if _, err := io.WriteString(c, req); err != nil {
			c.Close()
			return nil, nil, nil, err
		}
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, nil, nil, err
	}
	var body []byte
	if resp.StatusCode == http.StatusOK && resp.Header.Get("Content-Type") == "application/x-ndjson" {
		body, err = br.ReadBytes('\n')
	} else {
		body, err = io.ReadAll(resp.Body)
	}
	if err != nil {
		c.Close()
		return nil, nil, nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, resp, body, nil
}

// checkRefusal checks a 503 unavailable with a JSON body that names the
// limit's flag and closes the connection.
func checkRefusal(t *testing.T, resp *http.Response, body []byte) {
	t.Helper()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "body %s", body)
	assert.True(t, resp.Close, "a refusal closes its connection")
	var eb wire.ErrorBody
	if assert.NoError(t, json.Unmarshal(body, &eb), "body %s", body) {
		assert.Equal(t, wire.CodeUnavailable, eb.Code)
		assert.True(t, strings.Contains(eb.Error, "--max-streams") || strings.Contains(eb.Error, "--max-connections"), "message %q names no limit", eb.Error)
	}
}

// TestWatchFlood opens 2,000 watch streams on raw sockets and holds those
// the elector accepts: the rest get 503, the probes answer, the healthy
// client keeps locking, and closing the sockets gives back the elector's
// descriptors and goroutines.
func TestWatchFlood(t *testing.T) {
	p := startElector(t)
	h := startHealthy(t, p.Addr, true)
	watchCap := int(metric(t, p, `mpsync_elector_limit{limit="watch_streams"}`))
	fd0, g0 := fds(t, p), metric(t, p, "go_goroutines")

	const total, batch = 2000, 50
	var (
		mu      sync.Mutex
		held    []net.Conn
		refused int
	)
	for start := 0; start < total; start += batch {
		var wg sync.WaitGroup
		for i := start; i < start+batch; i++ {
			wg.Go(func() {
				c, resp, body, err := rawRequest(p.Addr, fmt.Sprintf("GET /v1/locks/w%d/watch HTTP/1.1\r\nHost: x\r\n\r\n", i%7))
				if !assert.NoError(t, err, "watch %d", i) {
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if resp.StatusCode == http.StatusOK {
					held = append(held, c)
					return
				}
				checkRefusal(t, resp, body)
				refused++
				c.Close()
			})
		}
		wg.Wait()
	}
	assert.Equal(t, watchCap, len(held), "watch streams accepted")
	assert.Equal(t, total-watchCap, refused, "watch streams refused")
	assert.Equal(t, float64(refused), metric(t, p, `mpsync_elector_refusals_total{limit="watch_streams"}`))
	assert.Equal(t, http.StatusOK, probe(t, p, "/healthz"))
	assert.Equal(t, http.StatusOK, probe(t, p, "/readyz"))
	fd1, g1 := fds(t, p), metric(t, p, "go_goroutines")
	cyclesDuring := h.cycles.Load()

	for _, c := range held {
		c.Close()
	}
	require.Eventually(t, func() bool { return fds(t, p) <= fd0+slack && metric(t, p, "go_goroutines") <= g0+slack },
		waitFor, 20*time.Millisecond, "descriptors and goroutines back near %d and %v", fd0, g0)
	h.finish()
	assert.Positive(t, cyclesDuring, "the healthy client locked and unlocked during the flood")
	t.Logf("watch flood at nofile %d: %d held, %d refused; descriptors %d -> %d -> %d, goroutines %v -> %v -> %v; healthy cycles %d",
		nofile, len(held), refused, fd0, fd1, fds(t, p), g0, g1, metric(t, p, "go_goroutines"), h.cycles.Load())
}

// TestIdleConnectionFlood fills every ordinary connection with idle
// keep-alive connections, then opens 300 more that send nothing, 50 at a
// time: those get a clean 503 (or, the few on the reserve, are closed after
// its short read timeout), the probes answer on the reserve, and the
// healthy holder keeps renewing over the connection it had.
func TestIdleConnectionFlood(t *testing.T) {
	p := startElector(t)
	h := startHealthy(t, p.Addr, false)
	// Existing holders keep their connections: let this one renew once,
	// so that it has its keep-alive connection before the flood.
	require.Eventually(t, func() bool { return metric(t, p, "mpsync_elector_renewal_duration_seconds_count") >= 1 },
		waitFor, 20*time.Millisecond)
	maxConns := int(metric(t, p, `mpsync_elector_limit{limit="connections"}`))
	fd0, g0 := fds(t, p), metric(t, p, "go_goroutines")

	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for int(metric(t, p, "mpsync_elector_connections")) < maxConns {
		c, resp, _, err := rawRequest(p.Addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		idle = append(idle, c)
	}
	const extra, batch, reserve = 300, 50, 10
	var mu sync.Mutex
	refused, closed := 0, 0
	for start := 0; start < extra; start += batch {
		var wg sync.WaitGroup
		for range batch {
			wg.Go(func() {
				c, resp, body, err := rawRequest(p.Addr, "")
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					closed++ // a reserve connection that sent nothing in time
					return
				}
				checkRefusal(t, resp, body)
				refused++
				c.Close()
			})
		}
		wg.Wait()
	}
	assert.LessOrEqual(t, closed, reserve*extra/batch, "connections closed without an answer: at most the reserve, once a batch")
	assert.Equal(t, extra, refused+closed)
	fd1 := fds(t, p)
	assert.Equal(t, http.StatusOK, probe(t, p, "/healthz"))
	assert.Equal(t, http.StatusOK, probe(t, p, "/readyz"))
	assert.Equal(t, float64(refused), metric(t, p, `mpsync_elector_refusals_total{limit="connections"}`))
	assert.GreaterOrEqual(t, metric(t, p, "mpsync_elector_connections"), float64(maxConns), "the idle connections are still open")
	h.finish()

	for _, c := range idle {
		c.Close()
	}
	idle = nil
	require.Eventually(t, func() bool { return fds(t, p) <= fd0+slack && metric(t, p, "go_goroutines") <= g0+slack },
		waitFor, 20*time.Millisecond, "descriptors and goroutines back near %d and %v", fd0, g0)
	t.Logf("idle flood at nofile %d: %d connections held, %d refused, %d closed on the reserve; descriptors %d -> %d -> %d",
		nofile, maxConns, refused, closed, fd0, fd1, fds(t, p))
}

// TestGarbageLimitFlags: bad limit flags and environment values, and limits
// past the descriptor limit, exit 2 with one line saying why.
func TestGarbageLimitFlags(t *testing.T) {
	tests := []struct {
		args    []string
		env     string
		mention string
	}{
		{[]string{"--max-streams=lots"}, "", "-max-streams"},
		{[]string{"--max-connections=-5"}, "", "-max-connections"},
		{[]string{"--max-connections=0"}, "", "-max-connections"},
		{[]string{"--shutdown-timeout=never"}, "", "-shutdown-timeout"},
		{nil, "MPSYNC_MAX_CONNECTIONS=1e3", "MPSYNC_MAX_CONNECTIONS"},
		{[]string{"--max-connections=1000"}, "", "ulimit -n"},
		{[]string{"--max-connections=100", "--max-streams=100"}, "", "below --max-connections"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(append(tt.args, tt.env), " "), func(t *testing.T) {
			cmd := exec.Command("sh", append([]string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, nofile), electorBin, "--listen", "127.0.0.1:0"}, tt.args...)...)
			if tt.env != "" {
				cmd.Env = append(os.Environ(), tt.env)
			}
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			require.ErrorAs(t, err, &ee, "output %s", out)
			assert.Equal(t, 2, ee.ExitCode(), "output %s", out)
			assert.Contains(t, string(out), tt.mention)
			assert.Equal(t, 1, strings.Count(strings.TrimSpace(string(out)), "\n")+1, "one line: %s", out)
		})
	}
}
