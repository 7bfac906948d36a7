// Package core holds what every part of mpsync shares: the error values,
// lock-name validation, the timing model of docs/DESIGN.md, and Ending, the
// end of a lease as the grants of both backends keep it. It imports
// nothing outside the standard library, so the SDK, the memory table, the
// HTTP transport and the elector can all use it without pulling each other
// in.
package core

import (
	"errors"
	"fmt"
	"regexp"
	"time"
	"unicode"
	"unicode/utf8"
)

// The error values shared by the SDK, its transports and the elector. The
// root package re-exports them; compare with errors.Is.
var (
	ErrLocked          = errors.New("mpsync: lock held by another holder")
	ErrLockLost        = errors.New("mpsync: lock lost")
	ErrUnlocked        = errors.New("mpsync: lock released by Unlock")
	ErrNotHeld         = errors.New("mpsync: lock not held")
	ErrInvalidName     = errors.New("mpsync: invalid lock name")
	ErrInvalidIdentity = errors.New("mpsync: invalid identity")
	ErrExpired         = errors.New("mpsync: lease validity expired before renewal")
	ErrRevoked         = errors.New("mpsync: lease revoked")
	ErrUnavailable     = errors.New("mpsync: elector unavailable")
	ErrClosed          = errors.New("mpsync: closed")
	ErrBusy            = errors.New("mpsync: Lock already holds or is acquiring")
	ErrRunning         = errors.New("mpsync: Election already running")
)

// MaxNameLength is the longest lock name: a Kubernetes object name.
const MaxNameLength = 253

var subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// ValidateName reports whether name can name a lock: a DNS-1123 subdomain
// (lower-case letters, digits, '-' and '.', starting and ending with a letter
// or digit, at most 253 characters), which is what a Lease name must be. The
// error wraps ErrInvalidName.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalidName)
	case len(name) > MaxNameLength:
		return fmt.Errorf("%w: %d characters, at most %d", ErrInvalidName, len(name), MaxNameLength)
	case !subdomain.MatchString(name):
		return fmt.Errorf("%w: %q is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)", ErrInvalidName, name)
	}
	return nil
}

// MaxIdentityLength is the longest identity, in bytes: a Kubernetes
// object name's length, so that an identity fits wherever a name does.
const MaxIdentityLength = 253

// ValidateIdentity reports whether id can name a holder: 1 to
// MaxIdentityLength bytes of valid UTF-8 with no control characters
// (unicode.IsControl: C0, DEL, C1), so that it survives JSON, HTTP headers,
// logs and a Lease's spec.holderIdentity unchanged. The SDK, the memory
// table and the elector all apply this one rule. The error wraps ErrInvalidIdentity.
func ValidateIdentity(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty", ErrInvalidIdentity)
	case len(id) > MaxIdentityLength:
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidIdentity, len(id), MaxIdentityLength)
	case !utf8.ValidString(id):
		return fmt.Errorf("%w: %q is not valid UTF-8", ErrInvalidIdentity, id)
	}
	for i, c := range id {
		if unicode.IsControl(c) {
			return fmt.Errorf("%w: %q has a control character (%U) at byte %d", ErrInvalidIdentity, id, c, i)
		}
	}
	return nil
}

// Rho is the assumed bound on the rate drift between any two clocks in the
// system: 1% (a clock may run up to 1% fast or slow against another).
const Rho = 0.01

// Margin is subtracted from every validity on top of the drift allowance, to
// cover scheduling delay between a timer firing and the holder noticing.
const Margin = 250 * time.Millisecond

// MinLease is the shortest lease duration the timing model accepts: below it
// Margin would eat most of the validity.
const MinLease = time.Second

// LeastElapsed is the least time any clock in the system can count while
// another counts d: d*(1-2*Rho). It is the one place the drift bound is
// applied; a time measured on one clock and spent on another goes through
// it.
func LeastElapsed(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (1 - 2*Rho))
}

// Validity is how long a holder may act on a lease of duration d, counted
// from the moment it sent the request that wrote the lease:
// LeastElapsed(d) - Margin, never negative.
func Validity(d time.Duration) time.Duration {
	v := LeastElapsed(d) - Margin
	if v < 0 {
		return 0
	}
	return v
}

// WaitedValidity is the validity of a lease of duration d written waited
// after the Acquire call that asked for it (waited measured on the
// backend's clock), counted from that call: Validity(d) plus
// LeastElapsed(waited). Every backend's Grant.Validity is this, so that a
// grant that came after a long wait is of full use without a renewal.
func WaitedValidity(d, waited time.Duration) time.Duration {
	return Validity(d) + LeastElapsed(max(0, waited))
}

// Request asks a lock table or backend for a lock.
type Request struct {
	Name     string        // the lock; must pass ValidateName
	Identity string        // who will hold it; must pass ValidateIdentity
	Wait     bool          // wait for the lock instead of failing with ErrLocked
	Lease    time.Duration // lease duration; 0 means the backend's default
	// Legacy marks an acquisition made for Metaparticle Sync's clients,
	// held in the elector's own identity. A backend that keeps locks
	// across elector processes marks such a lease in a part of it that
	// only the backend writes, and lets a later Legacy request of the
	// same Identity from a restarted elector of the same name resume it
	// (keeping its token) instead of waiting out its lease. Requests
	// without it never resume anything, whatever their Identity.
	Legacy bool
}

// Holder is the state of a lock as watchers see it. Identity is empty when
// the lock is free; Token is then no less than the last holder's token and
// less than the next holder's (0 if nothing was ever held: the memory
// backend, which forgets unused locks, reports its latest token of any lock
// for a lock it has forgotten).
type Holder struct {
	Identity string
	Token    uint64
}

// LockedError is the error of an acquisition refused because the lock is
// taken: errors.Is(err, ErrLocked) holds for it, and errors.As finds who
// held the lock when the backend refused, so that nobody has to ask again.
type LockedError struct {
	// Name is the lock.
	Name string
	// Holder is the identity of the holder the backend saw when it
	// refused; empty when none could be named (the lock was free but
	// others waited for it, or writes kept conflicting).
	Holder string
	// Detail says in words what stood in the way, for Error.
	Detail string
}

// Error reads as ErrLocked followed by the detail.
func (e *LockedError) Error() string {
	if e.Detail == "" {
		return ErrLocked.Error()
	}
	return ErrLocked.Error() + ": " + e.Detail
}

// Is reports whether target is ErrLocked.
func (e *LockedError) Is(target error) bool { return target == ErrLocked }
