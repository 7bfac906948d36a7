// Command lock is Metaparticle Sync's lock example in Go: it takes the lock "test",
// holds it for 45 seconds, unlocks it, and prints what happens on the way.
// Run several copies against one elector and watch the lock pass from one
// to the next, each acquisition with a greater fencing token.
//
// Usage:
//
//	lock [-name test] [-hold 45s] [-rounds 1] [-identity ID] [-elector ADDR]
//
// -rounds 0 repeats forever. The elector is ADDR, else $MPSYNC_ELECTOR,
// else http://localhost:13131. SIGINT or SIGTERM releases the lock, if
// held, and exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mpsync/mpsync"
)

func main() {
	name := flag.String("name", "test", "name of the lock")
	hold := flag.Duration("hold", 45*time.Second, "how long to hold the lock each round")
	rounds := flag.Int("rounds", 1, "how many times to take the lock; 0 means forever")
	identity := flag.String("identity", "", "who this holder is (default: host name and process ID)")
	elector := flag.String("elector", "", "elector address (default: $MPSYNC_ELECTOR, else "+mpsync.DefaultElector+")")
	flag.Parse()
	if flag.NArg() > 0 || *hold <= 0 || *rounds < 0 {
		flag.Usage()
		os.Exit(2)
	}

	var opts []mpsync.Option
	if *identity != "" {
		opts = append(opts, mpsync.WithIdentity(*identity))
	}
	if *elector != "" {
		opts = append(opts, mpsync.WithElector(*elector))
	}
	lock, err := mpsync.NewLock(*name, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lock:", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, lock, *hold, *rounds); err != nil {
		say(lock, "error: %v", err)
		stop()
		os.Exit(1)
	}
}

// run takes and releases the lock rounds times (forever if rounds is 0),
// until ctx ends.
func run(ctx context.Context, lock *mpsync.Lock, hold time.Duration, rounds int) error {
	for round := 1; rounds == 0 || round <= rounds; round++ {
		say(lock, "waiting for lock %s", lock.Name())
		held, err := lock.Lock(ctx)
		if err != nil {
			if ctx.Err() != nil {
				say(lock, "interrupted while waiting; exiting")
				return nil
			}
			return err
		}
		token, _ := mpsync.FencingToken(held)
		say(lock, "acquired lock %s (token %d)", lock.Name(), token)

		// Work under held: it ends if the lock is lost. Here the work is
		// waiting for the hold time to pass.
		timer := time.NewTimer(hold)
		select {
		case <-timer.C:
			if err := lock.Unlock(); err != nil {
				return fmt.Errorf("unlock: %w", err)
			}
			say(lock, "released")
		case <-held.Done():
			timer.Stop()
			cause := context.Cause(held)
			// Unlock waits for the release; after a loss it only forgets
			// the term.
			unlockErr := lock.Unlock()
			if ctx.Err() != nil {
				if unlockErr != nil {
					return fmt.Errorf("release on exit: %w", unlockErr)
				}
				say(lock, "released; exiting")
				return nil
			}
			if errors.Is(cause, mpsync.ErrLockLost) {
				say(lock, "lost: %v", cause)
				continue
			}
			return fmt.Errorf("leadership context ended: %w", cause)
		}
	}
	return nil
}

// say prints one line: the time, who is speaking, and what happened.
func say(lock *mpsync.Lock, format string, args ...any) {
	fmt.Printf("%s %s: %s\n", time.Now().Format("15:04:05.000"), lock.Identity(), fmt.Sprintf(format, args...))
}
