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
	"github.com/mpsync/mpsync/internal/trace"
	"github.com/mpsync/mpsync/internal/wire"
)

// v1Get answers GET /v1/locks/{name} with the lock's state.
func (s *Server) v1Get(w http.ResponseWriter, r *http.Request, name string) {
	if !checkName(w, name) {
		return
	}
	h, err := s.stateOf(r.Context(), name)
	if err != nil {
		s.backendError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, wire.LockState{Name: name, Holder: h.Identity, Token: h.Token})
}

// backendError answers a failed backend call, unless the client has gone.
func (s *Server) backendError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client has gone; nobody reads an answer
	}
	status, body := s.errorBody(err)
	writeJSON(w, status, body)
}

// classify gives the status, code and message that answer a failed backend
// call: as a status line before a stream starts, as an error line after.
func (s *Server) classify(err error) (status int, code, msg string) {
	switch {
	case errors.Is(err, core.ErrInvalidName):
		return http.StatusBadRequest, wire.CodeInvalidName, err.Error()
	case errors.Is(err, core.ErrLocked):
		return http.StatusConflict, wire.CodeLocked, err.Error()
	case s.stopCtx.Err() != nil || errors.Is(err, core.ErrClosed):
		return http.StatusServiceUnavailable, wire.CodeUnavailable, "elector shutting down"
	}
	return http.StatusServiceUnavailable, wire.CodeUnavailable, fmt.Sprintf("backend: %v", err)
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
	if !checkName(w, name) {
		return
	}
	var req wire.AcquireRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if err := core.ValidateIdentity(req.Identity); err != nil {
		writeError(w, http.StatusBadRequest, wire.CodeBadRequest, fmt.Sprintf(`"identity": %v`, err))
		return
	}
	done, ok := s.admitStream(w, r, limitAcquireStreams)
	if !ok {
		return
	}
	if !s.enter() {
		done()
		writeError(w, http.StatusServiceUnavailable, wire.CodeUnavailable, "elector shutting down")
		return
	}
	// finish gives back what a stream holds: its slot, and its part in
	// what Shutdown waits for. A held stream that detaches from its
	// handler (hold) takes it along.
	finish := func() { s.leave(); done() }
	detached := false
	defer func() {
		if !detached {
			finish()
		}
	}()

	// ctx ends when the client goes away (its request ends, or a write to
	// it fails) or the elector shuts down.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(s.stopCtx, cancel)()
	st := newStream(w)
	st.allowDetach(r)
	defer func() {
		if !detached { // else the stream's own goroutine ends it
			st.end()
		}
	}()
	gone := func() bool { return r.Context().Err() != nil || st.failed() }

	log := s.log.With(zap.String("name", name), zap.String("identity", req.Identity))
	g, err := s.await(ctx, cancel, st, core.Request{Name: name, Identity: req.Identity, Wait: req.Wait}, log)
	if err != nil {
		if gone() {
			log.Debug("client went away while waiting")
			return
		}
		s.acquireFailed(w, st, err)
		return
	}
	if ctx.Err() != nil || s.stopCtx.Err() != nil {
		// Granted as the client left or the elector began to stop (a
		// holder released at shutdown hands the lock to the next waiter):
		// give it straight back.
		s.releaseFor(g, log, "granted while the client left or the elector stopped")
		if !gone() {
			s.acquireFailed(w, st, core.ErrClosed)
		}
		return
	}
	// g's validity counts from the Acquire call, after the request
	// arrived; the client counts it from when it sent the request, earlier
	// still.
	detached = s.hold(r, st, g, name, req.Identity, g.Validity(), finish)
}

// await runs the backend's Acquire of req. While a waiting request has no
// grant, it answers 200 and a waiting line after waitingAfter, then a
// heartbeat every wire.HeartbeatInterval; a write that fails (the
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
	tick := time.NewTicker(wire.HeartbeatInterval)
	defer tick.Stop()
	for {
		var err error
		select {
		case res := <-done:
			return res.g, res.err
		case <-waiting.C:
			err = st.send(wire.Event{Type: wire.EventWaiting}, streamWriteTimeout)
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
func (s *Server) acquireFailed(w http.ResponseWriter, st *stream, err error) {
	status, body := s.errorBody(err)
	if !st.started {
		writeJSON(w, status, body)
		return
	}
	_ = st.send(wire.Event{Type: wire.EventError, Code: body.Code, Error: body.Error, Holder: body.Holder}, finalWriteTimeout)
}

// errorBody is the status and body that answer a failed backend call. For
// a refusal (409) the body names the holder the backend saw when it
// refused, from its *core.LockedError, without asking the backend again.
func (s *Server) errorBody(err error) (int, wire.ErrorBody) {
	status, code, msg := s.classify(err)
	body := wire.ErrorBody{Error: msg, Code: code}
	if locked := (*core.LockedError)(nil); code == wire.CodeLocked && errors.As(err, &locked) {
		body.Holder = locked.Holder
	}
	return status, body
}

// hold registers g's session (of lock name, held by identity), tells the
// client it holds the lock, and keeps the stream until the lease ends, the
// client goes away (its request ends or a heartbeat fails to reach it: the
// lock is released) or the elector shuts down.
//
// Where it can, hold detaches the stream from net/http (stream.detach) and
// keeps it on one goroutine of its own (keepHeld), which ends it and calls
// finish, and reports true at once: the handler returns, and
// net/http's connection goroutine, buffers and the handler's deep stack
// are freed while the lock is held. Otherwise it keeps the stream itself
// and reports false.
func (s *Server) hold(r *http.Request, st *stream, g backend.Grant, name, identity string, validity time.Duration, finish func()) (detached bool) {
	id, sess := s.addSession(name, identity, g)
	s.m.acquisitions.WithLabelValues("v1").Inc()
	s.m.held.Inc()
	held := func() {
		s.m.held.Dec()
		s.dropSession(id)
	}

	// The grant goes out first, the log line after: it is on the path of
	// every handover.
	err := st.send(wire.Event{
		Type:       wire.EventAcquired,
		Session:    id,
		Token:      g.Token(),
		ValidityMs: validity.Milliseconds(),
	}, streamWriteTimeout)
	if err != nil {
		s.m.releases.WithLabelValues("disconnect").Inc()
		s.releaseFor(g, s.log.With(sess.fields()...), "could not tell the client it holds the lock")
		held()
		return false
	}
	trace.Mark(trace.GrantSent)
	s.log.Info("lock acquired", sess.fields(zap.Duration("validity", validity))...)
	if st.detach() {
		s.keepHeld(st, sess, func() {
			held()
			st.end()
			finish()
		})
		return true
	}
	defer held()
	s.keep(st, g, sess, r.Context().Done())
	return false
}

// keep serves the stream of the held grant g until its lease ends, gone is
// closed (the client went away: the lock is released), a heartbeat fails to
// reach the client (released too) or the elector shuts down. It serves a
// stream that net/http still serves; keepDetached serves a detached one.
func (s *Server) keep(st *stream, g backend.Grant, sess *session, gone <-chan struct{}) {
	log := func() *zap.Logger { return s.log.With(sess.fields()...) }
	tick := time.NewTicker(wire.HeartbeatInterval)
	defer tick.Stop()
	for {
		select {
		case <-g.Done():
			s.ended(st, g, sess, log())
			return
		case <-tick.C:
			if st.heartbeat() == nil {
				continue
			}
			s.clientGone(g, log(), heartbeatFailed)
			return
		case <-gone:
			s.clientGone(g, log(), closedStream)
			return
		case <-s.stopCtx.Done():
			s.shutdownHeld(st, g, log())
			return
		}
	}
}

// Why a held grant's client counts as gone (clientGone).
const (
	closedStream    = "client went away"
	heartbeatFailed = "client went away (a heartbeat could not reach it)"
)

// clientGone releases the held grant g, whose client has gone: it closed
// its stream, or a heartbeat could not reach it (why says which).
func (s *Server) clientGone(g backend.Grant, log *zap.Logger, why string) {
	s.m.releases.WithLabelValues("disconnect").Inc()
	s.releaseFor(g, log, why)
}

// shutdownHeld ends the stream of the held grant g as the elector shuts
// down. It tells the holder first, then releases: the holder stops acting
// on the lock before anyone else can take it.
func (s *Server) shutdownHeld(st *stream, g backend.Grant, log *zap.Logger) {
	s.m.losses.WithLabelValues(wire.ReasonShutdown).Inc()
	_ = st.send(wire.Event{
		Type:   wire.EventLost,
		Code:   wire.CodeLost,
		Reason: wire.ReasonShutdown,
		Error:  "elector shutting down; lock released",
	}, finalWriteTimeout)
	s.releaseFor(g, log, "elector shutting down")
}

// ended writes the last line of the stream of g, whose lease has ended:
// released after a release request, lost otherwise.
func (s *Server) ended(st *stream, g backend.Grant, sess *session, log *zap.Logger) {
	gerr := g.Err()
	if at := sess.releasedAt(); gerr == nil && !at.IsZero() {
		log.Info("lock released", zap.Time("began", at))
		_ = st.send(wire.Event{Type: wire.EventReleased}, streamWriteTimeout)
		return
	}
	reason, gerr := s.lost(g, log)
	_ = st.send(wire.Event{
		Type:   wire.EventLost,
		Code:   wire.CodeLost,
		Reason: reason,
		Error:  gerr.Error(),
	}, streamWriteTimeout)
}

// sessionRequest checks name and reads the body of a renew or release: a
// SessionRequest naming a session. On bad input it answers the request and
// returns false.
func sessionRequest(w http.ResponseWriter, r *http.Request, name string) (wire.SessionRequest, bool) {
	var req wire.SessionRequest
	if !checkName(w, name) || !decodeBody(w, r, &req) {
		return req, false
	}
	if req.Session == "" {
		writeError(w, http.StatusBadRequest, wire.CodeBadRequest, `"session" is required`)
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
			writeError(w, http.StatusGone, wire.CodeLost, err.Error())
			return
		}
		s.backendError(w, r, err)
		return
	}
	// v counts from when Renew was called, after the request arrived; the
	// client counts it from when it sent the request, earlier still.
	writeJSON(w, http.StatusOK, wire.RenewResponse{ValidityMs: v.Milliseconds()})
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
	trace.Mark(trace.ReleaseReceived)
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
	writeError(w, http.StatusNotFound, wire.CodeUnknownSession,
		fmt.Sprintf("no live session with that id on lock %q: it ended, never existed, or belongs to another lock", name))
}

// watch serves GET /v1/locks/{name}/watch: the lock's state at once, then
// after every change, with heartbeats between, until the client goes away.
// The backend's Watch feeds a one-slot mailbox, so a slow client gets the
// latest state, not a backlog.
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
		writeError(w, http.StatusServiceUnavailable, wire.CodeUnavailable, "elector shutting down")
		return
	}
	defer s.leave()
	s.m.watchers.Inc()
	defer s.m.watchers.Dec()

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(s.stopCtx, cancel)()

	latest, ended := s.mailbox(ctx, name)
	st := newStream(w)
	defer st.end()
	// A write that fails means the client is gone or stalled: end the
	// watch. Later writes fail at once.
	sendHolder := func(h core.Holder) {
		if st.failed() {
			return
		}
		if st.send(wire.HolderEvent{Type: wire.EventHolder, Holder: h.Identity, Token: h.Token}, streamWriteTimeout) != nil {
			cancel()
		}
	}
	tick := time.NewTicker(wire.HeartbeatInterval)
	defer tick.Stop()
	for {
		select {
		case h := <-latest:
			sendHolder(h)
		case <-tick.C:
			if !st.failed() && st.heartbeat() != nil {
				cancel()
			}
		case err := <-ended:
			select {
			case h := <-latest:
				sendHolder(h)
			default:
			}
			s.watchEnded(w, r, st, err)
			return
		}
	}
}

// mailbox runs the backend's Watch of name on its own goroutine until ctx
// ends, leaving only the latest state in latest, a one-slot mailbox, so
// that a slow client gets the latest state, not a backlog. ended receives
// what Watch returned.
func (s *Server) mailbox(ctx context.Context, name string) (latest <-chan core.Holder, ended <-chan error) {
	l := make(chan core.Holder, 1)
	e := make(chan error, 1)
	go func() {
		e <- s.b.Watch(ctx, name, func(h core.Holder) {
			// Only this goroutine sends, so after the drain there is room.
			select {
			case <-l:
			default:
			}
			l <- h
		})
	}()
	return l, e
}

// watchEnded ends a watch stream whose backend watch returned err: with a
// status if the stream has not started, else an error line, unless the
// client has gone.
func (s *Server) watchEnded(w http.ResponseWriter, r *http.Request, st *stream, err error) {
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
		_ = st.send(wire.Event{Type: wire.EventError, Code: wire.CodeUnavailable, Error: msg}, finalWriteTimeout)
	}
}
