package kube

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/client-go/rest"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/internal/core"
)

// The in-process transport against a real API server is tested in
// test/kube (inprocess_test.go). These are its checks at construction and
// its validity arithmetic.

// unreachable is a config for an API server nobody listens on.
func unreachable() *rest.Config { return &rest.Config{Host: "https://127.0.0.1:1"} }

func TestNewTransportRefuses(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  *rest.Config
		ns   string
		opts []Option
		want string
	}{
		{"nil config", nil, "default", nil, "nil *rest.Config"},
		{"bad namespace", unreachable(), "Not_A_Label", nil, "namespace"},
		{"empty namespace", unreachable(), "", nil, "namespace"},
		{"zero qps", unreachable(), "default", []Option{WithRateLimit(0, 10)}, "qps"},
		{"NaN qps", unreachable(), "default", []Option{WithRateLimit(nanQPS(), 10)}, "qps"},
		{"zero burst", unreachable(), "default", []Option{WithRateLimit(10, 0)}, "burst"},
		{"short lease", unreachable(), "default", []Option{WithLeaseDuration(500 * time.Millisecond)}, "shorter than"},
		{"empty name", unreachable(), "default", []Option{WithName("")}, "WithName"},
		{"name with @", unreachable(), "default", []Option{WithName("pod@x")}, "'@' or '#'"},
		{"name with control", unreachable(), "default", []Option{WithName("pod\n")}, "invalid identity"},
		{"test clock rate out of range", unreachable(), "default", []Option{WithTestClock(time.Hour, 3)}, "outside [0.5, 2]"},
		{"nil logger", unreachable(), "default", []Option{WithLogger(nil)}, "WithLogger"},
		{"rate too low for one lock", unreachable(), "default", []Option{WithRateLimit(0.1, 1)}, "cannot keep even one lock"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr, err := NewTransport(c.cfg, c.ns, c.opts...)
			if tr != nil {
				tr.Close()
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), c.want)
		})
	}
}

func nanQPS() float64 {
	zero := 0.0
	return zero / zero
}

func TestNewTransportDefaults(t *testing.T) {
	t.Setenv("POD_NAME", "pod-7")
	tr, err := NewTransport(unreachable(), "default")
	require.NoError(t, err)
	defer func() { assert.NoError(t, tr.Close()) }()
	assert.Equal(t, "pod-7", tr.b.identity, "the name written into holder identities")
	assert.Equal(t, DefaultLeaseDuration, tr.b.lease)
	assert.Equal(t, MaxLocksFor(DefaultQPS, DefaultLeaseDuration), tr.MaxLocks())
	assert.Equal(t, 180, tr.MaxLocks())
}

func TestNewTransportOptions(t *testing.T) {
	cfg := unreachable()
	cfg.QPS, cfg.Burst = 1, 1
	tr, err := NewTransport(cfg, "default", WithName("me"), WithRateLimit(400, 800), WithLeaseDuration(30*time.Second))
	require.NoError(t, err)
	defer tr.Close()
	assert.Equal(t, "me", tr.b.identity)
	assert.Equal(t, 30*time.Second, tr.b.lease)
	assert.Equal(t, MaxLocksFor(400, 30*time.Second), tr.MaxLocks())
	assert.Equal(t, float32(1), cfg.QPS, "the caller's config is not changed")
}

// TestTransportAfterClose: a closed Transport refuses requests with an
// error wrapping ErrUnavailable, and Close again returns nil.
func TestTransportAfterClose(t *testing.T) {
	tr, err := NewTransport(unreachable(), "default", WithName("me"))
	require.NoError(t, err)
	require.NoError(t, tr.Close())
	assert.NoError(t, tr.Close())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = tr.Acquire(ctx, "x", "a", true)
	assert.ErrorIs(t, err, mpsync.ErrUnavailable)
	_, err = tr.Acquire(ctx, "x", "a", false)
	assert.ErrorIs(t, err, mpsync.ErrUnavailable)
	err = tr.Watch(ctx, "x", func(mpsync.Holder) {})
	assert.ErrorIs(t, err, mpsync.ErrUnavailable)
}

// TestTransportTryLockUnsynced: without the API server, TryLock fails
// with ErrUnavailable instead of waiting for ever for the watch to sync.
func TestTransportTryLockUnsynced(t *testing.T) {
	tr, err := NewTransport(unreachable(), "default", WithName("me"))
	require.NoError(t, err)
	defer tr.Close()
	_, err = tr.Acquire(context.Background(), "x", "a", false)
	require.ErrorIs(t, err, mpsync.ErrUnavailable)
	assert.Contains(t, err.Error(), "has not synced")
}

// TestLeaseValidity: counted from the Acquire call, a grant's Validity is
// that of its lease plus the time waited for its write, shrunk by the
// drift bound, as the elector tells its clients.
func TestLeaseValidity(t *testing.T) {
	g := &grant{lease: 10 * time.Second}
	assert.Equal(t, core.Validity(10*time.Second), g.Validity(), "no wait")
	g.waited = 5 * time.Second
	want := core.Validity(10*time.Second) + time.Duration(float64(5*time.Second)*(1-2*core.Rho))
	assert.Equal(t, want, g.Validity())
	assert.Less(t, g.Validity(), 15*time.Second, "never the whole wait plus the whole lease")
}
