package mpsync_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/mpsynctest"
)

// Metaparticle Sync's lock example: take the lock "test", work while holding it,
// then unlock. Here against the in-memory elector, as a unit test would.
func ExampleLock() {
	f := mpsynctest.NewElector()
	defer f.Close()

	lock, err := mpsync.NewLock("test", mpsync.WithTransport(f.Transport()), mpsync.WithIdentity("replica-1"))
	if err != nil {
		log.Fatal(err)
	}
	held, err := lock.Lock(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	token, _ := mpsync.FencingToken(held)
	holder, _ := f.Holder("test")
	fmt.Printf("acquired the lock: holder %s, token %d\n", holder, token)

	// Work under held: it ends if the lock is lost.
	select {
	case <-held.Done():
		fmt.Println("lost the lock:", context.Cause(held))
	default:
		fmt.Println("still holding it")
	}

	if err := lock.Unlock(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("released:", context.Cause(held))
	// Output:
	// acquired the lock: holder replica-1, token 1
	// still holding it
	// released: mpsync: lock released by Unlock
}

// Metaparticle Sync's election example: print when this replica becomes leader and
// when it stops being leader. Here the leader's lease is revoked, as a
// real loss would end it, and the candidate campaigns again.
func ExampleElection() {
	f := mpsynctest.NewElector()
	defer f.Close()

	el, err := mpsync.NewElection("test", mpsync.WithTransport(f.Transport()), mpsync.WithIdentity("replica-1"))
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error)
	go func() { done <- el.Run(ctx) }()

	terms := 0
	for ev := range el.Events() {
		switch ev.Role {
		case mpsync.Leader:
			terms++
			fmt.Printf("I am the leader (term token %d)\n", ev.Token)
			if terms == 1 {
				f.Revoke("test") // lose the first term
			} else {
				cancel() // stop campaigning after the second
			}
		case mpsync.Follower:
			if ev.Token > 0 {
				fmt.Printf("I lost the leadership (token %d)\n", ev.Token)
			}
		}
	}
	fmt.Println("Run returned:", <-done)
	// Output:
	// I am the leader (term token 1)
	// I lost the leadership (token 1)
	// I am the leader (term token 2)
	// Run returned: context canceled
}

// A refused TryLock names the holder through a *LockedError.
func ExampleLockedError() {
	f := mpsynctest.NewElector()
	defer f.Close()
	a, _ := mpsync.NewLock("reports", mpsync.WithTransport(f.Transport()), mpsync.WithIdentity("replica-1"))
	b, _ := mpsync.NewLock("reports", mpsync.WithTransport(f.Transport()), mpsync.WithIdentity("replica-2"))
	if _, err := a.Lock(context.Background()); err != nil {
		log.Fatal(err)
	}
	defer a.Unlock()

	_, err := b.TryLock(context.Background())
	var locked *mpsync.LockedError
	if errors.As(err, &locked) {
		fmt.Printf("%s holds %s\n", locked.Holder, locked.Name)
	}
	fmt.Println("ErrLocked:", errors.Is(err, mpsync.ErrLocked))
	// Output:
	// replica-1 holds reports
	// ErrLocked: true
}

// A leader hands over to another candidate and stays a candidate itself.
func ExampleElection_Resign() {
	f := mpsynctest.NewElector()
	defer f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	run := func(id string) *mpsync.Election {
		el, err := mpsync.NewElection("test", mpsync.WithTransport(f.Transport()), mpsync.WithIdentity(id))
		if err != nil {
			log.Fatal(err)
		}
		go el.Run(ctx)
		return el
	}
	leaderOf := func(el *mpsync.Election) mpsync.Event {
		for ev := range el.Events() {
			if ev.Role == mpsync.Leader {
				return ev
			}
		}
		log.Fatal("Run ended")
		return mpsync.Event{}
	}
	followsOf := func(el *mpsync.Election, leader string) {
		for ev := range el.Events() {
			if ev.Leader == leader {
				return
			}
		}
	}

	a := run("replica-1")
	term := leaderOf(a)
	b := run("replica-2")
	followsOf(b, "replica-1")
	fmt.Println("leader:", term.Leader)

	if err := a.Resign(ctx); err != nil { // returns once another leads
		log.Fatal(err)
	}
	fmt.Println("term ended:", context.Cause(term.Context))
	fmt.Println("leader:", leaderOf(b).Leader)
	followsOf(a, "replica-2")
	fmt.Println("replica-1 follows replica-2, still a candidate")
	// Output:
	// leader: replica-1
	// term ended: mpsync: leadership resigned
	// leader: replica-2
	// replica-1 follows replica-2, still a candidate
}

// An Observer follows who leads without standing for election.
func ExampleObserver() {
	f := mpsynctest.NewElector()
	defer f.Close()
	obs, err := mpsync.NewObserver("test", mpsync.WithTransport(f.Transport()))
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- obs.Run(ctx) }()
	fmt.Printf("%+v\n", <-obs.Events()) // the state at the start

	lock, _ := mpsync.NewLock("test", mpsync.WithTransport(f.Transport()), mpsync.WithIdentity("replica-1"))
	if _, err := lock.Lock(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%+v\n", <-obs.Events())
	lock.Unlock()
	fmt.Printf("%+v\n", <-obs.Events())

	cancel()
	for range obs.Events() {
	}
	fmt.Println("Run returned:", <-done)
	// Output:
	// {Identity: Token:0}
	// {Identity:replica-1 Token:1}
	// {Identity: Token:1}
	// Run returned: context canceled
}
