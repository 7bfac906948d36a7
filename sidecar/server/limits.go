package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/mpsync/mpsync/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
)

// Descriptor budget behind the default Limits.
const (
	// ReservedDescriptors are the file descriptors LimitsFor keeps for
	// everything but client connections: standard streams, the listener,
	// the poller, connections to the API server, /proc reads of the
	// process collector, logs.
	ReservedDescriptors = 64
	// refusers is how many refused connections may be in their lingering
	// close at once (each holds its descriptor for at most refuseLinger);
	// past that a refused connection is closed at once.
	refusers = 16
	// refuseLinger bounds the write of a refusal and the wait for the
	// client to read it.
	refuseLinger = time.Second
	// refuseWriteTimeout bounds the write of a refusal without lingering,
	// done on the accept loop.
	refuseWriteTimeout = 50 * time.Millisecond
	// reserveReadTimeout bounds how long a connection from the reserve may
	// take to send its one request.
	reserveReadTimeout = 2 * time.Second
	// DefaultMaxConnections is the most connections LimitsFor allows,
	// however high the descriptor limit: an elector serves one pod's
	// processes, and every connection costs memory.
	DefaultMaxConnections = 1 << 15
)

// Labels of mpsync_elector_refusals_total and mpsync_elector_limit.
const (
	limitConnections    = "connections"
	limitAcquireStreams = "acquire_streams"
	limitWatchStreams   = "watch_streams"
)

var errDescriptors = errors.New("server: descriptor limit too low")

// Limits caps what the Server serves at once, so that a flood of clients
// cannot take the descriptors its probes and its existing holders need.
//
// MaxConnections connections are served as usual. A few more, the reserve
// (ReserveFor), are served one short request each and then closed: health,
// readiness, metrics, renew, release, lock state and the legacy protocol,
// so that those keep working with every ordinary connection taken. Past
// that, a connection is answered with a bare 503 and closed. MaxStreams
// acquire and watch streams are open at once, half of them (rounded up) for
// acquires, held or waiting, and half for watches, so that watches cannot
// keep a lock from being taken; a stream past its half gets 503 unavailable
// and its connection is closed. MaxStreams is below MaxConnections, which
// keeps connections free for renewals and releases.
type Limits struct {
	MaxConnections int
	MaxStreams     int
}

// ReserveFor returns how many connections past maxConnections are kept for
// short requests: a sixteenth, at least 8 and at most 256.
func ReserveFor(maxConnections int) int {
	return min(max(maxConnections/16, 8), 256)
}

// Descriptors returns the file descriptors l needs: its connections, the
// reserve, the connections being refused, and ReservedDescriptors.
func (l Limits) Descriptors() int {
	return l.MaxConnections + ReserveFor(l.MaxConnections) + refusers + ReservedDescriptors
}

func (l Limits) acquireStreams() int64 { return int64(l.MaxStreams - l.MaxStreams/2) }
func (l Limits) watchStreams() int64   { return int64(l.MaxStreams / 2) }

// Validate reports what is wrong with l.
func (l Limits) Validate() error {
	switch {
	case l.MaxStreams < 2:
		return fmt.Errorf("server: at most %d streams: want at least 2 (one acquire, one watch)", l.MaxStreams)
	case l.MaxConnections <= l.MaxStreams:
		return fmt.Errorf("server: at most %d connections for %d streams: want more connections than streams, to leave room for renewals and releases",
			l.MaxConnections, l.MaxStreams)
	}
	return nil
}

// DescriptorLimit returns the soft RLIMIT_NOFILE of this process: the most
// file descriptors it may have open. Go raises the soft limit to the hard
// one at start, so this is the hard limit unless something lowered it.
func DescriptorLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("server: reading the descriptor limit: %w", err)
	}
	return rl.Cur, nil
}

// LimitsFor returns the default Limits for a process that may open nofile
// descriptors: every descriptor not in ReservedDescriptors, the refusals
// and the reserve is a connection (at most DefaultMaxConnections), and
// three quarters of the connections may be streams. At 1,024 descriptors
// that is 885 connections and 663 streams; at 256, 165 and 123.
func LimitsFor(nofile uint64) (Limits, error) {
	avail := int(min(nofile, 1<<24)) - ReservedDescriptors - refusers
	conns := min(avail-ReserveFor(avail), DefaultMaxConnections)
	l := Limits{MaxConnections: conns, MaxStreams: conns * 3 / 4}
	if l.Validate() != nil {
		return Limits{}, fmt.Errorf("%w: %d descriptors leave no room for connections; the elector needs at least %d (raise ulimit -n)",
			errDescriptors, nofile, Limits{MaxConnections: 4, MaxStreams: 3}.Descriptors())
	}
	return l, nil
}

// limitMetrics are the series of the limits.
type limitMetrics struct {
	limit       *prometheus.GaugeVec   // by limit: the cap
	refusals    *prometheus.CounterVec // by limit
	connections prometheus.Gauge
}

func newLimitMetrics(reg prometheus.Registerer, l Limits) (*limitMetrics, error) {
	const ns, sub = "mpsync", "elector"
	m := &limitMetrics{
		limit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "limit",
			Help: "Caps on what the elector serves at once, by limit (connections, acquire_streams, watch_streams); --max-connections and --max-streams set them.",
		}, []string{"limit"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "refusals_total",
			Help: "Connections and streams refused with 503 because a limit was reached, by limit (connections, acquire_streams, watch_streams).",
		}, []string{"limit"}),
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "connections",
			Help: "Open client connections, the reserve for short requests included.",
		}),
	}
	m.limit.WithLabelValues(limitConnections).Set(float64(l.MaxConnections))
	m.limit.WithLabelValues(limitAcquireStreams).Set(float64(l.acquireStreams()))
	m.limit.WithLabelValues(limitWatchStreams).Set(float64(l.watchStreams()))
	for _, x := range []string{limitConnections, limitAcquireStreams, limitWatchStreams} {
		m.refusals.WithLabelValues(x)
	}
	for _, c := range []prometheus.Collector{m.limit, m.refusals, m.connections} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// streamSlots hands out the stream slots of Limits.
type streamSlots struct {
	acquire, watch *semaphore.Weighted
}

func newStreamSlots(l Limits) streamSlots {
	return streamSlots{acquire: semaphore.NewWeighted(l.acquireStreams()), watch: semaphore.NewWeighted(l.watchStreams())}
}

// admitStream takes a stream slot of the kind (limitAcquireStreams or
// limitWatchStreams) for the request, or answers 503 unavailable, closes
// the connection and reports false. A request on a reserve connection
// never gets one. The caller calls done when the stream ends.
func (s *Server) admitStream(w http.ResponseWriter, r *http.Request, kind string) (done func(), ok bool) {
	refuse := func(limit, msg string) (func(), bool) {
		s.lm.refusals.WithLabelValues(limit).Inc()
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusServiceUnavailable, wire.CodeUnavailable, msg)
		return nil, false
	}
	if onReserve(r) {
		return refuse(limitConnections, fmt.Sprintf(
			"connection limit reached: %d connections are open (--max-connections); this one is held back for short requests "+
				"(health, readiness, metrics, renew, release, legacy) and cannot carry a stream; retry later, or raise --max-connections and the descriptor limit (ulimit -n)",
			s.cfg.Limits.MaxConnections))
	}
	sem, n, what := s.slots.acquire, s.cfg.Limits.acquireStreams(), "acquire streams (held or waiting)"
	if kind == limitWatchStreams {
		sem, n, what = s.slots.watch, s.cfg.Limits.watchStreams(), "watch streams"
	}
	if !sem.TryAcquire(1) {
		return refuse(kind, fmt.Sprintf(
			"stream limit reached: %d %s are open, half of --max-streams %d; retry later, or raise --max-streams (and the descriptor limit, ulimit -n, it is derived from)",
			n, what, s.cfg.Limits.MaxStreams))
	}
	return func() { sem.Release(1) }, true
}

// markReserve is the http.Server's ConnContext: it marks the context of a
// reserve connection.
func markReserve(ctx context.Context, c net.Conn) context.Context {
	if lc, ok := c.(*limitConn); ok && !lc.reserveUntil.IsZero() {
		return context.WithValue(ctx, reserveKey{}, true)
	}
	return ctx
}

// reserveKey marks, in a connection's context, a connection of the reserve.
type reserveKey struct{}

// onReserve reports whether r came on a connection of the reserve.
func onReserve(r *http.Request) bool {
	v, _ := r.Context().Value(reserveKey{}).(bool)
	return v
}

// closeReserve makes the answer to a request on a reserve connection close
// it, so that the reserve is free for the next one.
func closeReserve(w http.ResponseWriter, r *http.Request) {
	if onReserve(r) {
		w.Header().Set("Connection", "close")
	}
}

// Listener returns ln with the connection limit of the Server's Limits:
// MaxConnections connections, then the reserve, then a bare 503 with a
// JSON error body and Connection: close for each connection past those,
// counted in mpsync_elector_refusals_total{limit="connections"}. Every
// Listener of one Server draws on the same limit, so that serving two
// addresses does not double it. Serve it with the http.Server of
// HTTPServer, which tells reserve connections apart. Closing it waits for
// its refusals under way (at most a second).
func (s *Server) Listener(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, b: s.conns}
}

// connBudget is the connection limit that a Server's listeners share.
type connBudget struct {
	max, reserve int
	m            *limitMetrics
	refusers     *semaphore.Weighted // lingering refusals

	mu   sync.Mutex
	open int
}

func newConnBudget(l Limits, m *limitMetrics) *connBudget {
	return &connBudget{
		max:      l.MaxConnections,
		reserve:  ReserveFor(l.MaxConnections),
		m:        m,
		refusers: semaphore.NewWeighted(refusers),
	}
}

// take counts one more connection: an ordinary one, one of the reserve, or
// (ok false) none, past both.
func (b *connBudget) take() (reserve, ok bool) {
	b.mu.Lock()
	open := b.open
	if open < b.max+b.reserve {
		b.open++
	}
	b.mu.Unlock()
	if open >= b.max+b.reserve {
		return false, false
	}
	b.m.connections.Inc()
	return open >= b.max, true
}

// put gives back a connection take counted.
func (b *connBudget) put() {
	b.mu.Lock()
	b.open--
	b.mu.Unlock()
	b.m.connections.Dec()
}

type limitListener struct {
	net.Listener
	b        *connBudget
	refusing sync.WaitGroup
}

// Accept returns the next connection within the limit, refusing those past
// it.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		reserve, ok := l.b.take()
		switch {
		case ok && !reserve:
			return &limitConn{Conn: c, b: l.b}, nil
		case ok:
			return &limitConn{Conn: c, b: l.b, reserveUntil: time.Now().Add(reserveReadTimeout)}, nil
		}
		l.refuse(c)
	}
}

// refuseBody is the whole answer to a connection past the limit.
var refuseBody = func() string {
	body := `{"error":"connection limit reached: the elector serves its --max-connections connections and their reserve; retry later, or raise --max-connections and the descriptor limit (ulimit -n)","code":"` +
		wire.CodeUnavailable + `"}` + "\n"
	return fmt.Sprintf("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"+
		"Connection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}()

// refuse answers c with refuseBody and closes it: it shuts down the sending
// side and waits a moment for the client to close, so that the client reads
// the answer rather than a reset (which closing with unread bytes from the
// client would send). With refusers already lingering it writes and closes
// at once.
func (l *limitListener) refuse(c net.Conn) {
	l.b.m.refusals.WithLabelValues(limitConnections).Inc()
	if !l.b.refusers.TryAcquire(1) {
		// No lingering: write (a fresh socket's buffer takes it at once,
		// and the deadline bounds the accept loop's wait) and close.
		_ = c.SetWriteDeadline(time.Now().Add(refuseWriteTimeout))
		_, _ = c.Write([]byte(refuseBody))
		_ = c.Close()
		return
	}
	l.refusing.Add(1)
	go func() {
		defer l.refusing.Done()
		defer l.b.refusers.Release(1)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(refuseLinger))
		if _, err := c.Write([]byte(refuseBody)); err != nil {
			return
		}
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		var buf [512]byte
		for {
			if _, err := c.Read(buf[:]); err != nil {
				return
			}
		}
	}()
}

// Close closes the listener and waits for the refusals under way.
func (l *limitListener) Close() error {
	err := l.Listener.Close()
	l.refusing.Wait()
	return err
}

// limitConn is a connection counted against the limit until it closes.
type limitConn struct {
	net.Conn
	b            *connBudget
	reserveUntil time.Time // zero for an ordinary connection
	once         sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.b.put)
	return err
}

// CloseWrite lets net/http shut down the sending side before it closes.
func (c *limitConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// SetReadDeadline keeps the read deadlines net/http sets, for the request
// headers and body, on a reserve connection within reserveReadTimeout of
// its accept. A zero deadline (none) stays zero.
func (c *limitConn) SetReadDeadline(t time.Time) error {
	if !c.reserveUntil.IsZero() && !t.IsZero() && t.After(c.reserveUntil) {
		t = c.reserveUntil
	}
	return c.Conn.SetReadDeadline(t)
}
