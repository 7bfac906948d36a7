// Package server is the elector's HTTP front end: the v1 push protocol that
// the SDK's transport speaks, Metaparticle Sync's legacy GET/PUT protocol, health,
// readiness and Prometheus metrics, all on one handler over any
// backend.Backend. PROTOCOL.md at the top of the repository documents the
// wire format.
package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/wire"
)

// Defaults of Config's zero values.
const (
	// DefaultLegacyTTL is the lease of a lock taken through the legacy
	// protocol: Metaparticle Sync's 30 s, renewed by its clients every 10 s.
	DefaultLegacyTTL = 30 * time.Second
	// DefaultReadHeaderTimeout bounds how long a client may take to send
	// its request headers.
	DefaultReadHeaderTimeout = 5 * time.Second
	// DefaultReadTimeout bounds how long a client may take to send a whole
	// request, body included. It does not limit how long a response
	// stream lasts: once the body is read, net/http clears the deadline.
	DefaultReadTimeout = 10 * time.Second
	// DefaultIdleTimeout closes keep-alive connections idle this long.
	DefaultIdleTimeout = 2 * time.Minute
)

const (
	// streamWriteTimeout bounds each write to a stream: a client that reads
	// nothing for this long loses its stream (and, for an acquire stream,
	// its lock, exactly as if it had closed the connection).
	streamWriteTimeout = 10 * time.Second
	// finalWriteTimeout bounds the last line written while shutting down.
	finalWriteTimeout = 500 * time.Millisecond
	// cleanupTimeout bounds a release done on someone's behalf (client
	// gone) with a fresh context; at shutdown, Shutdown's context bounds
	// it instead (cleanupContext).
	cleanupTimeout = time.Second
)

// Revoker is implemented by backends that can take a lock away from its
// holder as a real loss would (the memory backend does). The debug endpoint
// POST /debug/revoke/{name} needs it.
type Revoker interface {
	// Revoke ends the current lease on name with core.ErrRevoked and
	// reports whether there was one.
	Revoke(name string) bool
}

// Config configures a Server. Backend and Identity are required.
type Config struct {
	// Backend keeps the locks. The Server closes it in Shutdown.
	Backend backend.Backend
	// Identity is the elector's own identity: the holder of every lock
	// taken through the legacy protocol.
	Identity string
	// Logger receives structured logs; nil means none.
	Logger *zap.Logger
	// Debug enables POST /debug/revoke/{name}. The backend must implement
	// Revoker.
	Debug bool
	// Profiling serves Go's runtime profiles (package net/http/pprof:
	// heap, goroutine, CPU and the rest) under GET /debug/pprof/. Off
	// by default: a profile shows what the process holds in memory, and
	// a CPU profile or trace costs CPU while it runs.
	Profiling bool
	// LegacyTTL is the lease of legacy locks; 0 means DefaultLegacyTTL. It
	// must be at least core.MinLease.
	LegacyTTL time.Duration
	// ReadHeaderTimeout, ReadTimeout and IdleTimeout configure the
	// http.Server that HTTPServer returns; 0 means the Default values.
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	IdleTimeout       time.Duration
	// Limits caps connections and streams; the zero value means
	// LimitsFor the process's DescriptorLimit. Serve through Listener for
	// the connection limit.
	Limits Limits
}

// Server is the elector's HTTP handler. Create it with New; it is safe for
// concurrent use. Shutdown ends it.
type Server struct {
	cfg     Config
	b       backend.Backend
	revoker Revoker
	log     *zap.Logger
	m       *metrics
	metrics http.Handler
	lm      *limitMetrics
	conns   *connBudget // shared by every Listener
	slots   streamSlots

	// stackStart is the size of a new goroutine's stack (stacks.get; tests
	// replace it before serving).
	stackStart func() uint64
	stacks     stackStarts

	stopCtx context.Context // cancelled when Shutdown starts
	// shutdownCtx is Shutdown's context, set (under mu) before stopCtx
	// ends: releases at shutdown are bounded by it (cleanupContext).
	shutdownCtx context.Context
	stop        context.CancelFunc

	mu       sync.Mutex
	stopping bool
	active   sync.WaitGroup // streams, waits and legacy grants begun before stopping
	sessions map[string]*session
	legacy   map[string]*legacyLock
	done     chan struct{} // closed when Shutdown has finished
	closeErr error
}

// legacyLock is the elector's own hold on a lock taken through the legacy
// protocol. It is kept in Server.legacy only while it is held or a PUT of
// its name is under way, so that the map shrinks back.
type legacyLock struct {
	name  string
	turn  chan struct{} // one slot: PUTs of one name take turns
	grant backend.Grant // guarded by Server.mu; nil when not held
	puts  int           // guarded by Server.mu; PUTs between legacyLockFor and putDone
}

// New returns a Server over cfg.Backend. It registers its metrics, and the
// Go and process collectors, in a registry of its own that /metrics serves.
func New(cfg Config) (*Server, error) {
	if cfg.Backend == nil {
		return nil, errors.New("server: no backend")
	}
	if err := core.ValidateIdentity(cfg.Identity); err != nil {
		return nil, fmt.Errorf("server: Config.Identity: %w", err)
	}
	if cfg.LegacyTTL == 0 {
		cfg.LegacyTTL = DefaultLegacyTTL
	}
	if cfg.LegacyTTL < core.MinLease {
		return nil, fmt.Errorf("server: legacy TTL %v is shorter than %v", cfg.LegacyTTL, core.MinLease)
	}
	if cfg.ReadHeaderTimeout == 0 {
		cfg.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if cfg.ReadTimeout == 0 {
		cfg.ReadTimeout = DefaultReadTimeout
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.Limits == (Limits{}) {
		nofile, err := DescriptorLimit()
		if err != nil {
			return nil, err
		}
		if cfg.Limits, err = LimitsFor(nofile); err != nil {
			return nil, err
		}
	}
	if err := cfg.Limits.Validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		b:        cfg.Backend,
		log:      cfg.Logger,
		sessions: make(map[string]*session),
		legacy:   make(map[string]*legacyLock),
		done:     make(chan struct{}),
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if cfg.Debug {
		r, ok := cfg.Backend.(Revoker)
		if !ok {
			return nil, fmt.Errorf("server: debug endpoints need a backend that can revoke, and %T cannot", cfg.Backend)
		}
		s.revoker = r
	}
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s.m = m
	if s.lm, err = newLimitMetrics(reg, cfg.Limits); err != nil {
		return nil, err
	}
	s.slots = newStreamSlots(cfg.Limits)
	s.conns = newConnBudget(cfg.Limits, s.lm)
	s.metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: zap.NewStdLog(s.log)})
	s.stopCtx, s.stop = context.WithCancel(context.Background())
	s.stackStart = s.stacks.get
	return s, nil
}

// HTTPServer returns an http.Server that serves s (through Listener, for
// the connection limit) with the elector's timeouts: ReadHeaderTimeout and ReadTimeout against slow or stalled
// clients, IdleTimeout for keep-alive connections, and no WriteTimeout,
// because acquire and watch streams last as long as the lock or the watch.
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{
		Handler:           s,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ConnContext:       markReserve,
		ErrorLog:          zap.NewStdLog(s.log.Named("http")),
	}
}

// enter registers one unit of work (a stream, a wait, a legacy grant) that
// Shutdown must wait for. It reports false once Shutdown has begun.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	s.active.Add(1)
	return true
}

func (s *Server) leave() { s.active.Done() }

// Shutdown ends the Server: every acquire stream gets a lost event saying
// the elector is shutting down and its lock is released, waiting acquires
// fail with 503, watch streams end with an error event, legacy locks are
// released, and then the backend is closed. New requests that would take or
// watch a lock get 503. Shutdown returns when all that is done or ctx ends;
// calling it again waits for the first call.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	first := !s.stopping
	s.stopping = true
	if first {
		s.shutdownCtx = ctx
	}
	s.mu.Unlock()
	if !first {
		select {
		case <-s.done:
			return s.closeErr
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.log.Info("shutting down: ending streams and releasing every lock")
	s.stop()
	s.wakeHeld()
	idle := make(chan struct{})
	go func() {
		s.active.Wait()
		close(idle)
	}()
	select {
	case <-idle:
	case <-ctx.Done():
		s.log.Warn("shutdown: streams still open at the deadline; closing the backend under them")
	}
	err := s.b.Close(ctx)
	if err != nil {
		err = fmt.Errorf("server: closing the backend: %w", err)
	}
	select {
	case <-idle:
	case <-ctx.Done():
		if err == nil {
			err = ctx.Err()
		}
	}
	s.closeErr = err
	close(s.done)
	return err
}

// ServeHTTP routes a request. Unknown paths get 404 and wrong methods 405
// with an Allow header, both with a JSON error body.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	closeReserve(w, r)
	allow, name, ok := s.route(r.URL)
	if !ok {
		writeError(w, http.StatusNotFound, wire.CodeNotFound, fmt.Sprintf("no such endpoint: %s", r.URL.Path))
		return
	}
	h, ok := allowed(allow, r.Method)
	if !ok {
		w.Header().Set("Allow", strings.Join(allow.methods(), ", "))
		writeError(w, http.StatusMethodNotAllowed, wire.CodeMethodNotAllowed,
			fmt.Sprintf("method %s not allowed on %s; allowed: %s", r.Method, r.URL.Path, strings.Join(allow.methods(), ", ")))
		return
	}
	h(w, r, name)
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, name string)

// methodSet maps each allowed method to its handler, in the order given.
type methodSet []struct {
	method string
	h      handlerFunc
}

func (m methodSet) methods() []string {
	out := make([]string, len(m))
	for i, x := range m {
		out[i] = x.method
	}
	return out
}

func allowed(m methodSet, method string) (handlerFunc, bool) {
	for _, x := range m {
		if x.method == method {
			return x.h, true
		}
	}
	return nil, false
}

func get(h handlerFunc) methodSet {
	return methodSet{{http.MethodGet, h}, {http.MethodHead, h}}
}

func post(h handlerFunc) methodSet {
	return methodSet{{http.MethodPost, h}}
}

// route finds the endpoint of u. The lock name is the path segment
// unescaped, so "a%2Fb" names "a/b", which then fails validation rather than
// matching another route.
func (s *Server) route(u *url.URL) (m methodSet, name string, ok bool) {
	segs := strings.Split(strings.TrimPrefix(u.EscapedPath(), "/"), "/")
	seg := func(i int) string {
		if i < len(segs) {
			v, err := url.PathUnescape(segs[i])
			if err != nil {
				return segs[i]
			}
			return v
		}
		return ""
	}
	switch {
	case len(segs) == 1 && segs[0] == "healthz":
		return get(s.healthz), "", true
	case len(segs) == 1 && segs[0] == "readyz":
		return get(s.readyz), "", true
	case len(segs) == 1 && segs[0] == "metrics":
		return get(s.serveMetrics), "", true
	case len(segs) == 3 && segs[0] == "v1" && segs[1] == "locks":
		return get(s.v1Get), seg(2), true
	case len(segs) == 4 && segs[0] == "v1" && segs[1] == "locks":
		switch segs[3] {
		case "acquire":
			return post(s.acquire), seg(2), true
		case "renew":
			return post(s.renew), seg(2), true
		case "release":
			return post(s.release), seg(2), true
		case "watch":
			return methodSet{{http.MethodGet, s.watch}}, seg(2), true
		}
	case len(segs) == 2 && segs[0] == "locks":
		return methodSet{{http.MethodGet, s.legacyGet}, {http.MethodHead, s.legacyGet}, {http.MethodPut, s.legacyPut}}, seg(1), true
	case len(segs) == 3 && segs[0] == "debug" && segs[1] == "revoke" && s.revoker != nil:
		return post(s.debugRevoke), seg(2), true
	case len(segs) >= 2 && segs[0] == "debug" && segs[1] == "pprof" && s.cfg.Profiling:
		return get(serveProfile), "", true
	}
	return nil, "", false
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request, _ string) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request, _ string) {
	if s.stopCtx.Err() != nil {
		writeError(w, http.StatusServiceUnavailable, wire.CodeUnavailable, "elector shutting down")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.b.Ready(ctx); err != nil {
		writeError(w, http.StatusServiceUnavailable, wire.CodeUnavailable, fmt.Sprintf("backend not ready: %v", err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request, _ string) {
	s.metrics.ServeHTTP(w, r)
}

func (s *Server) debugRevoke(w http.ResponseWriter, r *http.Request, name string) {
	if !checkName(w, name) {
		return
	}
	if _, ok := readBody(w, r); !ok {
		return
	}
	revoked := s.revoker.Revoke(name)
	s.log.Info("debug revoke", zap.String("name", name), zap.Bool("revoked", revoked))
	writeJSON(w, http.StatusOK, map[string]bool{"revoked": revoked})
}

// stateOf returns the current state of name, for the GET endpoints: the
// first state a Watch reports. (A refused acquisition needs no look-up: the
// backend's *core.LockedError names the holder.)
func (s *Server) stateOf(ctx context.Context, name string) (core.Holder, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	first := make(chan core.Holder, 1)
	err := s.b.Watch(ctx, name, func(h core.Holder) {
		select {
		case first <- h:
		default:
		}
		cancel()
	})
	select {
	case h := <-first:
		return h, nil
	default:
	}
	if err == nil {
		err = errors.New("backend watch ended without a state")
	}
	return core.Holder{}, err
}

// lost records the loss of g, whose lease ended without a release (a v1
// stream's or a legacy lock's): it classifies why, counts it and logs it,
// and returns the reason and the error that says why.
func (s *Server) lost(g backend.Grant, log *zap.Logger) (reason string, err error) {
	err = g.Err()
	if err == nil {
		err = errors.New("lease ended by the backend")
	}
	switch {
	case errors.Is(err, core.ErrRevoked):
		reason = wire.ReasonRevoked
	case errors.Is(err, core.ErrExpired):
		reason = wire.ReasonExpired
	case s.stopCtx.Err() != nil:
		reason = wire.ReasonShutdown
	default:
		reason = wire.ReasonBackend
	}
	s.m.losses.WithLabelValues(reason).Inc()
	log.Warn("lock lost", zap.String("reason", reason), zap.Error(err))
	return reason, err
}

// releaseFor releases g on someone's behalf (the client went away, the
// elector is shutting down), with a fresh bounded context, and logs why.
func (s *Server) releaseFor(g backend.Grant, log *zap.Logger, why string) {
	ctx, cancel := s.cleanupContext()
	defer cancel()
	began := time.Now()
	if err := g.Release(ctx); err != nil {
		log.Warn("release failed; the lease will expire", zap.String("why", why), zap.Error(err))
		return
	}
	log.Info("lock released", zap.String("why", why), zap.Time("began", began))
}
