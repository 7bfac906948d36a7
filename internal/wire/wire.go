// Package wire is the elector's v1 protocol on the wire (PROTOCOL.md): its
// JSON shapes, error codes, event types and limits. The client
// (internal/transport) and the elector (sidecar/server) both use it, so
// the two sides cannot drift apart.
package wire

import (
	"time"

	"github.com/mpsync/mpsync/internal/core"
)

// HeartbeatInterval is how often the elector writes a heartbeat line on a
// stream that has nothing else to say: a waiting acquire, a held acquire, a
// watch. Each write has a deadline, and a write to a client that has closed
// its connection fails (its kernel answers the first with a reset), so the
// elector notices a vanished client within about two intervals, whatever
// the client sent after its request.
const HeartbeatInterval = time.Second

// MaxBodyBytes is the largest request body the elector accepts; larger ones
// get 413 with code CodeTooLarge.
const MaxBodyBytes = 4 << 10

// MaxIdentityLength is the longest identity an acquire request may carry
// (core.ValidateIdentity says what else an identity must be).
const MaxIdentityLength = core.MaxIdentityLength

// Error codes: the "code" field of an ErrorBody.
const (
	CodeInvalidName      = "invalid_name"       // the lock name is not a DNS-1123 subdomain (400)
	CodeBadRequest       = "bad_request"        // malformed JSON, unknown field, missing value (400)
	CodeTooLarge         = "too_large"          // request body over MaxBodyBytes (413)
	CodeLocked           = "locked"             // held by another holder and the request did not wait (409)
	CodeLost             = "lost"               // the session's lease ended as it was renewed (410, and in lost events)
	CodeNotFound         = "not_found"          // unknown path, or a legacy lock that is not held (404)
	CodeUnknownSession   = "unknown_session"    // renew or release of a session that is not live on that lock (404)
	CodeMethodNotAllowed = "method_not_allowed" // wrong method; the Allow header lists the right ones (405)
	CodeUnavailable      = "unavailable"        // backend not ready, or the elector is shutting down (503)
)

// Event types: the "type" field of an Event on an NDJSON stream.
const (
	EventWaiting   = "waiting"   // first line of an acquire stream whose grant did not come at once
	EventAcquired  = "acquired"  // line of an acquire stream that says the lock is held
	EventHeartbeat = "heartbeat" // a line with nothing to say, every HeartbeatInterval on a quiet stream
	EventReleased  = "released"  // last line of an acquire stream after a release request
	EventLost      = "lost"      // last line of an acquire stream after a loss
	EventHolder    = "holder"    // a watch stream's state line
	EventError     = "error"     // last line of a watch stream the elector ends, or of an acquire stream that failed while waiting
)

// Loss reasons: the "reason" field of a lost Event.
const (
	ReasonRevoked  = "revoked"  // taken away by the backend (or /debug/revoke)
	ReasonExpired  = "expired"  // not renewed within the lease duration
	ReasonBackend  = "backend"  // the backend failed or closed
	ReasonShutdown = "shutdown" // the elector is shutting down
)

// AcquireRequest is the body of POST /v1/locks/{name}/acquire.
type AcquireRequest struct {
	Identity string `json:"identity"`       // who will hold the lock; 1..MaxIdentityLength bytes
	Wait     bool   `json:"wait,omitempty"` // wait for the lock instead of answering 409
}

// SessionRequest is the body of POST /v1/locks/{name}/renew and .../release.
type SessionRequest struct {
	Session string `json:"session"` // from the acquired event
}

// RenewResponse is the body of a successful renew: the new validity in
// milliseconds, counted from when the elector received the request.
type RenewResponse struct {
	ValidityMs int64 `json:"validityMs"`
}

// LockState is the body of GET /v1/locks/{name} and of a legacy GET.
// Holder is empty when the lock is free; Token is then no less than the last
// holder's (see core.Holder).
type LockState struct {
	Name   string `json:"name"`
	Holder string `json:"holder"`
	Token  uint64 `json:"token"`
}

// ErrorBody is the body of every 4xx and 5xx answer. Holder is set with
// CodeLocked when the holder is known.
type ErrorBody struct {
	Error  string `json:"error"`
	Code   string `json:"code"`
	Holder string `json:"holder,omitempty"`
}

// Event is one line of an NDJSON stream. Which fields are set depends on
// Type: acquired carries Session, Token and ValidityMs; lost carries Code,
// Reason and Error; holder carries Holder (possibly empty) and Token; error
// carries Code and Error (and Holder with CodeLocked); waiting and heartbeat
// carry nothing. Readers ignore unknown types and fields.
type Event struct {
	Type       string `json:"type"`
	Session    string `json:"session,omitempty"`
	Token      uint64 `json:"token,omitempty"`
	ValidityMs int64  `json:"validityMs,omitempty"`
	Holder     string `json:"holder,omitempty"`
	Code       string `json:"code,omitempty"`
	Reason     string `json:"reason,omitempty"`
	Error      string `json:"error,omitempty"`
}

// HolderEvent is a watch stream's state line: {"type":"holder",...}, with
// both fields always present (Holder "" when the lock is free, Token then
// no less than the last holder's; see core.Holder).
type HolderEvent struct {
	Type   string `json:"type"`
	Holder string `json:"holder"`
	Token  uint64 `json:"token"`
}
