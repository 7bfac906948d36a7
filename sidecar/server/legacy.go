package server

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/wire"
)

// Metaparticle Sync's protocol (docs/DESIGN.md, "The wire protocols"), as its
// JavaScript, Python, Java, .NET and Go clients speak it:
//
//	GET /locks/{name}  200 while someone holds the lock, 404 while nobody does
//	PUT /locks/{name}  200 when the elector's own identity now holds it
//	                   (taken, or renewed for another TTL), 409 when another
//	                   holder (a v1 client, another elector) has it
//
// The clients GET, then PUT on 200 or 404, then every 10 s GET and PUT again
// while they hold it; they treat anything but 200 while holding as a loss.
// "Exists" therefore means "is held right now": after the elector's legacy
// lease expires or is revoked, GET answers 404 and the Python, Java and .NET
// clients notice the loss, where "exists" meaning "was ever held" would have
// had them silently PUT it back after a gap in which someone else may have
// held it.

// legacyGet serves GET /locks/{name}.
func (s *Server) legacyGet(w http.ResponseWriter, r *http.Request, name string) {
	if !checkName(w, name) {
		return
	}
	h, err := s.stateOf(r.Context(), name)
	if err != nil {
		s.backendError(w, r, err)
		return
	}
	if h.Identity == "" {
		writeError(w, http.StatusNotFound, wire.CodeNotFound, fmt.Sprintf("lock %q is not held", name))
		return
	}
	writeJSON(w, http.StatusOK, wire.LockState{Name: name, Holder: h.Identity, Token: h.Token})
}

// legacyLockFor returns the legacy lock of name for a PUT, which must call
// putDone when it ends.
func (s *Server) legacyLockFor(name string) *legacyLock {
	s.mu.Lock()
	defer s.mu.Unlock()
	ll := s.legacy[name]
	if ll == nil {
		ll = &legacyLock{name: name, turn: make(chan struct{}, 1)}
		s.legacy[name] = ll
	}
	ll.puts++
	return ll
}

// putDone ends a PUT's use of ll.
func (s *Server) putDone(ll *legacyLock) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ll.puts--
	s.dropLegacyLocked(ll)
}

// dropLegacyLocked forgets ll if it is not held and no PUT uses it.
func (s *Server) dropLegacyLocked(ll *legacyLock) {
	if ll.grant == nil && ll.puts == 0 && s.legacy[ll.name] == ll {
		delete(s.legacy, ll.name)
	}
}

// legacyPut serves PUT /locks/{name}. The request body, if any, is read and
// ignored.
func (s *Server) legacyPut(w http.ResponseWriter, r *http.Request, name string) {
	if !checkName(w, name) {
		return
	}
	if _, ok := readBody(w, r); !ok {
		return
	}
	ll := s.legacyLockFor(name)
	defer s.putDone(ll)
	// Take turns with other PUTs of this name, so that two clients of this
	// elector (which share its identity) both get 200, not one 200 and one
	// 409 from racing acquisitions.
	select {
	case ll.turn <- struct{}{}:
	case <-r.Context().Done():
		return
	}
	defer func() { <-ll.turn }()

	log := s.log.With(zap.String("name", name), zap.String("identity", s.cfg.Identity), zap.String("protocol", "legacy"))
	s.mu.Lock()
	g := ll.grant
	s.mu.Unlock()
	if g != nil {
		start := time.Now()
		_, err := g.Renew(r.Context())
		s.m.renewal.Observe(time.Since(start).Seconds())
		if err == nil {
			s.writeLegacyHeld(w, name, g)
			return
		}
		if !errors.Is(err, core.ErrLockLost) {
			s.backendError(w, r, err)
			return
		}
		// Lost since the last PUT; its watcher forgets it. Take it
		// afresh below, as Metaparticle Sync's elector would.
		log.Info("legacy lease had ended; acquiring again", zap.Error(err))
	}

	if !s.enter() {
		writeError(w, http.StatusServiceUnavailable, wire.CodeUnavailable, "elector shutting down")
		return
	}
	g, err := s.b.Acquire(r.Context(), core.Request{Name: name, Identity: s.cfg.Identity, Lease: s.cfg.LegacyTTL, Legacy: true})
	if err != nil {
		s.leave()
		s.backendError(w, r, err)
		return
	}
	s.mu.Lock()
	ll.grant = g
	s.mu.Unlock()
	s.m.acquisitions.WithLabelValues("legacy").Inc()
	s.m.held.Inc()
	log = log.With(zap.String("session", g.Session()), zap.Uint64("token", g.Token()))
	log.Info("lock acquired", zap.Duration("ttl", s.cfg.LegacyTTL))
	go s.holdLegacy(ll, g, log) // owns the enter() above
	s.writeLegacyHeld(w, name, g)
}

func (s *Server) writeLegacyHeld(w http.ResponseWriter, name string, g backend.Grant) {
	writeJSON(w, http.StatusOK, wire.LockState{Name: name, Holder: s.cfg.Identity, Token: g.Token()})
}

// holdLegacy waits for the end of a legacy grant: a loss (not renewed within
// the TTL, revoked) or Shutdown, which releases it. Then it forgets it.
func (s *Server) holdLegacy(ll *legacyLock, g backend.Grant, log *zap.Logger) {
	defer s.leave()
	select {
	case <-g.Done():
		s.lost(g, log)
	case <-s.stopCtx.Done():
		s.m.releases.WithLabelValues("shutdown").Inc()
		s.releaseFor(g, log, "elector shutting down")
	}
	s.m.held.Dec()
	s.mu.Lock()
	if ll.grant == g {
		ll.grant = nil
	}
	s.dropLegacyLocked(ll)
	s.mu.Unlock()
}
