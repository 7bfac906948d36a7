package mpsync_test

import (
	"context"
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
