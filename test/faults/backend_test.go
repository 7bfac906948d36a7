package faults

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/kube"
)

// TestKubeBackendWaitersOfOneElector is the smallest reproduction of the
// first thing the fault harness found: several Acquire calls of one
// Kubernetes Backend waiting for the same lock (the clients of one elector
// contending for one lock, as in every fault round) must be granted in
// turn, one at a time, without losing a grant while no fault happens. It
// injects no fault, so it uses the shared control plane.
func TestKubeBackendWaitersOfOneElector(t *testing.T) {
	needControlPlane(t)
	cp, err := sharedControlPlane()
	require.NoError(t, err)
	ns, err := cp.namespace("faults-waiters")
	require.NoError(t, err)
	cs, err := cp.clientset(cp.electorKubeconfig)
	require.NoError(t, err)
	b, err := kube.New(kube.Config{Client: cs, Namespace: ns, Identity: "e1", LeaseDuration: lease})
	require.NoError(t, err)

	const waiters, rounds = 3, 10
	var (
		wg      sync.WaitGroup
		holding atomic.Int32
		mu      sync.Mutex
		errs    []error
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, err)
	}
	for i := range waiters {
		wg.Go(func() {
			id := fmt.Sprintf("c%d", i)
			for n := range rounds {
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				g, err := b.Acquire(ctx, core.Request{Name: "lock", Identity: id, Wait: true})
				cancel()
				if err != nil {
					fail(fmt.Errorf("%s, round %d: Acquire: %w", id, n, err))
					return
				}
				if h := holding.Add(1); h != 1 {
					fail(fmt.Errorf("%s, round %d: granted while %d other grants of the same lock last", id, n, h-1))
				}
				if err := g.Err(); err != nil {
					fail(fmt.Errorf("%s, round %d: grant %d lost with no fault: %w", id, n, g.Token(), err))
				}
				holding.Add(-1)
				ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
				err = g.Release(ctx)
				cancel()
				if err != nil {
					fail(fmt.Errorf("%s, round %d: Release: %w", id, n, err))
				}
			}
		})
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(waitFor):
		// Leaves the stuck goroutines and the Backend behind: Close
		// would block on the same mutex.
		t.Fatalf("%d Acquire/Release rounds of %d waiters of one Backend not over within %v: the Backend is stuck (deadlocked?); errors so far: %v",
			rounds, waiters, waitFor, errs)
	}
	for _, err := range errs {
		t.Error(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	assert.NoError(t, b.Close(ctx), "Close")
}
