// Package kube is the elector's Kubernetes backend: every lock is a
// coordination.k8s.io/v1 Lease in the elector's namespace, kept through
// client-go. etcd behind the API server gives it consensus; this package
// adds the timing model of docs/DESIGN.md on top of resourceVersion-conditioned
// writes.
//
// # How a Lease is used
//
// One Lease per lock name. The elector creates it (labelled
// app.kubernetes.io/managed-by=mpsync-elector) the first time the lock is
// taken and never deletes it. An acquisition writes
// spec.holderIdentity = "<client identity>@<elector identity>#<session>",
// a fresh value for every acquisition, increments spec.leaseTransitions (the
// fencing token), and sets acquireTime and renewTime to the elector's clock
// and leaseDurationSeconds to the lease duration rounded up to whole seconds.
// A renewal rewrites renewTime; a release clears holderIdentity, or hands
// the Lease to the next waiter in the same write (below), and the token
// counter only grows. Every write is an Update conditioned on the
// resourceVersion last seen (or a Create), so of two electors racing for a
// lock one gets a conflict and loses; there are never two winners.
//
// # Legacy locks across an elector restart
//
// A lock taken for Metaparticle Sync's clients (core.Request.Legacy) is held
// in the elector's own identity, and its session part is marked:
// "<elector>@<elector>#legacy-<instance>-<n>". When the elector restarts
// (a crash, an OOM kill, a rollout of the sidecar alone) its clients keep
// renewing with PUT; the new process, of the same identity but another
// random instance, resumes such a lease at once: a legacy Acquire for the
// same identity that finds a live Lease naming a marked session of this
// identity and another instance writes its own session over it, an Update
// conditioned on the version seen like every write, so that if another
// elector takes the Lease meanwhile only one of them wins. The resume keeps
// spec.leaseTransitions and spec.acquireTime: the same holder continues,
// and the conditional write proves nobody else held the Lease in between,
// so the token need not grow (Metaparticle Sync's clients never read it).
// Nothing else is resumed: a v1 hold carries no marker, whatever its client
// identity, and the marker is in the part only the backend writes; a
// Lease not renewed for its duration is free to anyone and is taken with
// a new token. Electors of one identity are one legacy holder, so
// electors must not share an identity if their legacy clients are to
// exclude each other.
//
// # Waiting without polling
//
// Each Backend runs one informer over all the Leases of its namespace (no
// label selector, so that Leases written by client-go's leader election are
// seen too) and remembers, for each Lease, the resourceVersion it last saw
// and the moment, on this process's monotonic clock, when it first saw the
// Lease's spec as it is (a write changing only metadata, such as the queue
// below, does not restart it; every acquisition and renewal changes the
// spec). A waiter learns of a release from the watch: a release that
// hands it the Lease (below) is its grant, and a release that leaves the
// Lease free it takes with one write at once. A
// Lease that still names a holder is taken only after its
// spec.leaseDurationSeconds (as written in the Lease) of this elector's
// time since it last saw the Lease's spec change; wall-clock timestamps written by other hosts (renewTime,
// acquireTime) decide nothing. This is the rule client-go's LeaderElector
// follows with its observed time, which makes the two compatible: a client-go
// candidate using a LeaseLock and mpsync clients contending for one Lease
// never both lead.
//
// # Taking turns across electors
//
// Waiters of one Backend queue first come first. Across electors they
// take turns through three annotations of the Lease that only mpsync
// electors write (QueueAnnotation, OffersAnnotation, SuccessorAnnotation):
//
//   - mpsync.github.io/queue, a JSON array of the electors waiting for the
//     Lease, oldest first, each as "<elector identity>#<instance>" (the
//     Backend's random session prefix, so that a restarted elector is a
//     new member). An elector with a waiter for a Lease held or reserved
//     by someone else adds itself with one conditional Update, once: it
//     stays while it has waiters, since each release of its own puts it
//     back at the tail in the same write if it has more.
//   - mpsync.github.io/offers, for each member in the queue, its offer:
//     the holder identity ("<client>@<elector>#<session>", a session of
//     its own) it would write for its first waiter, and that waiter's
//     lease duration. A member publishes its offer in the write that puts
//     it in the queue.
//   - mpsync.github.io/next, on a free Lease: a successor that made no
//     offer (an elector of an older version), named by a release.
//
// # Handing over in one write
//
// A release (the write ending a holder's term) pops the head of the queue,
// other than the releaser, and writes its offer as spec.holderIdentity with
// the next spec.leaseTransitions and the offer's lease duration, putting
// the releaser at the tail with an offer of its own if it still has
// waiters; with nobody else queued it writes a new offer of its own next
// waiter. The successor's watch shows the Lease naming its offer, and it
// grants the lock to that waiter with no write of its own: the grant's
// validity counts from when the successor sent the write that published
// the offer. That is safe by the rule every write follows: the Lease names
// the offer only because the releaser read it from the successor's write,
// so the handover was written after that write landed, after it was sent;
// and everyone else counts the new holder's lease from when they saw the
// handover, later still. The offer's session ends in random digits, so
// that no Lease can name it before it was published. A successor whose
// offer is older than half a validity confirms the Lease with a write of
// its own (same holder, same token, a later renewTime) before it grants
// it, so that a grant is never short of time; one handed a Lease whose
// duration is shorter than its waiter's lease, or whose token is not above
// every token it saw before (an edited annotation, a Lease made again),
// takes it afresh with a write of its own. One whose first waiter has left
// releases the Lease like any lease naming a session of its own that holds
// nothing, to its next waiter if it has one (it keeps its turn) or else
// on. A successor that is gone costs one lease duration, like any holder. A
// member without an offer is named in mpsync.github.io/next instead and
// takes the free Lease with its own conditional write; other electors
// leave it to that member for the Lease's duration of their own time.
//
// The annotations decide only who is next: holderIdentity alone says who
// holds, every write is still conditioned on the resourceVersion, and
// every acquisition still writes a fresh holder identity and the next
// token. client-go candidates and older electors ignore the annotations
// (and keep them, as they update the object they read): safe, merely
// unfair. A holder's renewals and release build on the newest version its
// watch shows naming it, so the joins of others cost it no conflict.
//
// # Losing a lock
//
// A grant ends with core.ErrRevoked when the watch shows the Lease naming
// another holder (taken after an expiry, or edited by an operator) or
// deleted, and with core.ErrExpired at its local validity deadline when
// renewals keep failing (the API server down or unreachable). The SDK's own
// timer ends the client's leadership context first, since it counts from
// the earlier moment it sent its request.
package kube

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	coordinformers "k8s.io/client-go/informers/coordination/v1"
	"k8s.io/client-go/kubernetes"
	coordclient "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/clock"
	"github.com/mpsync/mpsync/internal/core"
)

const (
	// ManagedByLabel is the label the elector puts on every Lease it
	// creates, with the value ManagedBy. Leases without it (created by
	// client-go's leader election, say) are used all the same.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	// ManagedBy is the value of ManagedByLabel on Leases the elector
	// creates.
	ManagedBy = "mpsync-elector"
	// DefaultLeaseDuration is the lease duration when Config.LeaseDuration
	// is zero: client-go's usual 15 seconds.
	DefaultLeaseDuration = 15 * time.Second
	// DefaultQPS is the default sustained rate, in requests per second, of
	// the elector's client-side limit on its requests to the API server;
	// RESTConfig sets it. An elector holding N locks at lease duration D
	// renews about 3N/D times per second (each lock a third of the way
	// through its lease), plus one request per acquisition and release, so
	// the default suits up to about 250 locks at 15 s.
	DefaultQPS = 50
	// DefaultBurst is the default number of requests the elector may send
	// to the API server at once, before DefaultQPS paces the rest;
	// RESTConfig sets it.
	DefaultBurst = 100
	// closeTimeout bounds Close when its context has no deadline.
	closeTimeout = 5 * time.Second
	// closeReleasers bounds the releases Close runs at once: beyond that
	// they would only queue in the client's rate limiter, each holding a
	// goroutine.
	closeReleasers = 32
	// maxRequestTimeout bounds every single request to the API server.
	maxRequestTimeout = 5 * time.Second
)

// Config configures a Backend. Client, Namespace and Identity are required.
type Config struct {
	// Client talks to the API server; see RESTConfig.
	Client kubernetes.Interface
	// Namespace holds the Leases: the elector's own (its pod's).
	Namespace string
	// Identity names this elector (its pod name); it is part of every
	// holder identity it writes, so that `kubectl get leases` shows which
	// pod holds what. It must not contain '@' or '#'. Electors should not
	// share one, though nothing breaks if they do: each Backend also
	// tells its own sessions apart by a random prefix.
	Identity string
	// LeaseDuration is the lease duration of a core.Request whose Lease is
	// zero; zero means DefaultLeaseDuration. At least core.MinLease.
	LeaseDuration time.Duration
	// Logger receives the backend's logs; nil means none.
	Logger *zap.Logger
	// MaxLocks is the most locks the Backend holds at once (acquisitions
	// in flight included); an Acquire that would take one more fails at
	// once with an error wrapping core.ErrUnavailable that says so. Zero
	// means no limit. An elector whose client-side rate limit cannot renew
	// all its locks in time loses them all together (its renewals queue
	// behind each other past their deadlines), so the elector sets this
	// with MaxLocksFor, to refuse the lock that would overload it instead.
	MaxLocks int
	// Clock times every decision of the backend (when a lease may be
	// taken, when a grant's validity ends) and writes acquireTime and
	// renewTime; nil means the machine's. The fault tests give electors
	// skewed clocks to show that nothing depends on agreeing with others.
	Clock clock.Clock
}

// MaxLocksFor returns the most locks of lease duration lease whose renewals
// fit in three quarters of qps requests per second: the SDK renews a lock
// every third of its validity (core.Validity), so N locks need about
// 3N/core.Validity(lease) renewals per second. The last quarter is left for
// acquisitions, releases and retries. At DefaultQPS and a 15 s lease it is
// 180.
func MaxLocksFor(qps float64, lease time.Duration) int {
	return int(0.75 * qps * core.Validity(lease).Seconds() / 3)
}

// RESTConfig returns the client configuration for an elector: from the
// kubeconfig file at path kubeconfig (its current context), or, when
// kubeconfig is empty, the in-cluster service account of the pod. It raises
// client-go's default client-side rate limit (5 requests per second, burst
// 10), which an elector renewing many locks would hit, to DefaultQPS and
// DefaultBurst. The caller owns the result and may change rc.QPS and
// rc.Burst before building a client from it, for an elector holding more
// locks than the defaults suit.
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	var (
		rc  *rest.Config
		err error
	)
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		if kubeconfig == "" {
			return nil, fmt.Errorf("kube: in-cluster configuration (give a kubeconfig outside a pod): %w", err)
		}
		return nil, fmt.Errorf("kube: kubeconfig %s: %w", kubeconfig, err)
	}
	rc.QPS = DefaultQPS
	rc.Burst = DefaultBurst
	rc.UserAgent = "mpsync-elector"
	return rc, nil
}

// Backend keeps locks as Leases. Create it with New; it is safe for
// concurrent use. Close it to release what it holds and stop its watch.
type Backend struct {
	client   coordclient.LeaseInterface
	ready    rest.Interface // for Ready's /readyz; nil if the client has none
	ns       string
	identity string
	lease    time.Duration
	maxLocks int
	log      *zap.Logger
	clock    clock.Clock
	instance string // random, unique to this Backend: the prefix of its sessions

	informer     cache.SharedIndexInformer
	synced       <-chan struct{} // closed when the handler has had the initial list
	stopInformer context.CancelFunc
	informerDone chan struct{}

	done      chan struct{} // closed by Close
	closeDone chan struct{} // closed when Close has finished
	active    sync.WaitGroup
	orphans   sync.WaitGroup

	mu         sync.Mutex
	leases     map[string]*lease
	watchErr   error // the lease watch's last failure, for Ready
	held       int   // grants not yet ended, and writes in flight that may make one
	sessions   uint64
	closed     bool
	orphansEnd bool // no more orphan releases may start
}

var _ backend.Backend = (*Backend)(nil)

// New validates cfg and returns a Backend whose informer has started
// watching the Leases of cfg.Namespace. It does not wait for the API
// server: Ready reports when the watch has synced, and Acquire and Watch
// wait for that.
func New(cfg Config) (*Backend, error) {
	if err := checkConfig(cfg); err != nil {
		return nil, err
	}
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("kube: session prefix: %w", err)
	}
	b := &Backend{
		client:       leaseClient{cfg.Client.CoordinationV1().Leases(cfg.Namespace)},
		ns:           cfg.Namespace,
		identity:     cfg.Identity,
		lease:        cfg.LeaseDuration,
		maxLocks:     cfg.MaxLocks,
		log:          cfg.Logger,
		clock:        cfg.Clock,
		instance:     hex.EncodeToString(rnd[:]),
		done:         make(chan struct{}),
		closeDone:    make(chan struct{}),
		informerDone: make(chan struct{}),
		leases:       make(map[string]*lease),
	}
	if b.lease == 0 {
		b.lease = DefaultLeaseDuration
	}
	if b.log == nil {
		b.log = zap.NewNop()
	}
	if b.clock == nil {
		b.clock = clock.Real{}
	}
	b.log = b.log.With(zap.String("backend", "kubernetes"), zap.String("namespace", b.ns))
	if rc := cfg.Client.CoordinationV1().RESTClient(); rc != nil {
		if r, ok := rc.(*rest.RESTClient); !ok || r != nil {
			b.ready = rc
		}
	}

	b.informer = coordinformers.NewLeaseInformer(cfg.Client, cfg.Namespace, 0, cache.Indexers{})
	if err := b.informer.SetTransform(stripManagedFields); err != nil {
		return nil, fmt.Errorf("kube: lease informer: %w", err)
	}
	reg, err := b.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { b.onEvent(obj, false) },
		UpdateFunc: func(_, obj any) { b.onEvent(obj, false) },
		DeleteFunc: func(obj any) { b.onEvent(obj, true) },
	})
	if err != nil {
		return nil, fmt.Errorf("kube: lease informer: %w", err)
	}
	b.synced = reg.HasSyncedChecker().Done()
	if err := b.informer.SetWatchErrorHandlerWithContext(b.onWatchError); err != nil {
		return nil, fmt.Errorf("kube: lease informer: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.stopInformer = cancel
	go func() {
		defer close(b.informerDone)
		b.informer.RunWithContext(ctx)
	}()
	b.log.Info("kubernetes backend: one Lease per lock",
		zap.String("identity", b.identity), zap.Duration("leaseDuration", b.lease), zap.String("sessionPrefix", b.instance), zap.Int("maxLocks", b.maxLocks))
	return b, nil
}

// leaseClient is the Lease client of a Backend: every Lease the API server
// answers with comes without metadata.managedFields (stripManagedFields),
// as the informer's do.
type leaseClient struct{ coordclient.LeaseInterface }

// Create creates lease and returns what the API server made of it.
func (c leaseClient) Create(ctx context.Context, lease *coordinationv1.Lease, opts metav1.CreateOptions) (*coordinationv1.Lease, error) {
	res, err := c.LeaseInterface.Create(ctx, lease, opts)
	return stripLease(res), err
}

// Update updates lease and returns what the API server made of it.
func (c leaseClient) Update(ctx context.Context, lease *coordinationv1.Lease, opts metav1.UpdateOptions) (*coordinationv1.Lease, error) {
	res, err := c.LeaseInterface.Update(ctx, lease, opts)
	return stripLease(res), err
}

// Get reads the Lease name.
func (c leaseClient) Get(ctx context.Context, name string, opts metav1.GetOptions) (*coordinationv1.Lease, error) {
	res, err := c.LeaseInterface.Get(ctx, name, opts)
	return stripLease(res), err
}

// stripManagedFields is the informer's transform: it drops
// metadata.managedFields from every Lease before the informer keeps it.
// The Backend never reads them, and they are most of a Lease's size (a
// few hundred bytes for each of the thousands of Leases a busy elector
// keeps). Writes built from a Lease without them leave the API server's
// record of them as it was: an Update whose object has no managedFields
// keeps the live object's.
func stripManagedFields(obj any) (any, error) {
	if l, ok := obj.(*coordinationv1.Lease); ok {
		stripLease(l)
	}
	return obj, nil
}

// stripLease drops l's metadata.managedFields, in place, and returns l
// (nil for nil).
func stripLease(l *coordinationv1.Lease) *coordinationv1.Lease {
	if l != nil {
		l.ManagedFields = nil
	}
	return l
}

// checkConfig reports what in cfg New cannot work with.
func checkConfig(cfg Config) error {
	idErr := core.ValidateIdentity(cfg.Identity)
	switch {
	case cfg.Client == nil:
		return errors.New("kube: Config.Client is nil")
	case idErr != nil:
		return fmt.Errorf("kube: Config.Identity: %w", idErr)
	case strings.ContainsAny(cfg.Identity, "@#"):
		return fmt.Errorf("kube: Config.Identity %q contains '@' or '#', which separate the parts of a holder identity", cfg.Identity)
	case cfg.LeaseDuration != 0 && cfg.LeaseDuration < core.MinLease:
		return fmt.Errorf("kube: lease duration %v is shorter than %v", cfg.LeaseDuration, core.MinLease)
	case cfg.MaxLocks < 0:
		return fmt.Errorf("kube: Config.MaxLocks %d is negative", cfg.MaxLocks)
	}
	if errs := validation.IsDNS1123Label(cfg.Namespace); len(errs) > 0 {
		return fmt.Errorf("kube: namespace %q: %s", cfg.Namespace, strings.Join(errs, "; "))
	}
	return nil
}

// requestTimeout bounds one request about a lease of duration d: a write
// that takes longer than half the lease is worth little.
func requestTimeout(d time.Duration) time.Duration {
	return min(d/2, maxRequestTimeout)
}

// waitSynced waits until the informer has delivered the initial list of
// Leases. It returns ctx.Err() or core.ErrClosed if those come first.
func (b *Backend) waitSynced(ctx context.Context) error {
	select {
	case <-b.synced:
		return nil
	case <-b.done:
		return core.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Watch implements backend.Backend: it calls fn with the state of the lock
// name and again after every change of holder or token, from the calling
// goroutine, until ctx ends (it returns ctx.Err()) or the Backend closes
// (core.ErrClosed). The first call waits for the watch to sync. Changes
// during a slow fn coalesce: the next call gets the latest state. Holder
// identities written by mpsync electors are reported as the client's
// identity; any other holder (a client-go candidate) as written.
func (b *Backend) Watch(ctx context.Context, name string, fn func(core.Holder)) error {
	if err := core.ValidateName(name); err != nil {
		return err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return core.ErrClosed
	}
	st := b.leaseLocked(name)
	b.mu.Unlock()
	if err := b.waitSynced(ctx); err != nil {
		return err
	}
	var last core.Holder
	first := true
	for {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return core.ErrClosed
		}
		h := st.holder()
		changed := st.changed
		b.mu.Unlock()
		if first || h != last {
			first, last = false, h
			fn(h)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-b.done:
			return core.ErrClosed
		case <-changed:
		}
	}
}

// Waiting returns how many Acquire calls of this Backend wait for the lock
// name now: those queued first come first behind the lock's holder or
// another waiter.
func (b *Backend) Waiting(name string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if st := b.leases[name]; st != nil {
		return len(st.queue)
	}
	return 0
}

// onWatchError is the lease informer's watch error handler (instead of
// client-go's, which logs through klog): a refusal by the API server, such
// as a service account without the RoleBinding, is one error line in the
// elector's log saying which verb on which resource was refused; other
// failures are warnings; a watch that ended or expired, as watches do, is
// not logged above debug. Ready reports the last failure until the watch
// has synced.
func (b *Backend) onWatchError(_ context.Context, _ *cache.Reflector, err error) {
	b.mu.Lock()
	b.watchErr = err
	b.mu.Unlock()
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || apierrors.IsResourceExpired(err) || apierrors.IsGone(err):
		b.log.Debug("lease watch ended; resuming", zap.Error(err))
	case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
		b.log.Error("the API server refused the lease watch; the elector needs get, list, watch, create and update on leases in its namespace (examples/kubernetes/rbac.yaml)", zap.Error(err))
	default:
		b.log.Warn("lease watch failed; retrying", zap.Error(err))
	}
}

// Ready implements backend.Backend: nil when the lease watch has synced and
// the API server answers its /readyz, else an error saying which is not.
func (b *Backend) Ready(ctx context.Context) error {
	select {
	case <-b.done:
		return core.ErrClosed
	default:
	}
	select {
	case <-b.synced:
	default:
		b.mu.Lock()
		werr := b.watchErr
		b.mu.Unlock()
		if werr != nil {
			return fmt.Errorf("kube: lease watch has not synced with the API server yet: %w", werr)
		}
		return errors.New("kube: lease watch has not synced with the API server yet")
	}
	if b.ready == nil {
		return nil
	}
	if err := b.ready.Get().AbsPath("/readyz").Do(ctx).Error(); err != nil {
		return fmt.Errorf("kube: API server not ready: %w", err)
	}
	return nil
}

// Close implements backend.Backend. It ends every grant this Backend holds
// (their Err reports core.ErrClosed) and releases their Leases, fails every
// waiting Acquire and every Watch with core.ErrClosed, and stops the
// informer. It returns when all of that has finished or ctx ends (without a
// deadline on ctx, after at most five seconds); the error joins the
// releases that failed, whose Leases others take after their duration.
// Later calls return nil once the first has finished.
func (b *Backend) Close(ctx context.Context) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		select {
		case <-b.closeDone:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	defer close(b.closeDone)
	b.closed = true
	close(b.done)
	type held struct {
		st *lease
		g  *grant
	}
	var all []held
	for _, st := range b.leases {
		if g := st.grant; g != nil {
			g.endLocked(core.ErrClosed)
			st.releasing = g.holder
			all = append(all, held{st, g})
		}
		st.broadcast()
	}
	b.mu.Unlock()

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, closeTimeout)
		defer cancel()
	}
	// Release them all, closeReleasers at a time: every error is kept
	// (errs), so the group's own first-error result is not used.
	errs := make([]error, len(all))
	var releases errgroup.Group
	releases.SetLimit(closeReleasers)
	for i, h := range all {
		releases.Go(func() error {
			errs[i] = b.release(ctx, h.st, h.g.lastWritten(), h.g.holder, h.g.lease, false)
			b.mu.Lock()
			h.st.releasing = ""
			b.mu.Unlock()
			return nil
		})
	}
	_ = releases.Wait()
	var err error
	if werr := waitCtx(ctx, &b.active); werr != nil {
		err = fmt.Errorf("kube: acquisitions still in flight at close: %w", werr)
	}
	b.stopInformer()
	<-b.informerDone
	b.mu.Lock()
	b.orphansEnd = true
	b.mu.Unlock()
	if werr := waitCtx(ctx, &b.orphans); werr != nil && err == nil {
		err = fmt.Errorf("kube: releases still in flight at close: %w", werr)
	}
	b.log.Info("closed", zap.Int("released", len(all)))
	return errors.Join(append(errs, err)...)
}

// waitCtx waits for wg or ctx, whichever comes first.
func waitCtx(ctx context.Context, wg *sync.WaitGroup) error {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// legacyMarker begins the session part of the holder identity of a legacy
// acquisition (core.Request.Legacy): "<elector>@<elector>#legacy-<instance>-<n>".
// Only the backend writes the session part, so no client identity can make
// a v1 hold look like a legacy one.
const legacyMarker = "legacy-"

// newSessionLocked returns a session name unique to this Backend, marked as
// legacy if legacy is true.
func (b *Backend) newSessionLocked(legacy bool) string {
	b.sessions++
	s := fmt.Sprintf("%s-%d", b.instance, b.sessions)
	if legacy {
		s = legacyMarker + s
	}
	return s
}

// holderIdentity is what an acquisition writes into spec.holderIdentity.
func (b *Backend) holderIdentity(client, session string) string {
	return client + "@" + b.identity + "#" + session
}

// ownsSession reports whether holder names a session of this Backend.
func (b *Backend) ownsSession(holder string) bool {
	_, elector, session, ok := splitHolder(holder)
	session = strings.TrimPrefix(session, legacyMarker)
	return ok && elector == b.identity && strings.HasPrefix(session, b.instance+"-")
}

// resumable reports whether holder names a legacy acquisition for client
// made by another process of this elector's identity (an earlier
// incarnation, before a restart), which a legacy Acquire for client may
// resume.
func (b *Backend) resumable(holder, client string) bool {
	c, elector, session, ok := splitHolder(holder)
	return ok && c == client && elector == b.identity &&
		strings.HasPrefix(session, legacyMarker) && !b.ownsSession(holder)
}

// splitHolder splits a holder identity written by an mpsync elector,
// "<client>@<elector>#<session>", into its parts. ok is false for any other
// string, such as a client-go candidate's identity.
func splitHolder(h string) (client, elector, session string, ok bool) {
	i := strings.LastIndexByte(h, '#')
	if i < 0 {
		return "", "", "", false
	}
	j := strings.LastIndexByte(h[:i], '@')
	if j <= 0 || j+1 == i || i+1 == len(h) || strings.IndexByte(h[j+1:i], '#') >= 0 {
		return "", "", "", false
	}
	return h[:j], h[j+1 : i], h[i+1:], true
}

// clientIdentity is the identity Watch reports for a holder identity: the
// client's part of one written by an mpsync elector, else all of it.
func clientIdentity(h string) string {
	if c, _, _, ok := splitHolder(h); ok {
		return c
	}
	return h
}

// leaseSeconds is spec.leaseDurationSeconds for a lease of duration d:
// rounded up, so that others never wait less than d.
func leaseSeconds(d time.Duration) int32 {
	return int32((d + time.Second - 1) / time.Second)
}

// transitions is spec.leaseTransitions of obj, 0 if unset or obj is nil.
func transitions(obj *coordinationv1.Lease) uint64 {
	if obj == nil || obj.Spec.LeaseTransitions == nil || *obj.Spec.LeaseTransitions < 0 {
		return 0
	}
	return uint64(*obj.Spec.LeaseTransitions)
}

// holderOf is spec.holderIdentity of obj, "" if unset or obj is nil.
func holderOf(obj *coordinationv1.Lease) string {
	if obj == nil || obj.Spec.HolderIdentity == nil {
		return ""
	}
	return *obj.Spec.HolderIdentity
}
