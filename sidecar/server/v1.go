package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/transport"
)

// v1Get answers GET /v1/locks/{name} with the lock's state.
func (s *Server) v1Get(w http.ResponseWriter, r *http.Request, name string) {
	if !checkName(w, name) {
		return
	}
	h, err := s.holderOf(r.Context(), name)
	if err != nil {
		s.backendError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, transport.LockState{Name: name, Holder: h.Identity, Token: h.Token})
}

// backendError answers a failed backend call, unless the client has gone.
func (s *Server) backendError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client has gone; nobody reads an answer
	}
	status, code, msg := s.classify(err)
	writeError(w, status, code, msg)
}

// classify gives the status, code and message that answer a failed backend
// call: as a status line before a stream starts, as an error line after.
func (s *Server) classify(err error) (status int, code, msg string) {
	switch {
	case errors.Is(err, core.ErrInvalidName):
		return http.StatusBadRequest, transport.CodeInvalidName, err.Error()
	case errors.Is(err, core.ErrLocked):
		return http.StatusConflict, transport.CodeLocked, err.Error()
	case s.stopCtx.Err() != nil || errors.Is(err, core.ErrClosed):
		return http.StatusServiceUnavailable, transport.CodeUnavailable, "elector shutting down"
	}
	return http.StatusServiceUnavailable, transport.CodeUnavailable, fmt.Sprintf("backend: %v", err)
}

// waitingAfter is how long an acquire that waits may go without a grant
// before the elector answers 200 and a waiting line, so that heartbeats can
// flow (and show whether the client is still there) while it waits.
const waitingAfter = 100 * time.Millisecond

// acquire serves POST /v1/locks/{name}/acquire: it takes the lock, then
// streams the acquired event and, when the lease ends, one released or lost
// event, with heartbeats while it waits and while it holds. The lock is
// released as soon as the client goes away.
func (s *Server) acquire(w http.ResponseWriter, r *http.Request, name string) {
	received := time.Now()
	if !checkName(w, name) {
		return
	}
	var req transport.AcquireRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if err := core.ValidateIdentity(req.Identity); err != nil {
		writeError(w, http.StatusBadRequest, transport.CodeBadRequest, fmt.Sprintf(`"identity": %v`, err))
		return
	}
	done, ok := s.admitStream(w, r, limitAcquireStreams)
	if !ok {
		return
	}
	defer done()
	if !s.enter() {
		writeError(w, http.StatusServiceUnavailable, transport.CodeUnavailable, "elector shutting down")
		return
	}
	defer s.leave()

	// ctx ends when the client goes away (its request ends, or a write to
	// it fails) or the elector shuts down.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(s.stopCtx, cancel)()
	st := newStream(w)
	defer st.end()
	gone := func() bool { return r.Context().Err() != nil || st.failed() }

	log := s.log.With(zap.String("name", name), zap.String("identity", req.Identity))
	g, err := s.await(ctx, cancel, st, core.Request{Name: name, Identity: req.Identity, Wait: req.Wait}, log)
	if err != nil {
		if gone() {
			log.Debug("client went away while waiting")
			return
		}
		s.acquireFailed(w, r, st, name, err)
		return
	}
	if ctx.Err() != nil || s.stopCtx.Err() != nil {
		// Granted as the client left or the elector began to stop (a
		// holder released at shutdown hands the lock to the next waiter):
		// give it straight back.
		s.releaseFor(g, log, "granted while the client left or the elector stopped")
		if !gone() {
			s.acquireFailed(w, r, st, name, core.ErrClosed)
		}
		return
	}
	validity, err := s.validityOf(ctx, g, received)
	if err != nil {
		s.releaseFor(g, log, "renew after wait failed")
		if !gone() {
			s.acquireFailed(w, r, st, name, fmt.Errorf("lease lost right after it was granted: %w", err))
		}
		return
	}
	s.hold(r, st, g, name, validity, log)
}

// await runs the backend's Acquire of req. While a waiting request has no
// grant, it answers 200 and a waiting line after waitingAfter, then a
// heartbeat every transport.HeartbeatInterval; a write that fails (the
// client has gone) cancels the wait. It returns what Acquire returned.
func (s *Server) await(ctx context.Context, cancel context.CancelFunc, st *stream, req core.Request, log *zap.Logger) (backend.Grant, error) {
	if !req.Wait {
		return s.b.Acquire(ctx, req)
	}
	s.m.waiters.Inc()
	defer s.m.waiters.Dec()
	type result struct {
		g   backend.Grant
		err error
	}
	done := make(chan result, 1)
	go func() {
		g, err := s.b.Acquire(ctx, req)
		done <- result{g, err}
	}()
	waiting := time.NewTimer(waitingAfter)
	defer waiting.Stop()
	tick := time.NewTicker(transport.HeartbeatInterval)
	defer tick.Stop()
	for {
		var err error
		select {
		case res := <-done:
			return res.g, res.err
		case <-waiting.C:
			err = st.send(transport.Event{Type: transport.EventWaiting}, streamWriteTimeout)
			log.Debug("waiting for the lock", zap.Error(err))
		case <-tick.C:
			if st.started {
				err = st.heartbeat()
			}
		}
		if err != nil {
			cancel() // the client has gone: drop the wait
			res := <-done
			return res.g, res.err
		}
	}
}

// acquireFailed answers an acquire whose grant failed: with a status (and
// for 409 the holder) if the stream has not started, or else with an error
// line carrying the code that status would have.
func (s *Server) acquireFailed(w http.ResponseWriter, r *http.Request, st *stream, name string, err error) {
	status, code, msg := s.classify(err)
	body := transport.ErrorBody{Error: msg, Code: code}
	if code == transport.CodeLocked {
		if h, herr := s.holderOf(r.Context(), name); herr == nil {
			body.Holder = h.Identity
		}
	}
	if !st.started {
		writeJSON(w, status, body)
		return
	}
	_ = st.send(transport.Event{Type: transport.EventError, Code: body.Code, Error: body.Error, Holder: body.Holder}, finalWriteTimeout)
}

// validityOf is the validity to tell the holder of g, counted from when the
// client sent the request (which the elector received at received). A
// backend.Waited grant's counts from the write that granted it: add the
// time waited for that write (shrunk by the drift bound, as it is measured
// on the elector's clock). Another grant's counts from the Acquire call:
// right for one that came at once; after a wait it would be mostly spent, so
// renew now and add the time waited until the renewal instead.
func (s *Server) validityOf(ctx context.Context, g backend.Grant, received time.Time) (time.Duration, error) {
	validity := g.Validity()
	if wg, ok := g.(backend.Waited); ok {
		return validity + time.Duration(float64(wg.Waited())*(1-2*core.Rho)), nil
	}
	if time.Since(received) <= renewAfterWait {
		return validity, nil
	}
	renewAt := time.Now()
	v, err := g.Renew(ctx)
	s.m.renewal.Observe(time.Since(renewAt).Seconds())
	if err != nil {
		return 0, err
	}
	waited := renewAt.Sub(received)
	return time.Duration(float64(waited)*(1-2*core.Rho)) + v, nil
}

// hold registers g's session, tells the client it holds the lock, and
// keeps the stream until the lease ends, the client goes away (its request
// ends or a heartbeat fails to reach it: the lock is released) or the
// elector shuts down.
func (s *Server) hold(r *http.Request, st *stream, g backend.Grant, name string, validity time.Duration, log *zap.Logger) {
	id, sess := s.addSession(name, g)
	defer s.dropSession(id)
	s.m.acquisitions.WithLabelValues("v1").Inc()
	s.m.held.Inc()
	defer s.m.held.Dec()
	log = log.With(zap.String("session", g.Session()), zap.Uint64("token", g.Token()))
	log.Info("lock acquired", zap.Duration("validity", validity))

	err := st.send(transport.Event{
		Type:       transport.EventAcquired,
		Session:    id,
		Token:      g.Token(),
		ValidityMs: validity.Milliseconds(),
	}, streamWriteTimeout)
	if err != nil {
		s.m.releases.WithLabelValues("disconnect").Inc()
		s.releaseFor(g, log, "could not tell the client it holds the lock")
		return
	}
	tick := time.NewTicker(transport.HeartbeatInterval)
	defer tick.Stop()
	for {
		select {
		case <-g.Done():
			s.ended(st, g, sess, log)
			return
		case <-tick.C:
			if st.heartbeat() == nil {
				continue
			}
			s.m.releases.WithLabelValues("disconnect").Inc()
			s.releaseFor(g, log, "client went away (a heartbeat could not reach it)")
			return
		case <-r.Context().Done():
			s.m.releases.WithLabelValues("disconnect").Inc()
			s.releaseFor(g, log, "client went away")
			return
		case <-s.stopCtx.Done():
			// Tell the holder first, then release: it stops acting on the
			// lock before anyone else can take it.
			s.m.losses.WithLabelValues(transport.ReasonShutdown).Inc()
			_ = st.send(transport.Event{
				Type:   transport.EventLost,
				Code:   transport.CodeLost,
				Reason: transport.ReasonShutdown,
				Error:  "elector shutting down; lock released",
			}, finalWriteTimeout)
			s.releaseFor(g, log, "elector shutting down")
			return
		}
	}
}

// ended writes the last line of the stream of g, whose lease has ended:
// released after a release request, lost otherwise.
func (s *Server) ended(st *stream, g backend.Grant, sess *session, log *zap.Logger) {
	gerr := g.Err()
	if gerr == nil && sess.wasReleased() {
		log.Info("lock released")
		_ = st.send(transport.Event{Type: transport.EventReleased}, streamWriteTimeout)
		return
	}
	if gerr == nil {
		gerr = errors.New("lease ended by the backend")
	}
	reason := s.lossReason(gerr)
	s.m.losses.WithLabelValues(reason).Inc()
	log.Warn("lock lost", zap.String("reason", reason), zap.Error(gerr))
	_ = st.send(transport.Event{
		Type:   transport.EventLost,
		Code:   transport.CodeLost,
		Reason: reason,
		Error:  gerr.Error(),
	}, streamWriteTimeout)
}

// releaseFor releases g on someone's behalf, with a fresh bounded context.
func (s *Server) releaseFor(g backend.Grant, log *zap.Logger, why string) {
	ctx, cancel := s.cleanupContext()
	defer cancel()
	if err := g.Release(ctx); err != nil {
		log.Warn("release failed; the lease will expire", zap.String("why", why), zap.Error(err))
		return
	}
	log.Info("lock released", zap.String("why", why))
}

// sessionRequest checks name and reads the body of a renew or release: a
// SessionRequest naming a session. On bad input it answers the request and
// returns false.
func sessionRequest(w http.ResponseWriter, r *http.Request, name string) (transport.SessionRequest, bool) {
	var req transport.SessionRequest
	if !checkName(w, name) || !decodeBody(w, r, &req) {
		return req, false
	}
	if req.Session == "" {
		writeError(w, http.StatusBadRequest, transport.CodeBadRequest, `"session" is required`)
		return req, false
	}
	return req, true
}

// renew serves POST /v1/locks/{name}/renew.
func (s *Server) renew(w http.ResponseWriter, r *http.Request, name string) {
	req, ok := sessionRequest(w, r, name)
	if !ok {
		return
	}
	sess := s.lookup(name, req.Session)
	if sess == nil {
		unknownSession(w, name)
		return
	}
	start := time.Now()
	v, err := sess.grant.Renew(r.Context())
	s.m.renewal.Observe(time.Since(start).Seconds())
	if err != nil {
		if errors.Is(err, core.ErrLockLost) {
			writeError(w, http.StatusGone, transport.CodeLost, err.Error())
			return
		}
		s.backendError(w, r, err)
		return
	}
	// v counts from when Renew was called, after the request arrived; the
	// client counts it from when it sent the request, earlier still.
	writeJSON(w, http.StatusOK, transport.RenewResponse{ValidityMs: v.Milliseconds()})
}

// release serves POST /v1/locks/{name}/release. A session that has ended,
// never existed or belongs to another lock gets 404 unknown_session, so that
// nobody can probe for live sessions unnoticed; a client that releases a
// lease it knows it held may take that answer as done.
func (s *Server) release(w http.ResponseWriter, r *http.Request, name string) {
	req, ok := sessionRequest(w, r, name)
	if !ok {
		return
	}
	sess := s.lookup(name, req.Session)
	if sess == nil {
		unknownSession(w, name)
		return
	}
	sess.markReleased()
	if err := sess.grant.Release(r.Context()); err != nil {
		s.backendError(w, r, err)
		return
	}
	s.m.releases.WithLabelValues("request").Inc()
	writeJSON(w, http.StatusOK, struct{}{})
}

// unknownSession answers a renew or release whose session is not a live
// session of lock name. The message does not repeat the id: logs and
// proxies that keep answers need not keep secrets.
func unknownSession(w http.ResponseWriter, name string) {
	writeError(w, http.StatusNotFound, transport.CodeUnknownSession,
		fmt.Sprintf("no live session with that id on lock %q: it ended, never existed, or belongs to another lock", name))
}

// watch serves GET /v1/locks/{name}/watch: the lock's state at once, then
// after every change, with heartbeats between, until the client goes away.
// The backend's Watch runs on its own goroutine and leaves only the latest
// state in a one-slot mailbox, so a slow client gets the latest state, not
// a backlog.
func (s *Server) watch(w http.ResponseWriter, r *http.Request, name string) {
	if !checkName(w, name) {
		return
	}
	// A GET has no body, but read whatever came to its end: only then
	// does net/http watch the connection and end r.Context() when the
	// client goes away.
	if _, ok := readBody(w, r); !ok {
		return
	}
	done, ok := s.admitStream(w, r, limitWatchStreams)
	if !ok {
		return
	}
	defer done()
	if !s.enter() {
		writeError(w, http.StatusServiceUnavailable, transport.CodeUnavailable, "elector shutting down")
		return
	}
	defer s.leave()
	s.m.watchers.Inc()
	defer s.m.watchers.Dec()

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(s.stopCtx, cancel)()

	latest := make(chan core.Holder, 1)
	ended := make(chan error, 1)
	go func() {
		ended <- s.b.Watch(ctx, name, func(h core.Holder) {
			// Only this goroutine sends, so after the drain there is room.
			select {
			case <-latest:
			default:
			}
			latest <- h
		})
	}()

	st := newStream(w)
	defer st.end()
	// A write that fails means the client is gone or stalled: end the
	// watch. Later writes fail at once.
	send := func(v any) {
		if st.failed() {
			return
		}
		if st.send(v, streamWriteTimeout) != nil {
			cancel()
		}
	}
	sendHolder := func(h core.Holder) {
		send(transport.HolderEvent{Type: transport.EventHolder, Holder: h.Identity, Token: h.Token})
	}
	tick := time.NewTicker(transport.HeartbeatInterval)
	defer tick.Stop()
	for {
		select {
		case h := <-latest:
			sendHolder(h)
			continue
		case <-tick.C:
			if !st.failed() && st.heartbeat() != nil {
				cancel()
			}
			continue
		case err := <-ended:
			select {
			case h := <-latest:
				sendHolder(h)
			default:
			}
			switch {
			case st.failed() || r.Context().Err() != nil:
				// The client is gone; nobody reads more.
			case !st.started:
				s.backendError(w, r, err)
			default:
				msg := "elector shutting down"
				if s.stopCtx.Err() == nil {
					msg = fmt.Sprintf("backend watch ended: %v", err)
				}
				_ = st.send(transport.Event{Type: transport.EventError, Code: transport.CodeUnavailable, Error: msg}, finalWriteTimeout)
			}
			return
		}
	}
}
