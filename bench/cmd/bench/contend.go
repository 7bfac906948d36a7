package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mpsync/mpsync/bench/internal/measure"
)

// contendResult is one contended run: lockers taking and releasing one
// lock as fast as they can through some electors.
type contendResult struct {
	rate       float64   // acquisitions per second, all lockers
	counts     []float64 // acquisitions of each locker
	lost       int       // terms that ended before their Unlock
	violations []string  // measure.CheckHolds
	writes     float64   // lease writes (PUT, POST) per acquisition; 0 on memory
	conflicts  float64   // of which refused with 409 Conflict
	writeRate  float64   // lease writes per second
	rss        []float64 // each elector's resident memory at the end, bytes
	cpu        []float64 // each elector's CPU time over the window / the window
}

// contended runs clients lockers of one lock, spread round-robin over
// electors electors of backend (started with the flags extra), for window;
// each holds the lock for hold per term.
func (h *harness) contended(ctx context.Context, what, backend string, electors, clients int, window, hold time.Duration, extra ...string) (contendResult, error) {
	var res contendResult
	g, err := h.newGroup(what)
	if err != nil {
		return res, err
	}
	defer g.stop(stopGrace)
	var els []*proc
	var addrs []string
	for i := range electors {
		el, addr, err := h.startElector(g, fmt.Sprintf("elector-%d", i), backend, fmt.Sprintf("pod-%d", i), extra...)
		if err != nil {
			return res, err
		}
		els, addrs = append(els, el), append(addrs, addr)
	}
	lock := fmt.Sprintf("%s-%d", what, h.trial)
	var lockers []*proc
	var ids []string
	for i := range clients {
		id := fmt.Sprintf("c%03d", i)
		p, err := g.start("locker-"+id, true, filepath.Join(h.bin, "mpsync-locker"),
			"-elector", addrs[i%electors], "-name", lock, "-identity", id, "-mode", "contend",
			"-record", filepath.Join(g.dir, id+".holds"), "-hold", hold.String())
		if err != nil {
			return res, err
		}
		lockers, ids = append(lockers, p), append(ids, id)
	}
	if _, err := g.collect(ctx, startTimeout+time.Duration(clients)*100*time.Millisecond, measure.EventStarted, ids); err != nil {
		return res, err
	}

	var before scrape
	if backend == "kubernetes" {
		if before, err = h.c.scrape(ctx); err != nil {
			return res, err
		}
	}
	cpu0, err := usages(els)
	if err != nil {
		return res, err
	}
	t0 := measure.Now()
	until := t0 + window.Nanoseconds()
	for _, p := range lockers {
		if err := p.Tell(fmt.Sprintf("go %d", until)); err != nil {
			return res, err
		}
	}
	ends, err := g.collect(ctx, window+startTimeout, measure.EventContended, ids)
	if err != nil {
		return res, err
	}
	cpu1, err := usages(els)
	if err != nil {
		return res, err
	}
	var after scrape
	if backend == "kubernetes" {
		if after, err = h.c.scrape(ctx); err != nil {
			return res, err
		}
	}

	var holds []measure.Hold
	for _, id := range ids {
		f, err := os.Open(filepath.Join(g.dir, id+".holds"))
		if err != nil {
			return res, err
		}
		hs, err := measure.ReadHolds(f, id)
		f.Close()
		if err != nil {
			return res, err
		}
		if n, _ := strconv.Atoi(ends[id].Fields["n"]); n != len(hs) {
			return res, fmt.Errorf("%s reported %d terms but recorded %d", id, n, len(hs))
		}
		lost, _ := strconv.Atoi(ends[id].Fields["lost"])
		res.lost += lost
		res.counts = append(res.counts, float64(len(hs)))
		holds = append(holds, hs...)
	}
	res.violations = measure.CheckHolds(holds)
	// Lockers start after t0 and take no lock after until; a Lock call that
	// was granted just as it ended counts too, a few at most.
	res.rate = float64(len(holds)) / window.Seconds()
	if backend == "kubernetes" && len(holds) > 0 {
		d := measure.Delta(after.requests, before.requests)
		res.writes = (d["PUT"] + d["POST"]) / float64(len(holds))
		res.conflicts = (after.conflict - before.conflict) / float64(len(holds))
		res.writeRate = (d["PUT"] + d["POST"]) / (float64(after.mono-before.mono) / 1e9)
	}
	secs := float64(measure.Now()-t0) / 1e9
	for i := range els {
		res.rss = append(res.rss, float64(cpu1[i].RSS))
		res.cpu = append(res.cpu, (cpu1[i].CPU-cpu0[i].CPU).Seconds()/secs)
	}
	return res, nil
}

// usages reads the Usage of each of procs.
func usages(procs []*proc) ([]measure.Usage, error) {
	out := make([]measure.Usage, len(procs))
	for i, p := range procs {
		u, err := measure.ReadUsage(p.Pid())
		if err != nil {
			return nil, fmt.Errorf("usage of %s: %w", p.Name(), err)
		}
		out[i] = u
	}
	return out, nil
}

// A contentionRun is one configuration of contended lockers.
type contentionRun struct {
	key               string // in results.contend
	part              string // of options.runs
	backend           string
	electors, clients int
	trials            int
	extra             []string // elector flags
}

// contentionRuns returns the contended configurations o asks for: the
// issue's 10 lockers through 3 electors with the electors' client-side
// limit as shipped and raised, and a crowd of lockers through one elector
// on each backend.
func contentionRuns(o options) []contentionRun {
	raised := []string{
		"--kube-qps", strconv.FormatFloat(o.raisedQPS, 'f', -1, 64),
		"--kube-burst", strconv.Itoa(int(2 * o.raisedQPS)),
	}
	return []contentionRun{
		{key: "kube", part: "contend", backend: "kubernetes", electors: o.contendElectors, clients: o.contendClients, trials: o.contendTrials},
		{key: "kube-raised", part: "contend", backend: "kubernetes", electors: o.contendElectors, clients: o.contendClients, trials: o.contendTrials, extra: raised},
		{key: "crowd-memory", part: "crowd", backend: "memory", electors: 1, clients: o.crowdClients, trials: o.crowdTrials},
		{key: "crowd-kube", part: "crowd", backend: "kubernetes", electors: 1, clients: o.crowdClients, trials: o.crowdTrials},
	}
}

// contention runs the contended configurations and the scale run that o
// asks for, recording into r. It returns an error only when ctx ends.
func (h *harness) contention(ctx context.Context, o options, r *results) error {
	for _, c := range contentionRuns(o) {
		if !o.runs(c.part) || (c.backend == "kubernetes" && h.mpsyncErr != nil) {
			continue
		}
		for i := range c.trials {
			progress("contended, %s backend: %d lockers of one lock through %d elector(s) %v for %v, trial %d/%d",
				c.backend, c.clients, c.electors, c.extra, o.contendWindow, i+1, c.trials)
			res, err := h.contended(ctx, "contend-"+c.key, c.backend, c.electors, c.clients, o.contendWindow, 0, c.extra...)
			if !r.record(ctx, "contend/"+c.key, err) {
				break
			}
			if len(res.violations) > 0 {
				r.record(ctx, "contend/"+c.key, fmt.Errorf("MUTUAL EXCLUSION VIOLATED: %s", strings.Join(res.violations, "; ")))
			}
			progress("  %.1f acquisitions/s, least and most served locker %.0f and %.0f, %d violations, %d lost",
				res.rate, measure.Summarize(res.counts).Min, measure.Summarize(res.counts).Max, len(res.violations), res.lost)
			r.contend[c.key] = append(r.contend[c.key], res)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	for _, sc := range scaleRuns(o) {
		if !o.runs("scale") || h.mpsyncErr != nil {
			break
		}
		progress("scale: one elector %v holding %d locks for %v", sc.extra, o.scaleLocks, sc.window)
		res, err := h.scale(ctx, "scale-"+sc.key, o.scaleLocks, sc.window, sc.extra...)
		if r.record(ctx, "scale/"+sc.key, err) {
			progress("  %d locks lost", res.lost)
			r.scale[sc.key] = append(r.scale[sc.key], res)
		}
		if sc.key == "sized" {
			h.footprints(ctx, o, r, sc.extra)
		}
	}
	return ctx.Err()
}

// footprintRuns are the baselines of the scale run's profiles: an elector
// holding one lock on the kubernetes backend (its limit as in the sized
// scale run), and on the memory backend one holding one and one holding
// -scale-locks.
func footprintRuns(o options) []footprintBase {
	return []footprintBase{
		{"kubernetes-1", "kubernetes", 1},
		{"memory-1", "memory", 1},
		{"memory-n", "memory", o.scaleLocks},
	}
}

// A footprintBase is one baseline run of the scale run's profiles.
type footprintBase struct {
	key, backend string // key in results.footprint
	locks        int
}

// footprints runs footprintRuns, the kubernetes one with the flags extra,
// recording into r.
func (h *harness) footprints(ctx context.Context, o options, r *results, extra []string) {
	for _, f := range footprintRuns(o) {
		progress("footprint: one elector, %s backend, holding %d locks, profiled after a lease duration", f.backend, f.locks)
		var flags []string
		if f.backend == "kubernetes" {
			flags = extra
		}
		fp, err := h.footprintRun(ctx, "footprint-"+f.key, f.backend, f.locks, flags...)
		if r.record(ctx, "footprint/"+f.key, err) {
			progress("  %.1f MiB resident, %.0f goroutines", medianRSS(fp)/(1<<20), fp.goroutines)
			r.footprint[f.key] = fp
		}
	}
}

// A scaleRun is one configuration of the scale run.
type scaleRun struct {
	key    string // in results.scale
	window time.Duration
	extra  []string // elector flags
}

// scaleRuns returns the scale runs: the elector's client-side limit sized
// for the locks, for -scale-window; then as shipped, for
// -scale-shipped-window (none if zero).
func scaleRuns(o options) []scaleRun {
	qps := scaleQPS(o.scaleLocks, o.lease)
	runs := []scaleRun{{key: "sized", window: o.scaleWindow, extra: []string{
		"--kube-qps", strconv.FormatFloat(qps, 'f', -1, 64), "--kube-burst", strconv.Itoa(int(2 * qps))}}}
	if o.scaleShippedWindow > 0 {
		runs = append(runs, scaleRun{key: "shipped", window: o.scaleShippedWindow})
	}
	return runs
}

// scaleQPS is the client-side limit the scale run gives its elector: twice
// the renewals per second that n locks of lease duration lease need (the
// SDK renews every third of the validity, a little less than the lease).
func scaleQPS(n int, lease time.Duration) float64 {
	return math.Ceil(2 * 3 * float64(n) / lease.Seconds())
}
