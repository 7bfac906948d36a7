package server

import (
	"context"
)

// Held returns how many locks the Server holds: v1 sessions and legacy
// locks. The elector sizes its shutdown budget with it.
func (s *Server) Held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.sessions)
	for _, ll := range s.legacy {
		if ll.grant != nil {
			n++
		}
	}
	return n
}

// cleanupContext bounds a release done on someone's behalf: cleanupTimeout
// while serving; once Shutdown has begun, Shutdown's own context, so that
// releases queued behind the backend's rate limit (a Kubernetes elector
// releasing hundreds of Leases at --kube-qps) get the whole shutdown budget
// rather than a second each.
func (s *Server) cleanupContext() (context.Context, context.CancelFunc) {
	s.mu.Lock()
	sctx := s.shutdownCtx
	s.mu.Unlock()
	if sctx != nil {
		return context.WithCancel(sctx)
	}
	return context.WithTimeout(context.Background(), cleanupTimeout)
}
