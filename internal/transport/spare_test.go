package transport

import (
	"context"
	"net/http/httptrace"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A grant that leaves the client no idle connection makes it open a spare
// one, so that the lease's release does not dial the elector: it goes
// over a connection that was already open.
func TestReleaseFindsAConnectionOpen(t *testing.T) {
	e := startElector(t)
	c := e.client()
	l, err := c.Acquire(bg(), "spare", "web-1", true)
	if err != nil {
		t.Fatal(err)
	}
	require.Eventually(t, func() bool { return c.spares.idle.Load() >= 1 }, 10*time.Second, 5*time.Millisecond,
		"no idle connection 10 s after the grant")
	var reused, got atomic.Bool
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		got.Store(true)
		reused.Store(i.Reused)
	}})
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if !got.Load() || !reused.Load() {
		t.Errorf("the release dialed the elector (had a connection: %v, reused: %v), want it to reuse the spare", got.Load(), reused.Load())
	}
	// The lease's stream is closed; the release's connection is idle.
	if n := c.spares.idle.Load(); n < 1 {
		t.Errorf("%d idle connections after the release, want at least 1", n)
	}
}
