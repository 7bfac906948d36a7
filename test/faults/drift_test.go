package faults

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mpsync/mpsync/internal/electorproc"

	"github.com/mpsync/mpsync/test/faults/history"
)

// TestElectorClockFastWithinModel holds a lock through an elector whose
// clock runs 1% fast, the drift docs/DESIGN.md's timing model allows (core.Rho),
// stops the holder (SIGSTOP) so that it renews no more, and lets a client
// of a second, exact elector wait for the lock. The holder's context ends
// at its local deadline; the second client must not get the lock before.
//
// This is the reproduction of a bug the fast-clocks round pointed at: the
// holder's elector releases the Lease when the grant's validity has passed
// on its own clock, and a fast clock gets there before the holder's does.
func TestElectorClockFastWithinModel(t *testing.T) {
	needControlPlane(t)
	if !clockFlags(t) {
		t.Skip("the elector has no --test-clock-offset/--test-clock-rate flags")
	}
	// A long lease makes the drift large enough to see: 1% of about 10s.
	const lease = 10 * time.Second
	r := newRound(t, roundConfig{
		name:       "drift",
		backend:    "kubernetes",
		electors:   2,
		clientsPer: 0,
		longLocks:  []string{"lock-long"},
		longHold:   time.Hour, // it never lets go on its own
		lease:      lease,
		allowance:  allowance,
		clockRates: []string{"1.01", ""},
	})
	fast, exact := r.electors[0], r.electors[1]
	holder := &clientProc{slot: fast.id + "-c0", e: fast}
	r.clients = append(r.clients, holder)
	require.NoError(t, r.startClient(holder))
	if err := electorproc.Poll(holder.name+" holds lock-long", waitFor, 10*time.Millisecond, func() bool {
		h, err := lockHolder(exact.addr, "lock-long")
		return err == nil && h == holder.name
	}); err != nil {
		t.Fatal(err)
	}
	// Let it renew at least once (every third of the validity): its
	// deadline then counts from a renewal, sent a moment before its elector
	// writes it, as in any long term.
	r.wait(lease / 2)
	r.note(history.Record{Ev: history.Fault, Kind: faultClientStop})
	require.NoError(t, holder.p.Signal(syscall.SIGSTOP))
	waiter := &clientProc{slot: exact.id + "-c0", e: exact}
	r.clients = append(r.clients, waiter)
	require.NoError(t, r.startClient(waiter))
	if err := electorproc.Poll(waiter.name+" holds lock-long", waitFor, 10*time.Millisecond, func() bool {
		h, err := lockHolder(exact.addr, "lock-long")
		return err == nil && h == waiter.name
	}); err != nil {
		t.Fatal(err)
	}
	// Continue the holder once its deadline has surely passed: earlier, it
	// would learn of the loss from its elector and end its term before the
	// deadline, hiding what the deadline alone allows.
	r.wait(time.Second)
	require.NoError(t, holder.p.Signal(syscall.SIGCONT))
	r.note(history.Record{Ev: history.Heal, Kind: faultClientStop})
	rep := r.finish()
	for _, v := range rep.Violations {
		if strings.Contains(v, " overlaps ") {
			t.Errorf("violation: %s", v)
		}
	}
}
