// Command mpsync-locker drives mpsync.Lock for the benchmarks of the lock
// path through one elector.
//
// Usage:
//
//	mpsync-locker -elector ADDR -name LOCK -identity ID -mode handover
//	mpsync-locker -elector ADDR -name LOCK -identity ID -mode roundtrip [-duration 3s] [-interval 0]
//	mpsync-locker -elector ADDR -name LOCK -identity ID -mode contend -record FILE [-hold 0]
//	mpsync-locker -elector ADDR -name PREFIX -identity ID -mode hold -locks N
//
// With -kubeconfig FILE [-namespace NS] [-lease-duration D] instead of
// -elector it takes its lock in-process, through kube.NewTransport (named
// pod-ID), with no elector; every mode but hold works so. It closes the
// transport before it exits.
//
// In handover mode it obeys commands on stdin, one a line: "lock" calls
// Lock (it prints waiting, then acquired when Lock returns), "unlock" calls
// Unlock (it prints unlocking, then unlocked). It starts by locking. EOF on
// stdin, SIGTERM or SIGINT ends it.
//
// In roundtrip mode it calls Lock then Unlock, on an uncontended lock, as
// often as it can for the duration (pausing for the interval after each),
// and prints one roundtrips line with n,
// elapsed_ns, and p50_ns, p99_ns and max_ns of the round trips.
//
// In contend mode it prints started, then waits for the command
// "go UNTIL_NS" on stdin and, until CLOCK_MONOTONIC reaches UNTIL_NS, calls
// Lock, holds the lock for the -hold duration and calls Unlock, again and
// again, against the other lockers of the same lock. It writes every term
// to the -record file (see measure.WriteHold) and prints one contended
// line with n and lost.
//
// In hold mode it takes the locks PREFIX-0 … PREFIX-(N-1), at most
// -concurrency Lock calls at a time, through one shared transport, prints
// holding with n (taken), failed (Lock calls that failed, with -keep-going;
// without it, the first failure ends the program) and elapsed_ns, and
// holds them until SIGTERM, SIGINT or
// EOF on stdin. It prints lost for any lock it loses meanwhile, then
// unlocks them all and prints released with n and lost.
//
// With -trace it also prints a step line at each step of every Lock and
// Unlock (package internal/trace). Lines on stdout follow package
// bench/internal/measure.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/bench/internal/campaign"
	"github.com/mpsync/mpsync/bench/internal/measure"
	"github.com/mpsync/mpsync/internal/trace"
	"github.com/mpsync/mpsync/kube"
)

func main() {
	elector := flag.String("elector", "", "elector `address` (this or -kubeconfig is required)")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig `file`: take the lock in-process through kube.NewTransport, not through an elector")
	namespace := flag.String("namespace", "default", "`namespace` of the Leases with -kubeconfig")
	lease := flag.Duration("lease-duration", kube.DefaultLeaseDuration, "lease duration with -kubeconfig (kube.WithLeaseDuration)")
	name := flag.String("name", "bench-lock", "`name` of the lock")
	identity := flag.String("identity", "", "this locker's `identity` (required)")
	mode := flag.String("mode", "handover", "handover or roundtrip")
	duration := flag.Duration("duration", 3*time.Second, "how long roundtrip mode runs")
	interval := flag.Duration("interval", 0, "pause between round trips in roundtrip mode")
	record := flag.String("record", "", "`file` to write the terms of contend mode to (required in that mode)")
	hold := flag.Duration("hold", 0, "how long to hold the lock in each term of contend mode")
	locks := flag.Int("locks", 1000, "how many locks hold mode takes")
	concurrency := flag.Int("concurrency", 32, "most Lock calls at once in hold mode")
	keepGoing := flag.Bool("keep-going", false, "in hold mode, count a Lock that fails and go on, instead of exiting")
	traced := flag.Bool("trace", false, "print a step line at each step of a lock and unlock (package internal/trace)")
	flag.Parse()
	if flag.NArg() > 0 || (*elector == "") == (*kubeconfig == "") || (*kubeconfig != "" && *mode == "hold") || *identity == "" || *duration <= 0 || *interval < 0 || *hold < 0 ||
		*locks < 1 || *concurrency < 1 || (*mode == "contend" && *record == "") {
		flag.Usage()
		os.Exit(2)
	}
	campaign.Trace(*traced, *identity)
	via := mpsync.WithElector(*elector)
	var tr *kube.Transport
	if *kubeconfig != "" {
		cfg, err := kube.RESTConfig(*kubeconfig)
		if err == nil {
			tr, err = kube.NewTransport(cfg, *namespace, kube.WithLeaseDuration(*lease), kube.WithName("pod-"+*identity))
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "mpsync-locker:", err)
			os.Exit(2)
		}
		via = mpsync.WithTransport(tr)
	}
	lock, err := mpsync.NewLock(*name, via, mpsync.WithIdentity(*identity))
	if err != nil {
		fmt.Fprintln(os.Stderr, "mpsync-locker:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	switch *mode {
	case "handover":
		err = handover(ctx, lock)
	case "roundtrip":
		err = roundtrip(ctx, lock, *duration, *interval)
	case "contend":
		err = contend(ctx, lock, *record, *hold)
	case "hold":
		err = holdMany(ctx, *elector, *name, *identity, *locks, *concurrency, *keepGoing)
	default:
		err = fmt.Errorf("unknown -mode %q", *mode)
	}
	if tr != nil {
		err = errors.Join(err, tr.Close())
	}
	if err != nil {
		_ = measure.Emit(os.Stdout, measure.EventExiting, *identity, "err", err.Error())
		fmt.Fprintln(os.Stderr, "mpsync-locker:", err)
		stop()
		os.Exit(1)
	}
	_ = measure.Emit(os.Stdout, measure.EventExiting, *identity)
}

// handover locks and unlocks as stdin commands it, until ctx ends or stdin
// closes.
func handover(ctx context.Context, lock *mpsync.Lock) error {
	id := lock.Identity()
	cmds := make(chan string)
	go func() { // ends with stdin; the process exits soon after anyway
		defer close(cmds)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			select {
			case cmds <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
	}()
	_ = measure.Emit(os.Stdout, measure.EventStarted, id)
	cmd := "lock"
	for {
		switch cmd {
		case "lock":
			_ = measure.Emit(os.Stdout, measure.EventWaiting, id)
			held, err := lock.Lock(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			tok, _ := mpsync.FencingToken(held)
			_ = measure.Emit(os.Stdout, measure.EventAcquired, id, "token", strconv.FormatUint(tok, 10))
		case "unlock":
			_ = measure.Emit(os.Stdout, measure.EventUnlocking, id)
			if err := lock.Unlock(); err != nil && !errors.Is(err, mpsync.ErrNotHeld) {
				return err
			}
			_ = measure.Emit(os.Stdout, measure.EventUnlocked, id)
		default:
			return fmt.Errorf("unknown command %q", cmd)
		}
		select {
		case c, ok := <-cmds:
			if !ok {
				_ = lock.Unlock()
				return nil
			}
			cmd = c
		case <-ctx.Done():
			_ = lock.Unlock()
			return nil
		}
	}
}

// roundtrip times Lock+Unlock pairs for d, pausing for interval after
// each.
func roundtrip(ctx context.Context, lock *mpsync.Lock, d, interval time.Duration) error {
	id := lock.Identity()
	_ = measure.Emit(os.Stdout, measure.EventStarted, id)
	var rtts []time.Duration
	start := time.Now()
	for time.Since(start) < d && ctx.Err() == nil {
		trace.Mark(campaign.StepLockCalled)
		t := time.Now()
		if _, err := lock.Lock(ctx); err != nil {
			if ctx.Err() != nil {
				break
			}
			return err
		}
		if err := lock.Unlock(); err != nil {
			return err
		}
		rtts = append(rtts, time.Since(t))
		trace.Mark(campaign.StepUnlockReturned)
		if interval > 0 {
			select {
			case <-time.After(interval):
			case <-ctx.Done():
			}
		}
	}
	elapsed := time.Since(start)
	if len(rtts) == 0 {
		return errors.New("no round trip completed")
	}
	slices.Sort(rtts)
	ns := func(d time.Duration) string { return strconv.FormatInt(d.Nanoseconds(), 10) }
	return measure.Emit(os.Stdout, measure.EventRoundTrips, id,
		"n", strconv.Itoa(len(rtts)),
		"elapsed_ns", ns(elapsed),
		"p50_ns", ns(rtts[len(rtts)/2]),
		"p99_ns", ns(rtts[len(rtts)*99/100]),
		"max_ns", ns(rtts[len(rtts)-1]))
}

// contend waits for "go UNTIL_NS" on stdin, then takes and releases lock
// until CLOCK_MONOTONIC reaches UNTIL_NS, writing every term to the file
// record.
func contend(ctx context.Context, lock *mpsync.Lock, record string, hold time.Duration) error {
	id := lock.Identity()
	f, err := os.Create(record)
	if err != nil {
		return err
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	_ = measure.Emit(os.Stdout, measure.EventStarted, id)
	sc := bufio.NewScanner(os.Stdin)
	if !sc.Scan() {
		return errors.New("stdin closed before the go command")
	}
	cmd, arg, _ := strings.Cut(sc.Text(), " ")
	until, err := strconv.ParseInt(arg, 10, 64)
	if cmd != "go" || err != nil {
		return fmt.Errorf("want the command \"go UNTIL_NS\", got %q", sc.Text())
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(until-measure.Now()))
	defer cancel()
	n, lost := 0, 0
	for {
		held, err := lock.Lock(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			return err
		}
		h := measure.Hold{Token: 0, Acquired: measure.Now()}
		h.Token, _ = mpsync.FencingToken(held)
		if hold > 0 {
			time.Sleep(hold)
		}
		h.Unlocking = measure.Now()
		if held.Err() != nil {
			lost++
		}
		if err := lock.Unlock(); err != nil && !errors.Is(err, mpsync.ErrNotHeld) {
			return err
		}
		n++
		if err := measure.WriteHold(w, h); err != nil {
			return err
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return measure.Emit(os.Stdout, measure.EventContended, id, "n", strconv.Itoa(n), "lost", strconv.Itoa(lost))
}

// holdMany takes the locks prefix-0 … prefix-(n-1), at most concurrency at
// a time, holds them until ctx ends or stdin closes, and unlocks them.
func holdMany(ctx context.Context, elector, prefix, identity string, n, concurrency int, keepGoing bool) error {
	tr, err := mpsync.NewHTTPTransport(elector)
	if err != nil {
		return err
	}
	_ = measure.Emit(os.Stdout, measure.EventStarted, identity)
	stdinClosed := make(chan struct{})
	go func() { // ends with stdin; the process exits soon after anyway
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-stdinClosed:
			cancel()
		case <-ctx.Done():
		}
	}()

	var (
		mu       sync.Mutex
		lost     int
		stopping bool // set before the locks are let go: a loss after it is no loss
		firstErr error
		failed   int
		wg       sync.WaitGroup
		watchers sync.WaitGroup
	)
	stop := func() {
		mu.Lock()
		stopping = true
		mu.Unlock()
	}
	// The terms' parent, not ctx: the end of ctx must not end them before
	// stopping is set.
	holdCtx, endHolds := context.WithCancel(context.Background())
	defer endHolds()
	abort := context.AfterFunc(ctx, func() { stop(); endHolds() })
	locks := make([]*mpsync.Lock, n)
	// spawn runs f in a goroutine of wg, at most concurrency at a time.
	sem := make(chan struct{}, concurrency)
	spawn := func(f func()) {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			f()
		}()
	}
	start := time.Now()
	for i := range n {
		name := fmt.Sprintf("%s-%d", prefix, i)
		l, err := mpsync.NewLock(name, mpsync.WithTransport(tr), mpsync.WithIdentity(identity))
		if err != nil {
			return err
		}
		locks[i] = l
		if ctx.Err() != nil {
			break
		}
		spawn(func() {
			held, err := l.Lock(holdCtx)
			if err != nil {
				mu.Lock()
				defer mu.Unlock()
				if keepGoing && !stopping {
					failed++
					_ = measure.Emit(os.Stdout, measure.EventFailed, identity, "name", name, "err", err.Error())
					return
				}
				if firstErr == nil && !stopping {
					firstErr = fmt.Errorf("lock %s: %w", name, err)
				}
				cancel()
				return
			}
			watchers.Add(1)
			go func() {
				defer watchers.Done()
				<-held.Done()
				mu.Lock()
				defer mu.Unlock()
				if !stopping {
					lost++
					_ = measure.Emit(os.Stdout, measure.EventLost, identity, "name", name,
						"cause", context.Cause(held).Error())
				}
			}()
		})
	}
	wg.Wait()
	abort()
	mu.Lock()
	err = firstErr
	mu.Unlock()
	if err == nil && ctx.Err() == nil {
		_ = measure.Emit(os.Stdout, measure.EventHolding, identity, "n", strconv.Itoa(n-failed), "failed", strconv.Itoa(failed),
			"elapsed_ns", strconv.FormatInt(time.Since(start).Nanoseconds(), 10))
		<-ctx.Done()
	}
	stop()
	for _, l := range locks {
		if l == nil { // not reached: ctx ended first
			break
		}
		spawn(func() { _ = l.Unlock() }) // ErrNotHeld for those lost or never taken
	}
	wg.Wait()
	endHolds()
	watchers.Wait()
	if err != nil {
		return err
	}
	return measure.Emit(os.Stdout, measure.EventReleased, identity, "n", strconv.Itoa(n), "lost", strconv.Itoa(lost))
}
