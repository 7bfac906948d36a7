// Command inprocholder is a lock holder process for the tests of package
// test/kube: it takes one lock through kube.NewTransport (or, with
// -elector, through an elector) and reports on stdout, one line each:
//
//	ready
//	held <token> <unix ns>      right after Lock returned
//	renewed <unix ns>           whenever the leadership deadline moved on
//	unheld <token> <unix ns>    right before Unlock, the context still live
//	lost <token> <unix ns>      the leadership context ended on its own
//
// With -rounds N it takes the lock N times, holding it -hold each time,
// then exits; with -rounds 0 it holds the lock until killed.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/kube"
)

func main() {
	var (
		kubeconfig = flag.String("kubeconfig", "", "kubeconfig of the user to take Leases as")
		namespace  = flag.String("namespace", "", "namespace of the Leases")
		name       = flag.String("name", "inprocholder", "the Transport's name (WithName)")
		lock       = flag.String("lock", "", "the lock")
		identity   = flag.String("identity", "", "the holder's identity")
		lease      = flag.Duration("lease", 3*time.Second, "lease duration")
		elector    = flag.String("elector", "", "take the lock through the elector at this address instead")
		rounds     = flag.Int("rounds", 0, "acquisitions before exiting; 0 holds until killed")
		hold       = flag.Duration("hold", 50*time.Millisecond, "how long each acquisition is held")
	)
	flag.Parse()
	if err := run(*kubeconfig, *namespace, *name, *lock, *identity, *elector, *lease, *rounds, *hold); err != nil {
		fmt.Fprintln(os.Stderr, "inprocholder:", err)
		os.Exit(1)
	}
}

var outMu sync.Mutex

func say(format string, args ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Printf(format+"\n", args...)
}

func run(kubeconfig, namespace, name, lockName, identity, elector string, lease time.Duration, rounds int, hold time.Duration) error {
	var tr mpsync.Transport
	if elector != "" {
		t, err := mpsync.NewHTTPTransport(elector)
		if err != nil {
			return err
		}
		tr = t
	} else {
		rc, err := kube.RESTConfig(kubeconfig)
		if err != nil {
			return err
		}
		t, err := kube.NewTransport(rc, namespace, kube.WithName(name), kube.WithLeaseDuration(lease))
		if err != nil {
			return err
		}
		defer t.Close()
		tr = t
	}
	l, err := mpsync.NewLock(lockName, mpsync.WithTransport(tr), mpsync.WithIdentity(identity))
	if err != nil {
		return err
	}
	say("ready")
	for i := 0; rounds == 0 || i < rounds; i++ {
		held, err := l.Lock(context.Background())
		if err != nil {
			return err
		}
		tok, _ := mpsync.FencingToken(held)
		say("held %d %d", tok, time.Now().UnixNano())
		if rounds == 0 {
			holdForever(held, tok)
		}
		select {
		case <-held.Done():
			say("lost %d %d", tok, time.Now().UnixNano())
		case <-time.After(hold):
			if held.Err() == nil {
				say("unheld %d %d", tok, time.Now().UnixNano())
			} else {
				say("lost %d %d", tok, time.Now().UnixNano())
			}
		}
		if err := l.Unlock(); err != nil {
			say("unlock %v", err)
		}
	}
	return nil
}

// holdForever reports each renewal (the leadership deadline moving on)
// until the lease is lost, then exits.
func holdForever(held context.Context, tok uint64) {
	last, _ := mpsync.ValidUntil(held)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-held.Done():
			say("lost %d %d", tok, time.Now().UnixNano())
			os.Exit(3)
		case <-tick.C:
			if d, _ := mpsync.ValidUntil(held); d.After(last) {
				last = d
				say("renewed %d", time.Now().UnixNano())
			}
		}
	}
}
