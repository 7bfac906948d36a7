package main

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/mpsync/mpsync/bench/internal/campaign"
	"github.com/mpsync/mpsync/bench/internal/measure"
	"github.com/mpsync/mpsync/internal/trace"
)

// A handoverStep is one row of the breakdown of a graceful handover: a
// step line (package internal/trace, or the candidates' own
// campaign.StepSignal and campaign.StepRunReturned) or the new leader's
// leading line, by the processes of the old leader (side 'a': its
// candidate and elector) or of the next (side 'b').
type handoverStep struct {
	key  string // in leaderResult.steps
	step string // the step line's step, or the event of a measure line
	side byte
	// released: a watch event only if it shows the Lease free or held
	// by the next leader (whose identity is its side's letter)
	released bool
	after    []string // the steps it is timed from: the first that happened
	what     string
}

// handoverSteps are the rows of the breakdown: first the way from the
// signal to the new leader's event, each timed from the step before it,
// then the old leader's own ending, which the new leader does not wait
// for. Steps of the elector appear only through electors.
var handoverSteps = []handoverStep{
	{key: "signal", step: campaign.StepSignal, side: 'a', what: "SIGTERM → the old leader's signal handler cancels its context"},
	{key: "term-ended", step: trace.TermEnded, side: 'a', after: []string{"signal"}, what: "→ its Lock's keeper sees the term end"},
	{key: "release-sent", step: trace.ReleaseSent, side: 'a', after: []string{"term-ended"}, what: "→ it calls the transport's Release"},
	{key: "release-received", step: trace.ReleaseReceived, side: 'a', after: []string{"release-sent"}, what: "→ its elector has read the release request"},
	{key: "release-write-sent", step: trace.ReleaseWriteSent, side: 'a', after: []string{"release-received", "release-sent"}, what: "→ the release write (an Update naming the next holder) is sent"},
	{key: "watch-event", step: trace.WatchEvent, side: 'b', released: true, after: []string{"release-write-sent"}, what: "→ the next leader's Lease watch shows the release"},
	{key: "adopted", step: trace.Adopted, side: 'b', after: []string{"watch-event"}, what: "→ it grants the Lease handed to it, with no write"},
	{key: "take-write-sent", step: trace.TakeWriteSent, side: 'b', after: []string{"watch-event"}, what: "→ or else its write (a take, or a confirmation of a stale offer) is sent"},
	{key: "take-write-done", step: trace.TakeWriteDone, side: 'b', after: []string{"take-write-sent"}, what: "→ the API server has answered it"},
	{key: "grant-sent", step: trace.GrantSent, side: 'b', after: []string{"adopted", "take-write-done"}, what: "→ its elector has sent the grant on the acquire stream"},
	{key: "acquired", step: trace.Acquired, side: 'b', after: []string{"grant-sent", "adopted", "take-write-done"}, what: "→ the SDK's transport has returned the grant"},
	{key: "event-sent", step: trace.EventSent, side: 'b', after: []string{"acquired"}, what: "→ the Election hands the Leader event to its reader"},
	{key: "leading", step: measure.EventLeading, side: 'b', after: []string{"event-sent"}, what: "→ the candidate has read it (its leading line)"},
	{key: "release-write-done", step: trace.ReleaseWriteDone, side: 'a', after: []string{"release-write-sent"}, what: "old leader: the release write answered (from its sending)"},
	{key: "release-done", step: trace.ReleaseDone, side: 'a', after: []string{"release-write-done"}, what: "old leader: the transport's Release returns (from the answer)"},
	{key: "run-returned", step: campaign.StepRunReturned, side: 'a', after: []string{"release-done"}, what: "old leader: its Election.Run returns (from the Release)"},
}

// pathSteps is how many of handoverSteps lie on the way to the new
// leader's event.
const pathSteps = 13

// stepTimes returns, for each of handoverSteps, when it first happened at
// or after t0, in seconds since t0; steps that did not happen are left
// out. A line's side is the last letter of its process's name
// (candidate-a, elector-b).
func stepTimes(lines []tagged, t0 int64) map[string]float64 {
	out := map[string]float64{}
	for _, s := range handoverSteps {
		for _, l := range lines {
			if !strings.HasSuffix(l.proc, "-"+string(s.side)) || l.Mono < t0 {
				continue
			}
			name := l.Event
			if l.Event == trace.Event {
				name = l.Fields["step"]
			}
			if name != s.step || (s.released && l.Fields["free"] != "true" && l.Fields["holder"] != string(s.side)) {
				continue
			}
			t := float64(l.Mono-t0) / 1e9
			if old, ok := out[s.key]; !ok || t < old {
				out[s.key] = t
			}
		}
	}
	return out
}

// stepDeltas returns, for step s, its time since the step it is timed
// from, in each trial where both happened; and its time since the signal.
func stepDeltas(s handoverStep, trials []map[string]float64) (delta, since []float64) {
	for _, tr := range trials {
		t, ok := tr[s.key]
		if !ok {
			continue
		}
		since = append(since, t)
		from, found := 0.0, len(s.after) == 0
		for _, a := range s.after {
			if x, ok := tr[a]; ok {
				from, found = x, true
				break
			}
		}
		if found {
			delta = append(delta, t-from)
		}
	}
	return delta, since
}

// breakdownTable is the median of each step of the graceful handovers of
// mpsync through electors and in-process, side by side: of the trials
// recorded under each system's name as key makes it.
func breakdownTable(r *results, key func(string) string) (measure.Table, bool) {
	systems := []string{key(mpsyncSys.name), key(inprocSys.name)}
	t := measure.Table{Header: []string{"step of a graceful handover (median over the trials)",
		"through electors: step, ms", "since SIGTERM, ms", "in-process: step, ms", "since SIGTERM, ms"}}
	found := false
	for i, s := range handoverSteps {
		row := []string{s.what}
		if i == pathSteps {
			t.Rows = append(t.Rows, []string{"*not waited for by the next leader:*", "", "", "", ""})
		}
		for _, sys := range systems {
			delta, since := stepDeltas(s, r.steps[sys])
			if len(since) == 0 {
				row = append(row, "—", "—")
				continue
			}
			found = true
			d := "—"
			if len(delta) > 0 {
				d = fmt.Sprintf(msec, measure.Summarize(delta).Median*1e3)
			}
			row = append(row, d, fmt.Sprintf(msec, measure.Summarize(since).Median*1e3))
		}
		t.Rows = append(t.Rows, row)
	}
	return t, found
}

// An rtSplit is one traced Lock+Unlock round trip, in seconds: all of it
// (Lock called → Unlock returned, as the locker stamps them), its two
// Lease writes (the take and the release, each sent → answered, by the
// Kubernetes backend in whichever process runs it), and the rest.
type rtSplit struct {
	total, writes float64
}

// roundTripSplit splits the step lines of traced round-trip trials
// (ordered by their stamps, whichever process wrote them) into round
// trips: each from a StepLockCalled to the next StepUnlockReturned, with
// exactly one take write and one release write answered in between. A
// round trip with other writes (a retry, a conflict) is left out.
func roundTripSplit(lines []tagged) []rtSplit {
	sorted := slices.Clone(lines)
	slices.SortStableFunc(sorted, func(a, b tagged) int { return cmp.Compare(a.Mono, b.Mono) })
	var out []rtSplit
	var began int64 = -1
	var sent, writes int64
	var n int
	for _, l := range sorted {
		switch l.Fields["step"] {
		case campaign.StepLockCalled:
			began, writes, n = l.Mono, 0, 0
		case trace.TakeWriteSent, trace.ReleaseWriteSent:
			sent = l.Mono
		case trace.TakeWriteDone, trace.ReleaseWriteDone:
			writes += l.Mono - sent
			n++
		case campaign.StepUnlockReturned:
			if began >= 0 && n == 2 {
				out = append(out, rtSplit{total: float64(l.Mono-began) / 1e9, writes: float64(writes) / 1e9})
			}
			began = -1
		}
	}
	return out
}
