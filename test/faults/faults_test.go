package faults

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// lease is the lease duration of every round: short, so that a SIGSTOP
// longer than the lease is quick.
const lease = 2 * time.Second

// allowance is added to the lease to make history.Check's liveness bound:
// after a fault heals, or a holder dies, some client must hold each lock
// within lease+allowance. The lease itself is the longest legitimate wait:
// a Lease still naming a holder that can no longer renew (its elector just
// killed, stopped or cut off) is taken a lease duration after the other
// electors last saw it change, which may be just before the heal. The
// allowance covers what comes on top: a client's retry after its elector
// was unreachable (at most 500ms), an elector's retry after a failed API
// request (from 100ms, doubling), watch delivery, and scheduling on a
// small machine running the other test packages at the same time. The
// longest gap measured in the bounded rounds and the 30-minute soak is
// about one lease (after an elector is killed): docs/RELIABILITY.md.
//
// An in-process holder (kube.NewTransport) that is SIGKILLed, stopped or
// cut off has no elector left to release its Leases: the others take them
// only a lease duration after its last renewal, where an elector-backed
// client's death frees its locks in milliseconds. That wait is the same
// one as after an elector's death, and its last renewal came before the
// kill (or the stop, or the cut), so the same bound, lease + allowance
// counted from the kill or the heal, allows for it; a lease duration is
// the gap to expect after those faults (docs/RELIABILITY.md), not a few
// milliseconds.
const allowance = 2 * time.Second

// TestFaultsMemory runs a short round on the memory backend: one elector,
// its clients, and the faults that make sense with one elector whose
// locks live in its memory (killing it would forget them and restart the
// tokens, by design). It needs no control plane.
func TestFaultsMemory(t *testing.T) {
	r := newRound(t, roundConfig{
		name:            "memory",
		backend:         "memory",
		electors:        1,
		clientsPer:      3,
		locks:           []string{"lock-a", "lock-b"},
		longLocks:       []string{"lock-long"},
		elections:       []string{"leader"},
		abandoner:       true,
		lease:           lease,
		allowance:       allowance,
		faults:          []string{faultClientKill, faultClientStop, faultElectorStop},
		minAcquisitions: 300,
		minEach:         1,
		maxDuration:     2 * time.Minute,
	})
	rep := r.run()
	for _, v := range rep.Violations {
		t.Errorf("violation: %s", v)
	}
}

// TestCheckerCatchesStaleHolder shows that the checker can fail. The
// same kind of round as the others is made unsafe on purpose, and must be
// reported as violating mutual exclusion:
//   - stale-*: clients keep acting for 2 lease durations after a term was
//     lost or expired (the client's -stale-extra), on each backend;
//   - fast-clocks: every elector's clock runs 30% fast, so that they take
//     a lapsed lease before its holder's deadline (needs the elector's
//     test clock flags).
//
// Every fault hits a holder and ends its term by expiry: the holder
// stopped for longer than the lease, or its elector stopped likewise.
func TestCheckerCatchesStaleHolder(t *testing.T) {
	cases := []struct {
		name       string
		backend    string
		staleExtra time.Duration
		fastClocks bool
	}{
		{"stale-memory", "memory", 2 * lease, false},
		{"stale-kubernetes", "kubernetes", 2 * lease, false},
		{"fast-clocks", "kubernetes", 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := roundConfig{
				name:        tc.name,
				backend:     tc.backend,
				electors:    1,
				clientsPer:  3,
				locks:       []string{"lock-a", "lock-b"},
				longLocks:   []string{"lock-long"},
				elections:   []string{"leader"},
				lease:       lease,
				allowance:   allowance,
				faults:      []string{faultClientStop, faultElectorStop},
				minEach:     1,
				maxDuration: 2 * time.Minute,
				staleExtra:  tc.staleExtra,
				fastClocks:  tc.fastClocks,
			}
			if tc.backend == "kubernetes" {
				needControlPlane(t)
				cfg.electors, cfg.clientsPer = 3, 1
			}
			if tc.fastClocks && !clockFlags(t) {
				t.Skipf("the elector has no --test-clock-offset/--test-clock-rate flags")
			}
			rep := newRound(t, cfg).run()
			overlaps := 0
			for _, v := range rep.Violations {
				if strings.Contains(v, " overlaps ") {
					overlaps++
				}
			}
			if overlaps == 0 {
				t.Errorf("the checker found no overlap in an unsafe round; violations: %q", rep.Violations)
			}
		})
	}
}

// TestFaults is the bounded round of `make test` against a real API server:
// three electors on the kubernetes backend, two client processes each, and
// two in-process client processes (kube.NewTransport, one on a skewed
// clock), all contending for the same locks and election, while every kind
// of fault is injected in turn, on electors, their clients and the
// in-process clients. It fails on any violation of history.Check.
//
// With $MPSYNC_SOAK set to a duration it is the soak instead (hack/soak.sh):
// it injects faults for that long, and writes its summary to
// $MPSYNC_SOAK_SUMMARY as well as to the test log.
func TestFaults(t *testing.T) {
	needControlPlane(t)
	cfg := roundConfig{
		name:       "kubernetes",
		backend:    "kubernetes",
		electors:   3,
		clientsPer: 2,
		locks:      []string{"lock-a", "lock-b"},
		longLocks:  []string{"lock-long"},
		elections:  []string{"leader"},
		inProcess:  2,
		abandoner:  true,
		lease:      lease,
		allowance:  allowance,
		faults: []string{
			faultClientKill, faultInProcKill, faultElectorStop, faultAPIServerKill,
			faultInProcStop, faultClientStop, faultPartition, faultInProcPartition,
			faultElectorKill, faultSlowLink,
		},
		minAcquisitions: 1000,
		minEach:         2,
		maxDuration:     4 * time.Minute,
	}
	if soak := os.Getenv("MPSYNC_SOAK"); soak != "" {
		d, err := time.ParseDuration(soak)
		if err != nil || d <= 0 {
			t.Fatalf("$MPSYNC_SOAK=%q: want a positive duration such as 30m", soak)
		}
		cfg.name, cfg.duration, cfg.summary = "soak", d, os.Getenv("MPSYNC_SOAK_SUMMARY")
	}
	r := newRound(t, cfg)
	rep := r.run()
	for _, v := range rep.Violations {
		t.Errorf("violation: %s", v)
	}
	// The in-process holders took part: they held locks, and locks passed
	// between them and the electors' clients (both ways counted), whose
	// exclusion and tokens Check verified with the rest.
	assert.Positive(t, r.mix.inProcTerms, "terms of in-process clients")
	assert.Positive(t, r.mix.handovers, "handovers between in-process and sidecar holders")
	for _, k := range []string{faultInProcKill, faultInProcStop, faultInProcPartition} {
		assert.GreaterOrEqual(t, rep.Faults[k], cfg.minEach, "faults %s", k)
	}
}
