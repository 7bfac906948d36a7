package clock

import (
	"testing"
	"testing/synctest"
	"time"
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
