package kube

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/clock"
	"github.com/mpsync/mpsync/internal/core"
)

// Transport is the in-process transport: an mpsync.Transport that keeps
// every lock as a Lease through this process's own Backend, with no elector
// in between. Create it with NewTransport and pass it to mpsync.WithTransport;
// every Lock and Election that uses it shares its one Lease informer and its
// one client-side rate limiter. It is safe for concurrent use.
//
// Its Leases are the elector's Leases, written the same way
// ("<client identity>@<name>#<session>", the token in
// spec.leaseTransitions): an in-process holder and an elector's holder of
// one name exclude each other, and tokens increase across both.
//
// The trade-off against the elector: when this process dies, nothing is
// left to release its Leases, so others take them about one lease duration
// after its last renewal, where an elector notices its client's connection
// drop and releases at once.
type Transport struct {
	b        *Backend
	qps      float64
	lease    time.Duration
	maxLocks int
}

var _ mpsync.Transport = (*Transport)(nil)

// An Option configures a Transport. NewTransport checks the options and
// fails with an error for an invalid one.
type Option func(*transportOptions) error

type transportOptions struct {
	qps   float64
	burst int
	lease time.Duration
	name  string
	log   *zap.Logger
	clock clock.Clock
}

// WithRateLimit sets the Transport's client-side limit on its requests to
// the API server: qps requests per second sustained, burst at once. The
// default is DefaultQPS and DefaultBurst, as for the elector (--kube-qps,
// --kube-burst); the limit also sets how many locks the Transport may hold
// (MaxLocksFor). qps must be finite and above zero (as a float32, which
// client-go uses), burst at least 1. The rest.Config's own QPS, Burst and
// RateLimiter are ignored.
func WithRateLimit(qps float64, burst int) Option {
	return func(o *transportOptions) error {
		if q := float32(qps); !(q > 0) || math.IsInf(float64(q), 0) {
			return fmt.Errorf("kube: WithRateLimit: qps %v is not a finite number above 0", qps)
		}
		if burst < 1 {
			return fmt.Errorf("kube: WithRateLimit: burst %d is less than 1", burst)
		}
		o.qps, o.burst = qps, burst
		return nil
	}
}

// WithLeaseDuration sets the lease duration of every lock taken through
// the Transport: a holder that stops renewing (its process died) loses the
// lock this long after its last renewal. The default is
// DefaultLeaseDuration, as for the elector (--lease-duration); at least
// one second.
func WithLeaseDuration(d time.Duration) Option {
	return func(o *transportOptions) error {
		if d < core.MinLease {
			return fmt.Errorf("kube: WithLeaseDuration: %v is shorter than %v", d, core.MinLease)
		}
		o.lease = d
		return nil
	}
}

// WithName sets the name written after '@' in the holder identity of every
// Lease the Transport takes, as an elector writes its own identity there,
// so that `kubectl get leases` shows which pod holds what. The default is
// $POD_NAME, else the host name, as for the elector (--identity). It must
// be a valid identity (mpsync.WithIdentity) without '@' or '#'.
func WithName(name string) Option {
	return func(o *transportOptions) error {
		if name == "" {
			return errors.New("kube: WithName(\"\")")
		}
		o.name = name
		return nil
	}
}

// WithLogger makes the Transport log its Lease watch and its failed
// requests to z. The default is silent.
func WithLogger(z *zap.Logger) Option {
	return func(o *transportOptions) error {
		if z == nil {
			return errors.New("kube: WithLogger(nil)")
		}
		o.log = z
		return nil
	}
}

// WithTestClock is for fault tests only: it runs the Transport's Lease
// logic on a clock offset ahead of the machine's (negative: behind) and
// running rate times as fast (rate 0.5 to 2), as the elector's
// --test-clock-offset and --test-clock-rate do, to show that nothing
// depends on agreeing with other hosts' clocks. The SDK's own deadlines
// stay on the machine's clock. A rate off by more than the timing model's
// drift (1%) breaks mutual exclusion; never use it in production.
func WithTestClock(offset time.Duration, rate float64) Option {
	return func(o *transportOptions) error {
		c, err := clock.NewSkewed(offset, rate)
		if err != nil {
			return fmt.Errorf("kube: WithTestClock: %w", err)
		}
		o.clock = c
		return nil
	}
}

// NewTransport returns a Transport that keeps locks as Leases in namespace,
// talking to the API server that cfg names (rest.InClusterConfig in a pod,
// whose service account needs get, list, watch, create and update on
// leases in namespace). cfg is copied, not kept. It starts the Lease
// informer and returns without waiting for the API server; the first
// Acquire or Watch waits for the informer to sync. It fails for a nil cfg,
// an invalid namespace or option, or a default name (no $POD_NAME, and a
// host name that is no valid identity) that would not do.
//
// Close the Transport when done with it.
func NewTransport(cfg *rest.Config, namespace string, opts ...Option) (*Transport, error) {
	if cfg == nil {
		return nil, errors.New("kube: NewTransport: nil *rest.Config (rest.InClusterConfig gives a pod's own)")
	}
	o := transportOptions{qps: DefaultQPS, burst: DefaultBurst, lease: DefaultLeaseDuration, log: zap.NewNop()}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if o.name == "" {
		o.name = os.Getenv("POD_NAME")
		if o.name == "" {
			host, err := os.Hostname()
			if err != nil {
				return nil, fmt.Errorf("kube: NewTransport: no $POD_NAME and no host name (give one with WithName): %w", err)
			}
			o.name = host
		}
	}
	if err := core.ValidateIdentity(o.name); err != nil {
		return nil, fmt.Errorf("kube: NewTransport: name %q (WithName, else $POD_NAME or the host name): %w", o.name, err)
	}
	if strings.ContainsAny(o.name, "@#") {
		return nil, fmt.Errorf("kube: NewTransport: name %q (WithName, else $POD_NAME or the host name) contains '@' or '#', which separate the parts of a holder identity", o.name)
	}
	t := &Transport{qps: o.qps, lease: o.lease, maxLocks: MaxLocksFor(o.qps, o.lease)}
	if t.maxLocks < 1 {
		return nil, fmt.Errorf("kube: NewTransport: a rate limit of %g requests/s cannot keep even one lock of lease duration %v renewed (kube.MaxLocksFor); raise it with WithRateLimit", o.qps, o.lease)
	}
	rc := rest.CopyConfig(cfg)
	rc.QPS = float32(o.qps)
	rc.Burst = o.burst
	rc.RateLimiter = nil
	if rc.UserAgent == "" {
		rc.UserAgent = "mpsync-inprocess"
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kube: NewTransport: %w", err)
	}
	t.b, err = New(Config{
		Client:        cs,
		Namespace:     namespace,
		Identity:      o.name,
		LeaseDuration: o.lease,
		MaxLocks:      t.maxLocks,
		Clock:         o.clock,
		Logger:        o.log.With(zap.String("transport", "in-process")),
	})
	if err != nil {
		return nil, fmt.Errorf("kube: NewTransport: %w", err)
	}
	return t, nil
}

// MaxLocks is the most locks the Transport holds at once, acquisitions in
// flight included: MaxLocksFor its rate limit and lease duration. An
// Acquire beyond it fails at once with an error wrapping
// mpsync.ErrUnavailable.
func (t *Transport) MaxLocks() int { return t.maxLocks }

// Acquire implements mpsync.Transport: it takes the Lease name for
// identity. Without wait, if the Lease watch has not synced with the API
// server within five seconds, it fails with an error wrapping
// mpsync.ErrUnavailable. Errors wrap mpsync.ErrLocked (held by another),
// mpsync.ErrInvalidName, mpsync.ErrInvalidIdentity or mpsync.ErrUnavailable
// (the API server failed, the Transport is closed, or it holds MaxLocks
// locks already); ctx.Err() if ctx ended first, leaving nothing held.
func (t *Transport) Acquire(ctx context.Context, name, identity string, wait bool) (mpsync.Lease, error) {
	if !wait {
		if err := t.syncedWithin(ctx, maxRequestTimeout); err != nil {
			return nil, err
		}
	}
	g, err := t.b.Acquire(ctx, core.Request{Name: name, Identity: identity, Wait: wait})
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return nil, err
		}
		return nil, t.acquireError(name, err)
	}
	return &inprocLease{Grant: g}, nil
}

// syncedWithin waits up to d for the Lease watch to sync, and fails with
// an error wrapping mpsync.ErrUnavailable if it does not.
func (t *Transport) syncedWithin(ctx context.Context, d time.Duration) error {
	sctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	err := t.b.waitSynced(sctx)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, core.ErrClosed):
		return closedError()
	}
	return fmt.Errorf("%w: kube: the Lease watch of namespace %s has not synced with the API server in %v: %w",
		mpsync.ErrUnavailable, t.b.ns, d, t.b.Ready(ctx))
}

func closedError() error {
	return fmt.Errorf("%w: kube: in-process transport closed: %w", mpsync.ErrUnavailable, core.ErrClosed)
}

// acquireError makes an error of the Backend's Acquire wrap one of the
// values mpsync.Transport promises, and rewords the capacity refusal for
// an in-process holder.
func (t *Transport) acquireError(name string, err error) error {
	switch {
	case errors.Is(err, core.ErrClosed):
		return closedError()
	case errors.Is(err, core.ErrUnavailable) && t.atCapacity():
		return fmt.Errorf("%w: kube: this in-process transport holds %d locks, the most its client-side rate limit "+
			"of %g requests/s can keep renewed at lease duration %v (kube.WithRateLimit raises it); not taking %s/%s",
			mpsync.ErrUnavailable, t.maxLocks, t.qps, t.lease, t.b.ns, name)
	case errors.Is(err, core.ErrLocked), errors.Is(err, core.ErrInvalidName),
		errors.Is(err, core.ErrInvalidIdentity), errors.Is(err, core.ErrUnavailable):
		return err
	}
	return fmt.Errorf("%w: %w", mpsync.ErrUnavailable, err)
}

// atCapacity reports whether the Backend holds as many locks as it may.
func (t *Transport) atCapacity() bool {
	t.b.mu.Lock()
	defer t.b.mu.Unlock()
	return t.maxLocks > 0 && t.b.held >= t.maxLocks
}

// Watch implements mpsync.Transport: it calls fn with the holder of the
// Lease name, as the client identity an SDK gave (for holders through an
// elector or another Transport) or as written (any other holder, such as a
// client-go candidate), and again after each change, until ctx ends (it
// returns ctx.Err()) or the Transport closes (an error wrapping
// mpsync.ErrUnavailable).
func (t *Transport) Watch(ctx context.Context, name string, fn func(mpsync.Holder)) error {
	err := t.b.Watch(ctx, name, func(h core.Holder) { fn(mpsync.Holder(h)) })
	if errors.Is(err, core.ErrClosed) {
		return closedError()
	}
	return err
}

// Close releases every Lease the Transport holds (the leadership contexts
// of their Locks and Elections end with mpsync.ErrLockLost), fails waiting
// Acquires and Watches, stops the Lease informer and waits for its
// goroutines: at most five seconds. The error joins the releases that
// failed, whose Leases others take after their duration. Later calls
// return nil, and the Transport refuses requests after Close.
func (t *Transport) Close() error {
	return t.b.Close(context.Background())
}

// inprocLease is an mpsync.Lease over a Backend grant, whose Validity
// already counts from the Acquire call, wait included.
type inprocLease struct {
	backend.Grant
}

// Renew implements mpsync.Lease.
func (l *inprocLease) Renew(ctx context.Context) (time.Duration, error) {
	v, err := l.Grant.Renew(ctx)
	if err != nil && ctx.Err() == nil && !errors.Is(err, core.ErrLockLost) && !errors.Is(err, core.ErrUnavailable) {
		return 0, fmt.Errorf("%w: %w", mpsync.ErrUnavailable, err)
	}
	return v, err
}
