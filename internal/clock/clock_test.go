package clock

import (
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestSkewed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, err := NewSkewed(3*time.Hour, 1.01)
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Until(c.Now()); d != 3*time.Hour {
			t.Errorf("offset %v, want 3h", d)
		}
		t0 := c.Now()
		time.Sleep(100 * time.Second)
		if d := c.Since(t0); d != 101*time.Second {
			t.Errorf("100s of real time read %v on a clock 1%% fast, want 101s", d)
		}
		start := time.Now()
		tm := c.NewTimer(101 * time.Second)
		<-tm.C()
		if d := time.Since(start); d != 100*time.Second {
			t.Errorf("a 101s timer on a clock 1%% fast fired after %v of real time, want 100s", d)
		}
		fired := make(chan time.Duration, 1)
		start = time.Now()
		c.AfterFunc(202*time.Second, func() { fired <- time.Since(start) })
		if d := <-fired; d != 200*time.Second {
			t.Errorf("AfterFunc(202s) fired after %v, want 200s", d)
		}
	})
	for _, rate := range []float64{0, -1, 0.4, 2.1} {
		if _, err := NewSkewed(0, rate); err == nil {
			t.Errorf("NewSkewed(rate %v) accepted", rate)
		}
	}
}

// TestDeadline: only the latest Arm's fn runs, at its time, and none after
// Stop.
func TestDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			mu    sync.Mutex
			d     Deadline
			fired []int
		)
		arm := func(after time.Duration, n int) {
			mu.Lock()
			defer mu.Unlock()
			d.Arm(Real{}, after, &mu, func() { fired = append(fired, n) })
		}
		firedNow := func() []int {
			synctest.Wait()
			mu.Lock()
			defer mu.Unlock()
			return append([]int(nil), fired...)
		}
		arm(time.Second, 1)
		arm(2*time.Second, 2) // re-armed: 1 is stale
		time.Sleep(1500 * time.Millisecond)
		assert.Empty(t, firedNow(), "after 1.5 s")
		time.Sleep(time.Second)
		assert.Equal(t, []int{2}, firedNow(), "after 2.5 s")

		arm(time.Second, 3)
		mu.Lock()
		d.Stop()
		mu.Unlock()
		time.Sleep(2 * time.Second)
		assert.Equal(t, []int{2}, firedNow(), "after Stop")
	})
}
