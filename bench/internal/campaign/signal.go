package campaign

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/mpsync/mpsync/bench/internal/measure"
	"github.com/mpsync/mpsync/internal/trace"
)

// Step names of the benchmark programs themselves, beside those of
// package internal/trace that the SDK, the Lease logic and the elector
// mark.
const (
	// StepSignal: the program's signal handler has SIGTERM or SIGINT, and
	// is about to cancel the context of everything it runs.
	StepSignal = "signal"
	// StepRunReturned: the program's Election.Run has returned.
	StepRunReturned = "run-returned"
	// StepLockCalled: a locker's round trip begins: it calls Lock.
	StepLockCalled = "lock-called"
	// StepUnlockReturned: a locker's round trip ends: Unlock has returned.
	StepUnlockReturned = "unlock-returned"
)

// Trace turns on the step lines of package internal/trace, written to
// stdout for id and stamped with CLOCK_MONOTONIC, if on is true.
func Trace(on bool, id string) {
	if on {
		trace.Enable(os.Stdout, id, measure.Now)
	}
}

// SignalContext is signal.NotifyContext for SIGTERM and SIGINT, with a
// step line (StepSignal, when tracing is on) as the signal arrives, before
// the context is cancelled. stop ends the signal handling.
func SignalContext() (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)
	done := make(chan struct{})
	go func() {
		select {
		case <-sigs:
			trace.Mark(StepSignal)
			cancel()
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		select {
		case <-done:
		default:
			close(done)
		}
		cancel()
	}
}
