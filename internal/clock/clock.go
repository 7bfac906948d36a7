// Package clock lets the elector's timing decisions run on a clock other
// than the machine's, so that the fault tests can give electors clocks
// with an offset of hours and a rate off by a few percent, as other hosts
// would have. Production uses Real.
package clock

import (
	"fmt"
	"sync"
	"time"
)

// Clock tells time and runs timers. Durations passed to it and returned by
// it are in the clock's own units.
type Clock interface {
	Now() time.Time
	Since(t time.Time) time.Duration
	Until(t time.Time) time.Duration
	// AfterFunc calls f in its own goroutine after d has passed on this
	// clock.
	AfterFunc(d time.Duration, f func()) Timer
	// NewTimer returns a timer that sends on C after d on this clock.
	NewTimer(d time.Duration) Timer
}

// Timer is a *time.Timer whose durations are in its clock's units.
type Timer interface {
	// C is the timer's channel (nil for AfterFunc timers).
	C() <-chan time.Time
	Stop() bool
	Reset(d time.Duration) bool
}

// Real is the machine's clock.
type Real struct{}

// Now implements Clock.
func (Real) Now() time.Time { return time.Now() }

// Since implements Clock.
func (Real) Since(t time.Time) time.Duration { return time.Since(t) }

// Until implements Clock.
func (Real) Until(t time.Time) time.Duration { return time.Until(t) }

// AfterFunc implements Clock.
func (Real) AfterFunc(d time.Duration, f func()) Timer {
	return realTimer{time.AfterFunc(d, f), 1}
}

// NewTimer implements Clock.
func (Real) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d), 1} }

type realTimer struct {
	t    *time.Timer
	rate float64
}

func (t realTimer) C() <-chan time.Time        { return t.t.C }
func (t realTimer) Stop() bool                 { return t.t.Stop() }
func (t realTimer) Reset(d time.Duration) bool { return t.t.Reset(scale(d, t.rate)) }

// scale converts a duration on a clock running at rate to real time.
func scale(d time.Duration, rate float64) time.Duration {
	return time.Duration(float64(d) / rate)
}

// Skewed is a clock that reads Offset ahead of the machine's at its
// creation and then runs Rate times as fast (1.01 gains 1% a second).
type Skewed struct {
	start  time.Time
	offset time.Duration
	rate   float64
}

// NewSkewed returns a Skewed clock. rate must be between 0.5 and 2.
func NewSkewed(offset time.Duration, rate float64) (*Skewed, error) {
	if !(rate >= 0.5 && rate <= 2) {
		return nil, fmt.Errorf("clock: rate %v is outside [0.5, 2]", rate)
	}
	return &Skewed{start: time.Now(), offset: offset, rate: rate}, nil
}

// Now implements Clock. The result keeps a monotonic reading, so Since and
// Until of times from this clock stay consistent.
func (c *Skewed) Now() time.Time {
	elapsed := time.Since(c.start)
	return c.start.Add(c.offset + time.Duration(float64(elapsed)*c.rate))
}

// Since implements Clock.
func (c *Skewed) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

// Until implements Clock.
func (c *Skewed) Until(t time.Time) time.Duration { return t.Sub(c.Now()) }

// AfterFunc implements Clock.
func (c *Skewed) AfterFunc(d time.Duration, f func()) Timer {
	return realTimer{time.AfterFunc(scale(d, c.rate), f), c.rate}
}

// NewTimer implements Clock.
func (c *Skewed) NewTimer(d time.Duration) Timer {
	return realTimer{time.NewTimer(scale(d, c.rate)), c.rate}
}

// Deadline is a timer that its owner re-arms under a lock of its own, so
// that a firing of an earlier arming, already under way when the timer was
// re-armed or stopped, does nothing. It is the one home of that
// generation-timer pattern, which the memory table's grants and the
// Kubernetes backend's grants both use for their expiry. The zero value is
// stopped. Call its methods with the lock given to Arm held.
type Deadline struct {
	timer Timer
	gen   uint64 // bumped by every Arm and Stop; a firing of an older one is stale
}

// Arm (re)starts d: after after has passed on clk, fn is called with mu
// held, unless Arm or Stop has been called since.
func (d *Deadline) Arm(clk Clock, after time.Duration, mu sync.Locker, fn func()) {
	d.Stop()
	gen := d.gen
	d.timer = clk.AfterFunc(after, func() {
		mu.Lock()
		defer mu.Unlock()
		if d.gen == gen {
			fn()
		}
	})
}

// Stop stops d: no fn of an earlier Arm is called after it.
func (d *Deadline) Stop() {
	if d.timer != nil {
		d.timer.Stop()
	}
	d.gen++
}
