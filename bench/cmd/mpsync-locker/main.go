// Command mpsync-locker drives mpsync.Lock for the benchmarks of the lock
// path through one elector.
//
// Usage:
//
//	mpsync-locker -elector ADDR -name LOCK -identity ID -mode handover
//	mpsync-locker -elector ADDR -name LOCK -identity ID -mode roundtrip [-duration 3s] [-interval 0]
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
// Lines on stdout follow package bench/internal/measure.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/bench/internal/measure"
)

func main() {
	elector := flag.String("elector", "", "elector `address` (required)")
	name := flag.String("name", "bench-lock", "`name` of the lock")
	identity := flag.String("identity", "", "this locker's `identity` (required)")
	mode := flag.String("mode", "handover", "handover or roundtrip")
	duration := flag.Duration("duration", 3*time.Second, "how long roundtrip mode runs")
	interval := flag.Duration("interval", 0, "pause between round trips in roundtrip mode")
	flag.Parse()
	if flag.NArg() > 0 || *elector == "" || *identity == "" || *duration <= 0 || *interval < 0 {
		flag.Usage()
		os.Exit(2)
	}
	lock, err := mpsync.NewLock(*name, mpsync.WithElector(*elector), mpsync.WithIdentity(*identity))
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
	default:
		err = fmt.Errorf("unknown -mode %q", *mode)
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
