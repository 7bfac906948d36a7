package server

import (
	"crypto/rand"
	"encoding/hex"
	"sync"

	"github.com/mpsync/mpsync/internal/backend"
)

// sessionIDBytes is the size of a session id before hex encoding: 128 bits
// from crypto/rand, so that no client can guess another's session.
const sessionIDBytes = 16

// session is one v1 acquisition, from grant until its stream ends.
type session struct {
	name     string
	grant    backend.Grant
	mu       sync.Mutex
	released bool // a release request was made for it
}

func (s *session) markReleased() {
	s.mu.Lock()
	s.released = true
	s.mu.Unlock()
}

func (s *session) wasReleased() bool {
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

// addSession registers the grant g of lock name under a fresh session id
// and returns the id. dropSession forgets it.
func (s *Server) addSession(name string, g backend.Grant) (string, *session) {
	sess := &session{name: name, grant: g}
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
