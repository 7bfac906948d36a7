// Command client is the fault harness's lock client (package
// github.com/mpsync/mpsync/test/faults). It holds locks and runs elections
// with the SDK, through one elector or, with -kubeconfig, in-process
// (kube.NewTransport, one Transport for the whole process), and appends to a history file (package
// history) when each of its leadership contexts began and ended, as this
// process saw it, with the fencing token.
//
// Usage:
//
//	client -elector ADDR -name NAME -history FILE [-locks a,b:4s] [-elections e]
//	       [-hold-max 60ms] [-run-max 3s] [-stale-extra 0] [-rand N] [-abandon]
//	client -kubeconfig FILE -namespace NS [-lease 15s]
//	       [-test-clock-offset 0 -test-clock-rate 1] -name NAME -history FILE ...
//
// With -kubeconfig (instead of -elector) the process keeps its locks as
// Leases in namespace -namespace itself, through one kube.NewTransport
// (lease duration -lease, the Transport's name NAME), as a Go service
// without a sidecar does; the fault harness points the kubeconfig at a
// proxy of its own, as it does an elector's. -test-clock-offset and
// -test-clock-rate run that Transport's Lease logic on a skewed clock
// (kube.WithTestClock, fault tests only); the SDK's deadlines stay on the
// machine's clock. SIGTERM closes the Transport after the last term.
//
// For each lock of -locks it loops: Lock, hold for a random time up to
// -hold-max (or the duration after the lock's name and a colon) while
// checking the context, Unlock. For each election of
// -elections it loops: Run an Election for a random time up to -run-max,
// then stop it (a leader resigns). Every term, of a lock or as leader, is
// one acquire record (the time Lock returned or the Leader event was read)
// and one end record: the earliest of the moment the context was seen done
// (context.AfterFunc), the term's local deadline (mpsync.ValidUntil) read
// at that moment, and the moment this process decided to end the term, if
// it did: when it called Unlock, stopped the election's round, or got
// SIGTERM. That decision comes before the context ends and so before the
// release, while the AfterFunc's goroutine may run after the next holder
// has begun. A term whose context is already over when it is first looked
// at is not recorded: its holder never acted on it.
//
// -abandon makes the client one that abandons its connections, on raw
// sockets instead of the SDK (see abandon.go); it takes only -locks.
//
// -stale-extra D is a test-only knob that breaks the guarantee on purpose:
// a term that ended because the lock was lost or expired (not by Unlock or
// by stopping) is recorded as ending D later, as if the client ignored the
// end of its term for D. The harness uses it to show that the checker
// catches overlaps.
//
// SIGTERM or SIGINT ends every term and election, records the ends, and
// exits 0. Exit status 1: the history cannot be written (the run is then
// worthless); 2: bad flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/kube"
	"github.com/mpsync/mpsync/test/faults/history"
)

// Backoff after a failed Lock (the elector down or restarting), doubling
// between these bounds.
const (
	minBackoff = 20 * time.Millisecond
	maxBackoff = 500 * time.Millisecond
)

// checkEvery is how often a holder looks at its context while it holds.
const checkEvery = 5 * time.Millisecond

func main() { os.Exit(run()) }

type client struct {
	elector    string
	transport  *kube.Transport // with -kubeconfig: every lock and election uses it
	name       string
	holdMax    time.Duration
	runMax     time.Duration
	staleExtra time.Duration
	abandon    bool
	mono       history.Mono
	w          *history.Writer

	stopAt   atomic.Int64   // when SIGTERM or SIGINT came (mono); 0 before
	ends     sync.WaitGroup // end records still to be written
	failed   atomic.Bool    // a record could not be written
	terms    atomic.Int64
	skipped  atomic.Int64
	lockErrs atomic.Int64
}

func run() int {
	c := &client{}
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	fs.StringVar(&c.elector, "elector", "", "elector `address` (host:port)")
	fs.StringVar(&c.name, "name", "", "this process's `name`: its identity and the client of its records")
	histPath := fs.String("history", "", "history `file` to append records to")
	locks := fs.String("locks", "", "comma-separated `names` of locks to loop Lock/Unlock on, each optionally with :DURATION, its own -hold-max")
	elections := fs.String("elections", "", "comma-separated `names` of elections to run")
	fs.DurationVar(&c.holdMax, "hold-max", 60*time.Millisecond, "longest `time` a lock is held before Unlock")
	fs.DurationVar(&c.runMax, "run-max", 3*time.Second, "longest `time` an Election runs before it is stopped")
	fs.DurationVar(&c.staleExtra, "stale-extra", 0, "test-only: record lost or expired terms as ending this `much` later")
	fs.BoolVar(&c.abandon, "abandon", false, abandonUsage)
	kubeconfig := fs.String("kubeconfig", "", "in-process: keep the locks as Leases through this `kubeconfig` (kube.NewTransport), with no elector")
	namespace := fs.String("namespace", "", "in-process: the Leases' `namespace`")
	leaseDur := fs.Duration("lease", 15*time.Second, "in-process: the lease `duration` (kube.WithLeaseDuration)")
	clockOffset := fs.Duration("test-clock-offset", 0, "in-process, fault tests only: run the Lease logic on a clock this `duration` ahead of the machine's")
	clockRate := fs.Float64("test-clock-rate", 1, "in-process, fault tests only: run the Lease logic on a clock this many times as fast as the machine's (`rate` 0.5 to 2)")
	randStart := fs.Uint64("rand", 0, "start `value` of the random choices, to repeat a run (0: from the clock)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	switch {
	case (c.elector == "") == (*kubeconfig == "") || c.name == "" || *histPath == "":
		fmt.Fprintln(os.Stderr, "client: -name, -history and one of -elector and -kubeconfig are required")
		return 2
	case *kubeconfig != "" && (*namespace == "" || c.abandon):
		fmt.Fprintln(os.Stderr, "client: -kubeconfig needs -namespace, and takes no -abandon")
		return 2
	case *kubeconfig == "" && (*namespace != "" || *clockOffset != 0 || *clockRate != 1):
		fmt.Fprintln(os.Stderr, "client: -namespace and the test clock flags go with -kubeconfig")
		return 2
	case *locks == "" && *elections == "":
		fmt.Fprintln(os.Stderr, "client: give -locks or -elections")
		return 2
	case c.abandon && (*locks == "" || *elections != ""):
		fmt.Fprintln(os.Stderr, "client: -abandon takes -locks and no -elections")
		return 2
	case c.holdMax <= 0 || c.runMax <= 0 || c.staleExtra < 0:
		fmt.Fprintln(os.Stderr, "client: -hold-max and -run-max must be positive, -stale-extra not negative")
		return 2
	}
	specs, err := parseLocks(*locks, c.holdMax)
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 2
	}
	if *randStart == 0 {
		*randStart = uint64(time.Now().UnixNano())
	}
	f, err := os.OpenFile(*histPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	c.mono = history.NewMono()
	c.w = history.NewWriter(f)
	if *kubeconfig != "" {
		if c.transport, err = newTransport(*kubeconfig, *namespace, c.name, *leaseDur, *clockOffset, *clockRate); err != nil {
			fmt.Fprintln(os.Stderr, "client:", err)
			return 2
		}
	}

	ctx := c.stopOnSignal()
	var wg sync.WaitGroup
	i := uint64(0)
	for _, l := range specs {
		i++
		rng := rand.New(rand.NewPCG(*randStart, i))
		if c.abandon {
			wg.Go(func() { c.abandonLoop(ctx, l.name, l.hold, rng) })
			continue
		}
		wg.Go(func() { c.lockLoop(ctx, l.name, l.hold, rng) })
	}
	for name := range strings.SplitSeq(*elections, ",") {
		if name == "" {
			continue
		}
		i++
		rng := rand.New(rand.NewPCG(*randStart, i))
		wg.Go(func() { c.electionLoop(ctx, name, rng) })
	}
	wg.Wait()
	if c.transport != nil {
		// Every Lock is unlocked and every Election over: Close releases
		// nothing that a term still uses.
		if err := c.transport.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "client %s: closing the in-process transport: %v\n", c.name, err)
		}
	}
	c.ends.Wait()
	if err := f.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		c.failed.Store(true)
	}
	fmt.Fprintf(os.Stderr, "client %s: %d terms, %d seen over at once, %d failed Lock calls\n",
		c.name, c.terms.Load(), c.skipped.Load(), c.lockErrs.Load())
	if c.failed.Load() {
		return 1
	}
	return 0
}

// stopOnSignal returns the context that SIGTERM or SIGINT ends, noting
// the moment first (stopAt). The handler stays installed until the
// process exits, so a second signal cannot kill it on its way out.
func (c *client) stopOnSignal() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		c.stopAt.Store(c.mono.Now())
		cancel()
	}()
	return ctx
}

// newTransport is the in-process transport of -kubeconfig.
func newTransport(kubeconfig, ns, name string, lease, offset time.Duration, rate float64) (*kube.Transport, error) {
	rc, err := kube.RESTConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	opts := []kube.Option{kube.WithName(name), kube.WithLeaseDuration(lease)}
	if offset != 0 || rate != 1 {
		opts = append(opts, kube.WithTestClock(offset, rate))
	}
	return kube.NewTransport(rc, ns, opts...)
}

// via is the option that makes a Lock or Election use this client's
// elector, or its in-process transport.
func (c *client) via() mpsync.Option {
	if c.transport != nil {
		return mpsync.WithTransport(c.transport)
	}
	return mpsync.WithElector(c.elector)
}

// lockSpec is one lock of -locks.
type lockSpec struct {
	name string
	hold time.Duration // longest hold
}

// parseLocks parses -locks: NAME or NAME:DURATION, comma-separated.
func parseLocks(s string, holdMax time.Duration) ([]lockSpec, error) {
	var specs []lockSpec
	for spec := range strings.SplitSeq(s, ",") {
		if spec == "" {
			continue
		}
		name, hold, found := strings.Cut(spec, ":")
		d := holdMax
		if found {
			var err error
			if d, err = time.ParseDuration(hold); err != nil || d <= 0 {
				return nil, fmt.Errorf("-locks %s: want NAME or NAME:DURATION", spec)
			}
		}
		specs = append(specs, lockSpec{name, d})
	}
	return specs, nil
}

func (c *client) write(r history.Record) {
	if err := c.w.Write(r); err != nil {
		if !c.failed.Swap(true) {
			fmt.Fprintln(os.Stderr, "client: writing the history:", err)
		}
	}
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// lockLoop holds the lock name over and over until ctx ends.
func (c *client) lockLoop(ctx context.Context, name string, holdMax time.Duration, rng *rand.Rand) {
	lk, err := mpsync.NewLock(name, c.via(), mpsync.WithIdentity(c.name))
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		c.failed.Store(true)
		return
	}
	backoff := minBackoff
	for ctx.Err() == nil {
		held, err := lk.Lock(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.lockErrs.Add(1)
			pause(ctx, backoff)
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = minBackoff
		var unlockAt atomic.Int64
		if c.begin(name, held, &unlockAt) {
			hold := time.Duration(rng.Int64N(int64(holdMax) + 1))
			work(held, hold)
			unlockAt.Store(c.mono.Now())
		}
		if err := lk.Unlock(); err != nil && ctx.Err() == nil {
			fmt.Fprintf(os.Stderr, "client %s: unlock %s: %v\n", c.name, name, err)
		}
	}
}

// work stands for the holder's work: it runs for d, or until held ends,
// looking at held as work that must stop with the term would.
func work(held context.Context, d time.Duration) {
	stop := time.NewTimer(d)
	defer stop.Stop()
	tick := time.NewTicker(checkEvery)
	defer tick.Stop()
	for held.Err() == nil {
		select {
		case <-held.Done():
			return
		case <-stop.C:
			return
		case <-tick.C:
		}
	}
}

// electionLoop runs the election name, in rounds of random length, until
// ctx ends.
func (c *client) electionLoop(ctx context.Context, name string, rng *rand.Rand) {
	for ctx.Err() == nil {
		el, err := mpsync.NewElection(name, c.via(), mpsync.WithIdentity(c.name))
		if err != nil {
			fmt.Fprintln(os.Stderr, "client:", err)
			c.failed.Store(true)
			return
		}
		d := time.Duration(rng.Int64N(int64(c.runMax))) + time.Millisecond
		round, cancel := context.WithCancelCause(ctx)
		var overAt atomic.Int64
		timer := time.AfterFunc(d, func() {
			overAt.Store(c.mono.Now())
			cancel(errResign)
		})
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = el.Run(round) // returns round.Err()
		}()
		for ev := range el.Events() {
			if ev.Role == mpsync.Leader {
				c.begin(name, ev.Context, &overAt)
			}
		}
		<-done
		timer.Stop()
		cancel(nil)
	}
}

// errResign ends an election round: its leader, if it is one, resigns.
var errResign = errors.New("client: election round over")

// begin records the start of the term whose leadership context is held,
// and arranges for its end to be recorded; endAt is where the holder notes
// when it decides to end the term (c.mono; 0 until then). It returns
// false, recording nothing, if held is already over: its holder never
// acted on it.
func (c *client) begin(lock string, held context.Context, endAt *atomic.Int64) bool {
	start := time.Now()
	if held.Err() != nil {
		c.skipped.Add(1)
		return false
	}
	// held was live after start: the end below is after start too.
	tok, ok := mpsync.FencingToken(held)
	if !ok {
		fmt.Fprintf(os.Stderr, "client %s: %s: not a leadership context\n", c.name, lock)
		c.failed.Store(true)
		return false
	}
	c.terms.Add(1)
	startT := c.mono.At(start)
	c.write(history.Record{Ev: history.Acquire, T: startT, Lock: lock, Client: c.name, Token: tok})
	c.ends.Add(1)
	context.AfterFunc(held, func() {
		defer c.ends.Done()
		end := time.Now()
		if vu, ok := mpsync.ValidUntil(held); ok && vu.Before(end) {
			end = vu
		}
		cause := context.Cause(held)
		voluntary := errors.Is(cause, mpsync.ErrUnlocked) || errors.Is(cause, context.Canceled) || errors.Is(cause, errResign)
		if !voluntary && c.staleExtra > 0 {
			end = end.Add(c.staleExtra)
		}
		endT := c.mono.At(end)
		for _, at := range []*atomic.Int64{endAt, &c.stopAt} {
			// The holder stopped acting when it decided to stop, or at
			// once if it decided before the term began.
			if d := at.Load(); voluntary && d != 0 && d < endT {
				endT = max(d, startT)
			}
		}
		c.write(history.Record{Ev: history.End, T: endT, Lock: lock, Client: c.name, Token: tok, Cause: causeWord(cause)})
	})
	return true
}

// causeWord names why a term ended, for the record.
func causeWord(err error) string {
	switch {
	case errors.Is(err, mpsync.ErrUnlocked):
		return "unlocked"
	case errors.Is(err, context.Canceled):
		return "stopped"
	case errors.Is(err, errResign):
		return "resigned"
	case errors.Is(err, mpsync.ErrExpired):
		return "expired"
	case errors.Is(err, mpsync.ErrRevoked):
		return "revoked"
	case errors.Is(err, mpsync.ErrUnavailable):
		return "elector-unavailable"
	case errors.Is(err, mpsync.ErrLockLost):
		return "lost"
	}
	return "other"
}
