package server

import (
	rtmetrics "runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/wire"
)

// heldStream is a held lock whose stream is detached from net/http: what
// the one goroutine that serves it needs, which goes with it when it moves
// to a fresh goroutine (keepDetached).
type heldStream struct {
	st    *stream     // sess.st, which Server.mu guards there
	sess  *session    // its grant is the held one
	ended atomic.Bool // the grant has ended: set by its AfterDone
	stop  func() bool // unregisters that AfterDone
	next  time.Time   // when the next heartbeat is due
	done  func()      // gives back the session, the stream and its slot
}

// grantEnded is the grant's AfterDone: it wakes the stream's goroutine.
func (h *heldStream) grantEnded() {
	h.ended.Store(true)
	h.st.wake()
}

// keepHeld serves the detached stream st of session sess, whose grant is
// held, on a goroutine of its own (keepDetached) until its end, then calls
// done. A held lock costs that goroutine, no timer or channel of its own,
// and no goroutine waiting on the grant's Done (for the grants of this
// module's backends): the grant's end (backend.AfterDone) and the
// elector's shutdown (Shutdown's wakeHeld) wake it (stream.wake).
func (s *Server) keepHeld(st *stream, sess *session, done func()) {
	h := &heldStream{st: st, sess: sess, next: time.Now().Add(wire.HeartbeatInterval), done: done}
	h.stop = backend.AfterDone(sess.grant, h.grantEnded)
	s.detached(sess, st)
	go s.keepDetached(h, s.stackStart())
}

// keepDetached is keep for a detached stream, on the goroutine it runs on:
// it reads the stream's connection (stream.wait) to learn that the client
// has gone, with the next heartbeat's time as the read's deadline, until
// the lease ends, the client goes away (the lock is released), a heartbeat
// fails to reach the client (released too) or the elector shuts down.
//
// stack is the size of a new goroutine's stack when this one was started.
// The runtime sizes new stacks by the average stack in use at the last GC,
// which deep goroutines (a burst of acquisitions, requests to the API
// server) raise to 4 KiB or more, while a held stream's goroutine uses
// about 1 KiB; and a parked goroutine's stack is shrunk only while less
// than a quarter of it, counting an 800-byte reserve, is in use, which a
// 4 KiB stack waiting in a read never is. So once new stacks have become
// smaller, keepDetached hands the stream to a fresh goroutine, which gets
// one, and returns (measured with 1,000 locks taken in 2 s: most held
// streams kept 4 KiB stacks otherwise).
func (s *Server) keepDetached(h *heldStream, stack uint64) {
	moved := false
	defer func() {
		if !moved {
			h.stop()
			h.done()
		}
	}()
	st, g := h.st, h.sess.grant
	log := func() *zap.Logger { return s.log.With(h.sess.fields()...) }
	for {
		gone := st.wait(h.next)
		switch {
		case h.ended.Load():
			s.ended(st, g, h.sess, log())
			return
		case gone:
			s.clientGone(g, log(), closedStream)
			return
		case s.stopCtx.Err() != nil:
			s.shutdownHeld(st, g, log())
			return
		}
		// The read reached its deadline: a heartbeat is due.
		if st.heartbeat() != nil {
			s.clientGone(g, log(), heartbeatFailed)
			return
		}
		h.next = time.Now().Add(wire.HeartbeatInterval)
		if now := s.stackStart(); now < stack {
			moved = true
			go s.keepDetached(h, now)
			return
		}
	}
}

// stackStarts reads the size of a new goroutine's stack (runtime/metrics
// "/gc/stack/starting-size:bytes"), for every held stream to compare with
// its own (keepDetached): at its start and at each heartbeat (about 40 ns
// and no allocation each). The zero value is ready for use.
type stackStarts struct {
	mu     sync.Mutex // guards sample, which every read reuses
	sample [1]rtmetrics.Sample
}

// get returns the size.
func (ss *stackStarts) get() uint64 {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.sample[0].Name = "/gc/stack/starting-size:bytes"
	rtmetrics.Read(ss.sample[:])
	if ss.sample[0].Value.Kind() != rtmetrics.KindUint64 {
		return 0 // not supported: never move
	}
	return ss.sample[0].Value.Uint64()
}
