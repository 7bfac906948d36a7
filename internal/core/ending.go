package core

import (
	"slices"
	"sync"
)

// Ending is the end of a lease as the grants of both backends keep it: the
// channel their Done returns, and the functions their AfterDone registers.
// End closes the one and starts the others, each on a goroutine of its
// own as context.AfterFunc does, so that End may be called with a lock of
// the grant's held and no function runs under it. The zero value is a
// lease that has not ended. An Ending is safe for concurrent use; it must
// not be copied after first use.
type Ending struct {
	mu    sync.Mutex
	done  chan struct{} // made by the first Done; closed by End
	ended bool
	after []*func() // registered by AfterDone, not yet started or stopped
}

// closedChan is the channel Done returns once the lease has ended if
// nobody asked for one before.
var closedChan = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// Done returns a channel that is closed when End is called. It is made by
// the first call, so a lease that nobody waits on this way costs no
// channel.
func (e *Ending) Done() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.done == nil {
		if e.ended {
			return closedChan
		}
		e.done = make(chan struct{})
	}
	return e.done
}

// Ended reports whether End has been called.
func (e *Ending) Ended() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ended
}

// End ends the lease: it closes Done's channel and starts every function
// registered by AfterDone and not stopped, each on a goroutine of its own.
// Later calls do nothing.
func (e *Ending) End() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ended {
		return
	}
	e.ended = true
	if e.done != nil {
		close(e.done)
	}
	for _, f := range e.after {
		go (*f)()
	}
	e.after = nil
}

// AfterDone arranges for f to be called on a goroutine of its own when End
// is called, or at once if it has been. stop unregisters f: it reports
// true if that kept f from being started, and false if f has been started
// or stop was called before, as the stop of context.AfterFunc does.
func (e *Ending) AfterDone(f func()) (stop func() bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ended {
		go f()
		return func() bool { return false }
	}
	p := &f
	e.after = append(e.after, p)
	return func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		i := slices.Index(e.after, p)
		if i < 0 {
			return false
		}
		e.after = slices.Delete(e.after, i, i+1)
		return true
	}
}
