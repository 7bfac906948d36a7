// Package mpsync provides distributed locks and leader election for
// replicas of a service, backed by an elector sidecar that keeps each lock
// as a Kubernetes Lease (or, on one machine, in its own memory).
//
// A Lock is used like a mutex whose holding is a context:
//
//	lock, err := mpsync.NewLock("reports")
//	held, err := lock.Lock(ctx)  // blocks until this replica holds "reports"
//	defer lock.Unlock()
//	writeReport(held)            // stop when held is done: the lock was lost
//
// An Election campaigns for a lock until its context ends and reports on a
// channel whenever this replica becomes leader or follower, and who leads;
// its leader can hand over with Resign and stay a candidate. An Observer
// follows who leads without standing for election.
//
// # Guarantees
//
// At no instant do two holders of the same lock both have a leadership
// context that is not done. A leadership context ends when the lock is
// lost, released, or its parent ends, and in any case on its own at the
// local validity deadline: a lease of duration D whose renewal was sent at
// local monotonic time t is acted on only until t + D*(1-2*rho) - margin,
// where rho is 1% (the assumed bound on clock rate drift) and margin is
// 250ms. Another party takes an unreleased lease only after D of its own
// time since it last saw the lease change, so a holder that is paused,
// partitioned or whose elector died stops first. Wall-clock timestamps from
// other hosts never decide anything.
//
// Timing cannot fence off a holder that was paused between checking its
// context and acting on a shared resource. For that, every acquisition
// carries a fencing token (see FencingToken and Event.Token), strictly
// greater than that of every earlier acquisition of the same lock; a
// storage layer that remembers the highest token it has seen can reject
// writes from a stale holder.
//
// After a pause past the local deadline (SIGSTOP, a stopped VM, a long GC),
// the leadership context itself reports the loss at once: its Done and Err
// check the deadline on every call, before its timer has had a chance to
// run, and so does a context derived from it with context.WithValue. A
// context derived with context.WithTimeout, WithDeadline or WithCancel
// keeps its own state, which package context sets only when the parent is
// cancelled: for a moment after the pause it may still report Err() == nil,
// until the leadership context's timer runs or anything calls its Done or
// Err, which ends every context derived from it at once. So check the
// leadership context itself (held.Err()), not a context derived from it,
// right before acting on what the lock protects; ValidUntil, through any
// derived context, tells until when the current term may last without
// another renewal. Even that check cannot cover a pause that falls between
// it and the action: only the fencing token does.
//
// # Transports
//
// Locks, elections and observers talk to a Transport. By default that is
// the HTTPTransport to the elector at $MPSYNC_ELECTOR, else
// http://localhost:13131 (see WithElector), one per address for the whole
// process. Unit tests use the in-memory elector of package mpsynctest
// through WithTransport.
package mpsync

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/mpsync/mpsync/internal/core"
)

// Errors returned by this package and by its transports. Compare them with
// errors.Is; the errors returned wrap them with detail.
var (
	// ErrLocked is wrapped in the error of a TryLock refused because
	// another holder has the lock; that error is a *LockedError, which
	// names the holder.
	ErrLocked = core.ErrLocked
	// ErrLockLost is the context.Cause of a leadership context that ended
	// because the lock was lost: revoked, expired before a renewal
	// arrived, or its elector went away. The cause wraps the reason too.
	ErrLockLost = core.ErrLockLost
	// ErrUnlocked is the context.Cause of a leadership context ended by
	// Unlock.
	ErrUnlocked = core.ErrUnlocked
	// ErrNotHeld is returned by Unlock when the Lock holds nothing.
	ErrNotHeld = core.ErrNotHeld
	// ErrInvalidName is returned for a lock name that is not a DNS-1123
	// subdomain of at most 253 characters (what a Lease name must be).
	ErrInvalidName = core.ErrInvalidName
	// ErrInvalidIdentity is returned by NewLock and NewElection (through
	// WithIdentity, or for a default identity that would not do) for an
	// identity that is empty, longer than 253 bytes, not valid UTF-8, or
	// that has a control character. The elector and package mpsynctest
	// refuse the same identities.
	ErrInvalidIdentity = core.ErrInvalidIdentity
	// ErrExpired is wrapped in the cause of a leadership context that
	// reached its local validity deadline with no renewal.
	ErrExpired = core.ErrExpired
	// ErrRevoked is wrapped in the cause of a leadership context whose
	// lease was taken away by the backend or an operator.
	ErrRevoked = core.ErrRevoked
	// ErrUnavailable is returned (wrapped, naming the address) when the
	// elector cannot be reached, and wrapped in the cause of leadership
	// contexts that ended because it went away.
	ErrUnavailable = core.ErrUnavailable
	// ErrBusy is returned by Lock and TryLock on a Lock that already holds
	// its lock or is acquiring it: locks are not reentrant.
	ErrBusy = core.ErrBusy
	// ErrRunning is returned by Run on an Election or Observer that is
	// already running or has run.
	ErrRunning = core.ErrRunning
	// ErrClosed is wrapped in the errors of a transport that was closed:
	// an HTTPTransport after Close (with ErrUnavailable), or the
	// transport of an mpsynctest.Elector after its Close.
	ErrClosed = core.ErrClosed
	// ErrResigned is the context.Cause of a leadership context ended by
	// Election.Resign.
	ErrResigned = errors.New("mpsync: leadership resigned")
)

// LockedError is the error of an acquisition refused because the lock is
// held: TryLock returns it (wrapped with detail), and so do transports
// from Acquire without wait. errors.Is(err, ErrLocked) holds for it, and
//
//	var e *mpsync.LockedError
//	if errors.As(err, &e) { log.Printf("%s holds %s", e.Holder, e.Name) }
//
// finds its fields: Name, the lock; Holder, the identity of the holder the
// backend saw when it refused (empty when it could not name one: an
// elector older than this field, a lock that was free but had waiters
// queued ahead, writes that kept conflicting); Detail, what stood in the
// way in words. By the time the caller reads Holder, the lock may have
// changed hands. It is one type with the one every backend and the
// elector's client return, so that it reaches the caller of any transport
// of this module unchanged; a Transport of another module returns it too.
type LockedError = core.LockedError

// Holder is the state of a lock as a Transport's Watch reports it, and as
// an Observer follows it. (The transports and the elector, in internal
// packages that this package imports and so cannot import it, use
// core.Holder, which has the same fields; Holder(h) converts.)
type Holder struct {
	// Identity of the current holder; empty when the lock is free.
	Identity string
	// Token is the current holder's fencing token. When the lock is free
	// it is no less than the last holder's token and less than the next
	// holder's: the last holder's, or, from an elector on the memory
	// backend that has forgotten an unused lock, its latest token of any
	// lock (0 if it never granted one). Tokens grow with every
	// acquisition but are not consecutive.
	Token uint64
}

// Transport carries locks between this package and an elector. Each method
// is one exchange: it does not retry, renew or deliver events on its own;
// Lock and Election do that. Implementations must be safe for concurrent
// use. Errors wrap this package's error values: ErrLocked (a refusal should
// be a *LockedError), ErrInvalidName, ErrUnavailable, ErrLockLost.
type Transport interface {
	// Acquire asks for the lock name on behalf of identity. If the lock is
	// free it is granted at once. Otherwise, if wait is false, Acquire
	// fails with a *LockedError (or an error wrapping ErrLocked); if wait
	// is true, it blocks
	// until granted or ctx ends, in which case it returns ctx.Err() and
	// leaves nothing held. ctx bounds only the acquisition: the returned
	// Lease lives until released or lost.
	Acquire(ctx context.Context, name, identity string, wait bool) (Lease, error)
	// Watch calls fn with the state of the lock name and again after each
	// change of holder, from the calling goroutine, until ctx ends (it
	// returns ctx.Err()) or the exchange fails. Changes during a slow fn
	// coalesce: the next call gets the latest state.
	Watch(ctx context.Context, name string, fn func(Holder)) error
}

// Lease is one acquisition of a lock as a Transport holds it. Its methods
// are safe for concurrent use.
type Lease interface {
	// Token is the acquisition's fencing token.
	Token() uint64
	// Validity is how long the holder may act on the lease, counted from
	// when Acquire was called.
	Validity() time.Duration
	// Done is closed when the lease ends: lost, released, or the exchange
	// that carries it broke.
	Done() <-chan struct{}
	// Err is nil while the lease lasts and after Release; after a loss it
	// says why.
	Err() error
	// Renew extends the lease and returns its new validity, counted from
	// when Renew was called. Once the lease is gone it fails with an error
	// wrapping ErrLockLost; other errors may be transient.
	Renew(ctx context.Context) (time.Duration, error)
	// Release gives the lock up. It is a no-op on a lease that has ended.
	Release(ctx context.Context) error
}

// An Option configures a Lock, an Election or an Observer. Options are checked by the
// constructor, which returns an error for an invalid one.
type Option func(*config) error

type config struct {
	transport Transport
	elector   string // address for the default HTTP transport
	identity  string
	logger    *zap.Logger
}

// DefaultElector is the elector address used when neither WithElector,
// WithTransport nor $MPSYNC_ELECTOR says otherwise.
const DefaultElector = "http://localhost:13131"

// WithTransport makes the Lock, Election or Observer use t instead of the
// shared HTTP transport to an elector.
func WithTransport(t Transport) Option {
	return func(c *config) error {
		if t == nil {
			return fmt.Errorf("mpsync: WithTransport(nil)")
		}
		c.transport = t
		return nil
	}
}

// WithElector makes the Lock, Election or Observer use the HTTP transport
// to the elector at addr ("http://host:port" or "host:port"). Without it
// the address is $MPSYNC_ELECTOR, else DefaultElector. All that name one
// address in a process share one HTTPTransport, and so one connection pool.
func WithElector(addr string) Option {
	return func(c *config) error {
		if addr == "" {
			return fmt.Errorf("mpsync: WithElector(\"\")")
		}
		c.elector = addr
		return nil
	}
}

// WithIdentity sets who this holder is, as other replicas see it in
// Event.Leader. The default is the host name and the process ID
// ("web-7f9c-1234"). Give each Lock or Election of one name in one process
// its own identity. An identity is 1 to 253 bytes of valid UTF-8 with no
// control characters; the constructor fails with an error wrapping
// ErrInvalidIdentity for any other.
func WithIdentity(id string) Option {
	return func(c *config) error {
		if err := core.ValidateIdentity(id); err != nil {
			return fmt.Errorf("mpsync: WithIdentity: %w", err)
		}
		c.identity = id
		return nil
	}
}

// WithLogger makes the Lock or Election log retries and losses to z. The
// default is silent.
func WithLogger(z *zap.Logger) Option {
	return func(c *config) error {
		if z == nil {
			return fmt.Errorf("mpsync: WithLogger(nil)")
		}
		c.logger = z
		return nil
	}
}

func newConfig(name string, opts []Option) (*config, error) {
	if err := core.ValidateName(name); err != nil {
		return nil, err
	}
	c := &config{logger: zap.NewNop()}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	if c.identity == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "mpsync"
		}
		c.identity = host + "-" + strconv.Itoa(os.Getpid())
		if err := core.ValidateIdentity(c.identity); err != nil {
			return nil, fmt.Errorf("mpsync: default identity from the host name: %w (give one with WithIdentity)", err)
		}
	}
	if c.transport == nil {
		addr := c.elector
		if addr == "" {
			addr = os.Getenv("MPSYNC_ELECTOR")
		}
		if addr == "" {
			addr = DefaultElector
		}
		t, err := sharedHTTPTransport(addr)
		if err != nil {
			return nil, err
		}
		c.transport = t
	}
	c.logger = c.logger.With(zap.String("lock", name), zap.String("identity", c.identity))
	return c, nil
}

type tokenKey struct{}

// FencingToken returns the fencing token of the acquisition whose
// leadership context is ctx (or a context derived from it), and false if
// ctx is not a leadership context. A later acquisition of the same lock,
// by anyone, always has a greater token.
func FencingToken(ctx context.Context) (uint64, bool) {
	tok, ok := ctx.Value(tokenKey{}).(uint64)
	return tok, ok
}
