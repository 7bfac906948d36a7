package main

import (
	"math"
	"slices"
	"testing"

	"github.com/mpsync/mpsync/bench/internal/campaign"
	"github.com/mpsync/mpsync/bench/internal/measure"
	"github.com/mpsync/mpsync/internal/trace"
)

// stepTimes takes each step's first line at or after the signal, from the
// right side, and a watch event only if it shows the Lease free or handed
// to the next leader; each step is timed from the first of its
// predecessors that happened.
func TestStepTimes(t *testing.T) {
	step := func(proc string, ms int64, name string, kv ...string) tagged {
		l := measure.Line{Mono: 1e9 + ms*1e6, Event: trace.Event, ID: "x", Fields: map[string]string{"step": name}}
		for i := 0; i+1 < len(kv); i += 2 {
			l.Fields[kv[i]] = kv[i+1]
		}
		return tagged{proc: proc, Line: l}
	}
	lines := []tagged{
		step("candidate-a", -5, trace.ReleaseSent), // before the signal
		step("candidate-a", 1, trace.ReleaseSent),
		step("candidate-a", 2, trace.ReleaseWriteSent),
		step("candidate-b", 3, trace.WatchEvent, "free", "false", "holder", "a"), // the old leader's renewal
		step("candidate-a", 4, trace.WatchEvent, "free", "true"),                 // the wrong side
		step("candidate-b", 6, trace.WatchEvent, "free", "false", "holder", "b"), // handed over
		step("candidate-b", 7, trace.Adopted),
		step("candidate-b", 8, trace.Acquired),
		{proc: "candidate-b", Line: measure.Line{Mono: 1e9 + 9e6, Event: measure.EventLeading, ID: "b"}},
	}
	got := stepTimes(lines, 1e9)
	want := map[string]float64{"release-sent": 0.001, "release-write-sent": 0.002, "watch-event": 0.006, "adopted": 0.007, "acquired": 0.008, "leading": 0.009}
	if len(got) != len(want) {
		t.Errorf("stepTimes = %v, want %v", got, want)
	}
	for k, v := range want {
		if d := got[k] - v; d > 1e-9 || d < -1e-9 {
			t.Errorf("stepTimes[%s] = %v, want %v", k, got[k], v)
		}
	}
	for _, s := range handoverSteps {
		if s.key != "acquired" {
			continue
		}
		delta, since := stepDeltas(s, []map[string]float64{got})
		// No grant-sent in-process: timed from the adoption.
		if len(delta) != 1 || math.Abs(delta[0]-0.001) > 1e-9 || len(since) != 1 {
			t.Errorf("stepDeltas(acquired) = %v, %v; want [0.001], [0.008]", delta, since)
		}
	}
}

// roundTripSplit finds each round trip's two writes among the lines of
// the locker and its elector, in the order of their stamps, and leaves out
// a round trip that made another write.
func TestRoundTripSplit(t *testing.T) {
	at := func(proc string, ms int64, name string) tagged {
		return tagged{proc: proc, Line: measure.Line{Mono: ms * 1e6, Event: trace.Event, Fields: map[string]string{"step": name}}}
	}
	lines := []tagged{
		at("locker", 10, campaign.StepLockCalled),
		at("elector", 11, trace.TakeWriteSent),
		at("elector", 15, trace.TakeWriteDone),
		at("elector", 16, trace.ReleaseWriteSent),
		at("elector", 19, trace.ReleaseWriteDone),
		at("locker", 21, campaign.StepUnlockReturned),
		at("locker", 30, campaign.StepLockCalled),
		at("locker", 31, trace.TakeWriteSent),
		at("locker", 32, trace.TakeWriteDone), // a conflict, then again
		at("locker", 33, trace.TakeWriteSent),
		at("locker", 34, trace.TakeWriteDone),
		at("locker", 35, trace.ReleaseWriteSent),
		at("locker", 36, trace.ReleaseWriteDone),
		at("locker", 37, campaign.StepUnlockReturned),
	}
	slices.Reverse(lines) // arrival order does not matter
	got := roundTripSplit(lines)
	if len(got) != 1 || math.Abs(got[0].total-0.011) > 1e-9 || math.Abs(got[0].writes-0.007) > 1e-9 {
		t.Errorf("roundTripSplit = %+v, want one round trip of 11 ms with 7 ms of writes", got)
	}
}
