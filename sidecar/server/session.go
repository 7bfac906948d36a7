package server

import (
	"crypto/rand"
	"encoding/hex"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/mpsync/mpsync/internal/backend"
)

// sessionIDBytes is the size of a session id before hex encoding: 128 bits
// from crypto/rand, so that no client can guess another's session.
const sessionIDBytes = 16

// session is one v1 acquisition, from grant until its stream ends.
type session struct {
	name, identity string // the lock, and who holds it
	grant          backend.Grant
	// st is the session's stream once detached (guarded by Server.mu):
	// Shutdown wakes it (wakeHeld).
	st       *stream
	mu       sync.Mutex
	released time.Time // when a release request was made for it; zero if none
}

// fields name the session in the logs: the lock, the holder, the
// backend's session and the token. They are made for each use rather than
// kept: a held lock would keep 256 bytes of them.
func (s *session) fields(more ...zap.Field) []zap.Field {
	return append([]zap.Field{
		zap.String("name", s.name), zap.String("identity", s.identity),
		zap.String("session", s.grant.Session()), zap.Uint64("token", s.grant.Token()),
	}, more...)
}

// markReleased records that a release request for the session arrived now.
func (s *session) markReleased() {
	s.mu.Lock()
	s.released = time.Now()
	s.mu.Unlock()
}

// wasReleased reports whether a release request was made for the session.
func (s *session) wasReleased() bool { return !s.releasedAt().IsZero() }

// releasedAt is when a release request for the session arrived; zero if
// none did.
func (s *session) releasedAt() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.released
}

// newSessionID returns a fresh session id: 32 hex digits of crypto/rand.
// The backend's own session names (a counter on the memory backend) never
// reach a client.
func newSessionID() string {
	b := make([]byte, sessionIDBytes)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (it panics instead)
	return hex.EncodeToString(b)
}

// addSession registers the grant g of lock name, held by identity, under
// a fresh session id and returns the id. dropSession forgets it.
func (s *Server) addSession(name, identity string, g backend.Grant) (string, *session) {
	sess := &session{name: name, identity: identity, grant: g}
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		id := newSessionID()
		if s.sessions[id] == nil { // a collision is as good as impossible; still, never share
			s.sessions[id] = sess
			return id, sess
		}
	}
}

// detached records that sess is served by its detached stream st, which
// Shutdown then wakes. A Shutdown that began before is seen: st is woken at
// once.
func (s *Server) detached(sess *session, st *stream) {
	s.mu.Lock()
	sess.st = st
	s.mu.Unlock()
	if s.stopCtx.Err() != nil {
		st.wake()
	}
}

// wakeHeld wakes the detached stream of every session, once Shutdown has
// cancelled stopCtx, so that each tells its holder and releases.
func (s *Server) wakeHeld() {
	s.mu.Lock()
	var held []*stream
	for _, sess := range s.sessions {
		if sess.st != nil {
			held = append(held, sess.st)
		}
	}
	s.mu.Unlock()
	for _, st := range held {
		st.wake()
	}
}

// dropSession forgets the session id.
func (s *Server) dropSession(id string) {
	s.mu.Lock()
	delete(s.sessions, id)
	s.mu.Unlock()
}

// lookup returns the live session id of lock name, or nil: for an id that
// never existed, has ended, was released (its stream may not have ended
// yet), or belongs to another lock alike.
func (s *Server) lookup(name, id string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.sessions[id]
	if sess == nil || sess.name != name || sess.wasReleased() {
		return nil
	}
	return sess
}
