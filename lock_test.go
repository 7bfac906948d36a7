package mpsync_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/mpsynctest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// stuckTransport wraps a transport so that, once stuck is set, Renew
// blocks until the test ends, ignoring its context, like a transport to a
// paused elector with no timeouts.
type stuckTransport struct {
	mpsync.Transport
	stuck   *atomic.Bool
	renews  *atomic.Int32
	release chan struct{}
}

func (s stuckTransport) Acquire(ctx context.Context, name, id string, wait bool) (mpsync.Lease, error) {
	l, err := s.Transport.Acquire(ctx, name, id, wait)
	if err != nil {
		return nil, err
	}
	return stuckLease{l, s}, nil
}

type stuckLease struct {
	mpsync.Lease
	s stuckTransport
}

func (l stuckLease) Renew(ctx context.Context) (time.Duration, error) {
	l.s.renews.Add(1)
	if l.s.stuck.Load() {
		<-l.s.release
		return 0, errors.New("stuck")
	}
	return l.Lease.Renew(ctx)
}

func newStuck(f *mpsynctest.Elector) stuckTransport {
	return stuckTransport{f.Transport(), new(atomic.Bool), new(atomic.Int32), make(chan struct{})}
}

const lease = 15 * time.Second

func TestRenewalKeepsTheLock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := mpsynctest.NewElector(mpsynctest.LeaseDuration(lease))
		defer f.Close()
		tr := newStuck(f)
		l, _ := mpsync.NewLock("test", mpsync.WithTransport(tr), mpsync.WithIdentity("a"))
		start := time.Now()
		held, err := l.Lock(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		until, ok := mpsync.ValidUntil(held)
		if want := start.Add(14450 * time.Millisecond); !ok || !until.Equal(want) {
			t.Errorf("ValidUntil = %v, %v; want %v", until, ok, want)
		}
		time.Sleep(10 * lease)
		// The last renewal was at most a third of the validity ago.
		if until, _ = mpsync.ValidUntil(held); time.Until(until) < 9*time.Second {
			t.Errorf("ValidUntil %v from now after renewals, want at least 9s", time.Until(until))
		}
		if _, ok := mpsync.ValidUntil(context.Background()); ok {
			t.Error("ValidUntil(context.Background()) reported a deadline")
		}
		if held.Err() != nil {
			t.Fatalf("lost the lock while renewing: %v", context.Cause(held))
		}
		// Renewal at a third of the validity: about 3 per lease.
		if n := tr.renews.Load(); n < 25 || n > 35 {
			t.Errorf("%d renewals in 10 leases, want about 30", n)
		}
		if err := l.Unlock(); err != nil {
			t.Fatal(err)
		}
		if _, ok := f.Holder("test"); ok {
			t.Error("lock still held after Unlock")
		}
	})
}

// renewLog wraps a transport to record, per lock, when each Renew was
// called.
type renewLog struct {
	mpsync.Transport
	mu    *sync.Mutex
	times map[string][]time.Time
}

func (r renewLog) Acquire(ctx context.Context, name, id string, wait bool) (mpsync.Lease, error) {
	l, err := r.Transport.Acquire(ctx, name, id, wait)
	if err != nil {
		return nil, err
	}
	return loggedLease{l, r, name}, nil
}

type loggedLease struct {
	mpsync.Lease
	r    renewLog
	name string
}

func (l loggedLease) Renew(ctx context.Context) (time.Duration, error) {
	l.r.mu.Lock()
	l.r.times[l.name] = append(l.r.times[l.name], time.Now())
	l.r.mu.Unlock()
	return l.Lease.Renew(ctx)
}

// TestFirstRenewalJitter: locks taken at one instant first renew each at
// a moment of its own between a sixth and a third of the validity, not
// all at the third; every later renewal comes a third of the validity
// after the one before, as it did.
func TestFirstRenewalJitter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := mpsynctest.NewElector(mpsynctest.LeaseDuration(lease))
		defer f.Close()
		tr := renewLog{f.Transport(), new(sync.Mutex), map[string][]time.Time{}}
		const n = 40
		start := time.Now()
		var validity time.Duration
		var locks []*mpsync.Lock
		for i := range n {
			l, err := mpsync.NewLock(fmt.Sprintf("jitter-%d", i), mpsync.WithTransport(tr), mpsync.WithIdentity("a"))
			if err != nil {
				t.Fatal(err)
			}
			held, err := l.Lock(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			until, _ := mpsync.ValidUntil(held)
			validity = until.Sub(start) // synctest: no time passes while locking
			locks = append(locks, l)
		}
		time.Sleep(validity) // past every first renewal and the second
		for _, l := range locks {
			if err := l.Unlock(); err != nil {
				t.Fatal(err)
			}
		}
		tr.mu.Lock()
		defer tr.mu.Unlock()
		firsts := map[time.Duration]bool{}
		lo, hi := validity, time.Duration(0)
		for name, times := range tr.times {
			if len(times) < 2 {
				t.Errorf("%s: %d renewals within the validity, want at least 2", name, len(times))
				continue
			}
			first := times[0].Sub(start)
			if first < validity/6 || first > validity/3 {
				t.Errorf("%s: first renewal %v after the grant, want between a sixth (%v) and a third (%v) of the validity",
					name, first, validity/6, validity/3)
			}
			firsts[first] = true
			lo, hi = min(lo, first), max(hi, first)
			if gap := times[1].Sub(times[0]); gap != validity/3 {
				t.Errorf("%s: second renewal %v after the first, want a third of the validity, %v", name, gap, validity/3)
			}
		}
		if len(tr.times) != n {
			t.Errorf("%d locks renewed, want %d", len(tr.times), n)
		}
		// Drawn uniformly from a span of a sixth of the validity, 40
		// first renewals fall within a quarter of that span by chance with
		// a probability below 1e-20.
		if len(firsts) < n/2 || hi-lo < validity/24 {
			t.Errorf("first renewals at %d distinct times over %v, want them spread over most of %v", len(firsts), hi-lo, validity/6)
		}
	})
}

// The leadership context ends on its own at the local deadline, counted
// from the last renewal that was sent, even when the transport hangs and
// ignores contexts.
func TestLocalDeadlineWithHungTransport(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := mpsynctest.NewElector(mpsynctest.LeaseDuration(lease))
		defer f.Close()
		tr := newStuck(f)
		l, _ := mpsync.NewLock("test", mpsync.WithTransport(tr), mpsync.WithIdentity("a"))
		start := time.Now()
		held, err := l.Lock(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		tr.stuck.Store(true)
		<-held.Done()
		elapsed := time.Since(start)
		// Validity for 15s is 15s*(1-2*1%) - 250ms = 14.45s from the
		// request; the first renewal hangs, so the term ends then.
		if want := 14450 * time.Millisecond; elapsed != want {
			t.Errorf("term ended after %v, want %v", elapsed, want)
		}
		if cause := context.Cause(held); !errors.Is(cause, mpsync.ErrLockLost) || !errors.Is(cause, mpsync.ErrExpired) {
			t.Errorf("cause = %v, want ErrLockLost and ErrExpired", cause)
		}
		// The fake still counts the lease as held until its own expiry at
		// 15 s: the holder stopped first.
		if _, ok := f.Holder("test"); !ok {
			t.Error("the elector dropped the lease before the holder's deadline")
		}
		time.Sleep(time.Second)
		if _, ok := f.Holder("test"); ok {
			t.Error("the elector kept the lease past its duration")
		}
		close(tr.release) // let the hung renewal return, so Unlock can
		l.Unlock()
	})
}

func TestElectorClosedEndsTerm(t *testing.T) {
	f := mpsynctest.NewElector()
	l, _ := mpsync.NewLock("test", mpsync.WithTransport(f.Transport()))
	held, err := l.Lock(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	<-held.Done()
	if cause := context.Cause(held); !errors.Is(cause, mpsync.ErrLockLost) {
		t.Errorf("cause = %v, want ErrLockLost", cause)
	}
	if err := l.Unlock(); err != nil {
		t.Errorf("Unlock after loss = %v, want nil", err)
	}
	if _, err := l.Lock(t.Context()); !errors.Is(err, mpsync.ErrClosed) {
		t.Errorf("Lock on a closed elector = %v, want ErrClosed", err)
	}
}

// lockAfter has another holder take "test" on f, calls b.Lock, lets the
// other hold the lock for wait while b waits, and returns b's leadership
// context once the other has unlocked.
func lockAfter(t *testing.T, f *mpsynctest.Elector, b *mpsync.Lock, wait time.Duration) context.Context {
	t.Helper()
	a, _ := mpsync.NewLock("test", mpsync.WithTransport(f.Transport()), mpsync.WithIdentity("a"))
	if _, err := a.Lock(t.Context()); err != nil {
		t.Fatal(err)
	}
	got := make(chan context.Context)
	go func() {
		held, err := b.Lock(t.Context())
		if err != nil {
			t.Error(err)
		}
		got <- held
	}()
	time.Sleep(wait)
	a.Unlock()
	return <-got
}

// A waiter whose wait left it less than half its validity renews before
// Lock returns, so that its deadline counts from a recent request: the
// memory table counts the wait into the validity shrunk by the drift
// bound, which after 30 leases leaves 14.45s - 2% of 450s = 5.45s. After
// a wait of two leases 13.85s are left, and Lock returns without a
// renewal.
func TestLongWaitRenewsFirst(t *testing.T) {
	for _, c := range []struct {
		wait   time.Duration
		renews int32
	}{
		{2 * lease, 0},
		{30 * lease, 1},
	} {
		t.Run(c.wait.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := mpsynctest.NewElector(mpsynctest.LeaseDuration(lease))
				defer f.Close()
				tr := newStuck(f)
				b, _ := mpsync.NewLock("test", mpsync.WithTransport(tr), mpsync.WithIdentity("b"))
				held := lockAfter(t, f, b, c.wait)
				if n := tr.renews.Load(); n != c.renews {
					t.Errorf("%d renewals before Lock returned, want %d", n, c.renews)
				}
				until, _ := mpsync.ValidUntil(held)
				if left := time.Until(until); left < 13*time.Second || left > 14450*time.Millisecond {
					t.Errorf("the term's deadline %v away, want 13s to 14.45s", left)
				}
				tr.stuck.Store(true)
				go func() { time.Sleep(time.Hour); close(tr.release) }()
				<-held.Done()
				if now := time.Now(); !now.Equal(until) {
					t.Errorf("the term ended at %v, want at its deadline %v", now, until)
				}
				tr.stuck.Store(false)
				b.Unlock()
				time.Sleep(time.Hour)
			})
		})
	}
}

func TestNewLockValidates(t *testing.T) {
	tests := []struct {
		name string
		lock string
		opts []mpsync.Option
		want error
	}{
		{"upper case", "Test", nil, mpsync.ErrInvalidName},
		{"empty", "", nil, mpsync.ErrInvalidName},
		{"slash", "a/b", nil, mpsync.ErrInvalidName},
		{"too long", strings.Repeat("a", 254), nil, mpsync.ErrInvalidName},
		{"nil transport", "test", []mpsync.Option{mpsync.WithTransport(nil)}, nil},
		{"empty identity", "test", []mpsync.Option{mpsync.WithIdentity("")}, mpsync.ErrInvalidIdentity},
		{"tab in identity", "test", []mpsync.Option{mpsync.WithIdentity("web\t1")}, mpsync.ErrInvalidIdentity},
		{"newline in identity", "test", []mpsync.Option{mpsync.WithIdentity("web-1\n")}, mpsync.ErrInvalidIdentity},
		{"DEL in identity", "test", []mpsync.Option{mpsync.WithIdentity("web\x7f")}, mpsync.ErrInvalidIdentity},
		{"invalid UTF-8 identity", "test", []mpsync.Option{mpsync.WithIdentity("web\xff")}, mpsync.ErrInvalidIdentity},
		{"identity too long", "test", []mpsync.Option{mpsync.WithIdentity(strings.Repeat("a", 254))}, mpsync.ErrInvalidIdentity},
		{"empty elector", "test", []mpsync.Option{mpsync.WithElector("")}, nil},
		{"nil logger", "test", []mpsync.Option{mpsync.WithLogger(nil)}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := mpsync.NewLock(tt.lock, tt.opts...)
			if err == nil {
				t.Fatal("NewLock succeeded")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("NewLock = %v, want %v", err, tt.want)
			}
			_, err2 := mpsync.NewElection(tt.lock, tt.opts...)
			if err2 == nil {
				t.Fatal("NewElection succeeded")
			}
			if tt.want != nil && !errors.Is(err2, tt.want) {
				t.Errorf("NewElection = %v, want %v", err2, tt.want)
			}
		})
	}
}

func TestDefaultIdentity(t *testing.T) {
	l, err := mpsync.NewLock("test", mpsync.WithTransport(mpsynctest.NewElector().Transport()))
	if err != nil {
		t.Fatal(err)
	}
	if id := l.Identity(); id == "" || !strings.Contains(id, "-") {
		t.Errorf("default identity %q, want host-pid", id)
	}
}

// The SDK must not compile Kubernetes code into applications.
func TestNoKubernetesDependency(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".", "./mpsynctest").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "k8s.io/") {
			t.Errorf("the SDK depends on %s", p)
		}
	}
}

// Regression: the first renewal is timed from the deadline Lock computed,
// not from the validity of the acquisition, which counts a long wait (the
// memory table's does, as every backend's does).
func TestFirstRenewalAfterLongWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := mpsynctest.NewElector(mpsynctest.LeaseDuration(lease))
		defer f.Close()
		b, _ := mpsync.NewLock("test", mpsync.WithTransport(f.Transport()), mpsync.WithIdentity("b"))
		held := lockAfter(t, f, b, 3*lease)
		time.Sleep(5 * lease)
		if held.Err() != nil {
			t.Fatalf("b lost the lock it was renewing: %v", context.Cause(held))
		}
		b.Unlock()
	})
}
