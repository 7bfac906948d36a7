package core

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitFor bounds every wait for something that should happen promptly.
const waitFor = 10 * time.Second

// called returns a function that closes the channel it also returns; a
// second call panics, so a function called twice fails the test.
func called() (func(), <-chan struct{}) {
	ch := make(chan struct{})
	return func() { close(ch) }, ch
}

func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitFor):
		t.Fatalf("%s: not within %v", what, waitFor)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestEndingDone: Done's channel, made before or after End, is closed
// exactly when End has been called; End twice is End once.
func TestEndingDone(t *testing.T) {
	var before Ending
	ch := before.Done()
	if isClosed(ch) || before.Ended() {
		t.Fatal("Done closed, or Ended true, before End")
	}
	if before.Done() != ch {
		t.Error("a second Done returned another channel")
	}
	before.End()
	before.End()
	if !isClosed(ch) || !before.Ended() {
		t.Error("Done not closed, or Ended false, after End")
	}

	var after Ending
	after.End()
	if !isClosed(after.Done()) || !after.Ended() {
		t.Error("Done asked for after End: not closed, or Ended false")
	}
}

// TestEndingAfterDone: a function registered before End runs after it, on
// a goroutine of its own (it can take a lock End's caller holds); one
// registered after End runs at once; stop keeps a function from running
// only before End, and only once.
func TestEndingAfterDone(t *testing.T) {
	var e Ending
	var mu sync.Mutex // End's caller holds it, as the grants' endLocked do
	f, fc := called()
	stopF := e.AfterDone(func() { mu.Lock(); defer mu.Unlock(); f() })
	var stoppedRan atomic.Bool
	stopG := e.AfterDone(func() { stoppedRan.Store(true) })
	if !stopG() {
		t.Error("stop before End reported false")
	}
	if stopG() {
		t.Error("a second stop reported true")
	}
	if len(e.after) != 1 {
		t.Errorf("%d functions registered after one of two was stopped, want 1", len(e.after))
	}
	if isClosed(fc) {
		t.Fatal("a function ran before End")
	}
	mu.Lock()
	e.End()
	mu.Unlock()
	wait(t, fc, "the function registered before End")
	if stopF() {
		t.Error("stop after the function was started reported true")
	}
	if len(e.after) != 0 {
		t.Errorf("%d functions still registered after End, want 0", len(e.after))
	}

	late, lc := called()
	stopLate := e.AfterDone(late)
	wait(t, lc, "the function registered after End")
	if stopLate() {
		t.Error("stop of a function registered after End reported true")
	}
	e.End() // starts nothing again: late would panic
	if stoppedRan.Load() {
		t.Error("the stopped function ran")
	}
}

// TestEndingConcurrent: registrations, stops and End from many goroutines
// at once (for the race detector): every function not stopped in time
// runs exactly once.
func TestEndingConcurrent(t *testing.T) {
	var e Ending
	const n = 50
	var ran atomic.Int32
	var wg, runs sync.WaitGroup
	var kept atomic.Int32
	for i := range n {
		wg.Add(1)
		runs.Add(1)
		go func() {
			defer wg.Done()
			stop := e.AfterDone(func() { ran.Add(1); runs.Done() })
			if i%2 == 0 && stop() {
				runs.Done() // it will not run
				return
			}
			kept.Add(1)
		}()
	}
	go e.End()
	<-e.Done()
	wg.Wait()
	done := make(chan struct{})
	go func() { runs.Wait(); close(done) }()
	wait(t, done, "every function not stopped")
	if ran.Load() != kept.Load() {
		t.Errorf("%d functions ran, want the %d not stopped", ran.Load(), kept.Load())
	}
}
