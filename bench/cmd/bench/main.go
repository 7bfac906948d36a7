// Command bench is mpsync's benchmark harness: it measures leader election
// through mpsync's elector on the Kubernetes backend side by side with
// client-go's leaderelection package, against a real API server, and
// mpsync's lock path on the memory backend. It prints a table and writes
// it, with the machine, the versions and the command, into
// docs/BENCHMARKS.md between markers, keeping the rest of that file.
//
// `make bench` runs it through hack/bench.sh, which builds the programs it
// drives (bin/bench/clientgo-candidate, mpsync-candidate, mpsync-locker),
// starts a control plane with hack/controlplane/start.sh and stops it
// afterwards. By hand:
//
//	bench -controlplane DIR/env [-trials 7] [-failover-trials 5] [-window 60s] ...
//
// Every figure is the median, minimum and maximum over repeated trials;
// nothing here passes or fails on speed. The exit status is 0 when every
// measurement ran, 1 when one failed (the report says which), 2 for bad
// flags. If the elector cannot run on the Kubernetes backend, the mpsync
// half of the comparison is reported as not measured, and the rest runs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// options are the command line.
type options struct {
	controlplane, elector, bin, examples, rbac, namespace, out, logs string
	command                                                          string
	trials, failoverTrials, loadWindows, memHandovers, rtTrials      int
	longTrials                                                       int
	longHold                                                         time.Duration
	window, rtDuration, kubePace, floorDuration, lease, renew, retry time.Duration
	randStart                                                        uint64

	contendTrials, contendClients, contendElectors int
	crowdTrials, crowdClients                      int
	contendWindow                                  time.Duration
	raisedQPS                                      float64
	scaleLocks                                     int
	scaleWindow, scaleShippedWindow                time.Duration
	only                                           map[string]bool // parts to run; nil: all
}

// parts are the parts of the run that -only can choose.
var parts = []string{"lockpath", "election", "load", "contend", "crowd", "scale"}

// runs reports whether part is to run.
func (o options) runs(part string) bool { return o.only == nil || o.only[part] }

func parseFlags() options {
	var o options
	flag.StringVar(&o.controlplane, "controlplane", "", "the env `file` that hack/controlplane/start.sh wrote (required)")
	flag.StringVar(&o.elector, "elector", "bin/elector", "the elector `binary`")
	flag.StringVar(&o.bin, "bin", "bin/bench", "`directory` of clientgo-candidate, mpsync-candidate, inproc-candidate and mpsync-locker")
	flag.StringVar(&o.examples, "examples", "bin", "`directory` of the example programs election and inprocess (make examples), timed as a user runs them")
	flag.StringVar(&o.rbac, "rbac", "examples/kubernetes/rbac.yaml", "RBAC `manifest` applied in the namespace")
	flag.StringVar(&o.namespace, "namespace", "mpsync-bench", "`namespace` for the Leases")
	flag.StringVar(&o.out, "out", "docs/BENCHMARKS.md", "Markdown `file` to write the results into (between markers); empty: do not write")
	flag.StringVar(&o.logs, "logs", "bin/bench/logs", "`directory` for every process's log, one subdirectory per trial")
	flag.StringVar(&o.command, "command", "", "the command to record as having produced the results (default: this one)")
	flag.IntVar(&o.trials, "trials", 7, "graceful handover trials per system")
	flag.IntVar(&o.failoverTrials, "failover-trials", 5, "crash failover trials per system (0: none)")
	flag.IntVar(&o.longTrials, "long-trials", 3, "graceful handover trials of mpsync (through electors and in-process) after a long hold (0: none)")
	flag.DurationVar(&o.longHold, "long-hold", 0, "how long the leader holds before the signal in the long-hold trials (0: twice the lease duration)")
	flag.IntVar(&o.loadWindows, "load-windows", 3, "idle-load windows per system, and of the quiet baseline")
	flag.DurationVar(&o.window, "window", 60*time.Second, "length of each idle-load window")
	flag.IntVar(&o.memHandovers, "memory-handovers", 21, "lock handovers on the memory backend")
	flag.IntVar(&o.rtTrials, "roundtrip-trials", 5, "Lock+Unlock round-trip trials per backend")
	flag.DurationVar(&o.rtDuration, "roundtrip-duration", 3*time.Second, "length of each round-trip trial")
	flag.DurationVar(&o.kubePace, "kube-pace", 50*time.Millisecond, "pause between round trips when timing them on the kubernetes backend, to stay under the elector's client-side rate limit")
	flag.DurationVar(&o.floorDuration, "floor-duration", 3*time.Second, "how long to time raw Lease updates")
	flag.DurationVar(&o.lease, "lease-duration", 15*time.Second, "lease duration of both systems")
	flag.DurationVar(&o.renew, "renew-deadline", 10*time.Second, "client-go's RenewDeadline")
	flag.DurationVar(&o.retry, "retry-period", 2*time.Second, "client-go's RetryPeriod")
	flag.Uint64Var(&o.randStart, "rand", 0, "start value of the random delays before each signal, to repeat a run (0: from the clock)")
	flag.IntVar(&o.contendTrials, "contend-trials", 3, "trials of each contended run of -contend-clients lockers")
	flag.IntVar(&o.contendClients, "contend-clients", 10, "lockers contending for one lock in the contended runs")
	flag.IntVar(&o.contendElectors, "contend-electors", 3, "electors they share, round-robin")
	flag.DurationVar(&o.contendWindow, "contend-window", 20*time.Second, "length of each contended run, and of each crowd run")
	flag.Float64Var(&o.raisedQPS, "raised-qps", 1000, "the electors' --kube-qps (and half their --kube-burst) in the contended run with a raised client-side limit")
	flag.IntVar(&o.crowdTrials, "crowd-trials", 2, "trials of -crowd-clients lockers on one lock through one elector, per backend")
	flag.IntVar(&o.crowdClients, "crowd-clients", 100, "lockers (processes) in the crowd runs")
	flag.IntVar(&o.scaleLocks, "scale-locks", 1000, "locks one elector holds in the scale run")
	flag.DurationVar(&o.scaleWindow, "scale-window", 5*time.Minute, "how long the scale run measures them held, the elector's client-side limit sized for them")
	flag.DurationVar(&o.scaleShippedWindow, "scale-shipped-window", time.Minute, "the same with the limit as shipped (0: not run)")
	only := flag.String("only", "", "comma-separated `parts` to run, of "+strings.Join(parts, ", ")+" (default all)")
	flag.Parse()
	bad := flag.NArg() > 0 || o.controlplane == "" || o.trials < 1 || o.failoverTrials < 0 || o.longTrials < 0 || o.longHold < 0 ||
		o.loadWindows < 1 || o.window <= 0 || o.memHandovers < 1 || o.rtTrials < 1 ||
		o.contendTrials < 1 || o.contendClients < 1 || o.contendElectors < 1 || o.contendWindow <= 0 ||
		!(o.raisedQPS > 0) || o.crowdTrials < 1 || o.crowdClients < 1 || o.scaleLocks < 1 || o.scaleWindow <= 0 || o.scaleShippedWindow < 0
	if *only != "" {
		o.only = map[string]bool{}
		for _, p := range strings.Split(*only, ",") {
			if !slices.Contains(parts, p) {
				fmt.Fprintf(os.Stderr, "bench: -only: unknown part %q; want some of %s\n", p, strings.Join(parts, ", "))
				os.Exit(2)
			}
			o.only[p] = true
		}
	}
	if bad {
		fmt.Fprintln(os.Stderr, "usage: bench -controlplane DIR/env [flags]; see -help")
		os.Exit(2)
	}
	if o.command == "" {
		o.command = strings.Join(os.Args, " ")
	}
	if o.randStart == 0 {
		o.randStart = uint64(time.Now().UnixNano())
	}
	return o
}

func main() {
	o := parseFlags()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	failed, err := run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		stop()
		os.Exit(1)
	}
	if failed {
		stop()
		os.Exit(1)
	}
}

// progress reports what the harness is doing, on stderr.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// run runs every measurement and writes the report. failed is true when a
// measurement failed; err is for the harness itself failing.
func run(ctx context.Context, o options) (failed bool, err error) {
	began := time.Now()
	h, err := newHarness(ctx, o, began)
	if err != nil {
		return false, err
	}
	r := newResults()
	h.mpsyncErr = h.checkMpsyncKube(ctx)
	if h.mpsyncErr != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		progress("NOT MEASURING mpsync on Kubernetes: the elector does not start with --backend=kubernetes: %v", h.mpsyncErr)
	}
	if o.runs("lockpath") {
		h.lockPath(ctx, o, r)
	}
	if o.runs("lockpath") || o.runs("contend") {
		if err := h.floor(ctx, o, r, began); err != nil {
			return false, err
		}
	}
	if o.runs("election") {
		if err := h.elections(ctx, o, r); err != nil {
			return false, err
		}
	}
	if err := h.idleLoad(ctx, o, r); err != nil {
		return false, err
	}
	if err := h.contention(ctx, o, r); err != nil {
		return false, err
	}
	if err := publish(ctx, h, o, r, began); err != nil {
		return false, err
	}
	return len(r.errs) > 0, nil
}

// newHarness opens the control plane of o, prepares the namespace and
// names the directory of this run's logs.
func newHarness(ctx context.Context, o options, began time.Time) (*harness, error) {
	c, err := openCluster(o.controlplane)
	if err != nil {
		return nil, err
	}
	if err := c.prepare(ctx, o.namespace, o.rbac); err != nil {
		return nil, err
	}
	logs, err := filepath.Abs(filepath.Join(o.logs, began.UTC().Format("20060102-150405")))
	if err != nil {
		return nil, err
	}
	progress("logs in %s", logs)
	return &harness{
		c: c, ns: o.namespace, bin: o.bin, examples: o.examples, elector: o.elector, logs: logs,
		lease: o.lease, renew: o.renew, retry: o.retry,
		rng: rand.New(rand.NewPCG(o.randStart, o.randStart>>1|1)),
	}, nil
}

// lockPath measures mpsync's lock path: through one elector, handovers and
// round trips on the memory backend; round trips on Kubernetes
// in-process (kube.NewTransport) and through one elector.
func (h *harness) lockPath(ctx context.Context, o options, r *results) {
	progress("memory backend: %d lock handovers", o.memHandovers)
	hs, err := h.memoryHandover(ctx, o.memHandovers)
	r.record(ctx, "memory-handover", err)
	r.memHandover = hs
	progress("memory backend: %d × %v of back-to-back Lock+Unlock round trips", o.rtTrials, o.rtDuration)
	p50s, p99s, rates, err := h.roundTrips(ctx, "memory", o.rtTrials, o.rtDuration, 0)
	r.record(ctx, "roundtrip-memory", err)
	r.rtt["memory"], r.rtt99["memory"], r.rate["memory"] = p50s, p99s, rates
	progress("in-process: %d × %v of Lock+Unlock round trips through kube.NewTransport, one every %v, then as many back to back", o.rtTrials, o.rtDuration, o.kubePace)
	p50s, p99s, _, err = h.tracedRoundTrips(ctx, r, inprocBackend, o.rtTrials, o.rtDuration, o.kubePace)
	if r.record(ctx, "roundtrip-"+inprocBackend, err) {
		r.rtt[inprocBackend], r.rtt99[inprocBackend] = p50s, p99s
		_, _, rates, err := h.roundTrips(ctx, inprocBackend, o.rtTrials, o.rtDuration, 0)
		r.record(ctx, "roundtrip-"+inprocBackend, err)
		r.rate[inprocBackend] = rates
	}
	if h.mpsyncErr != nil {
		return
	}
	// Latency paced (back to back, the elector's client-side rate limit
	// would set it), throughput back to back.
	progress("kubernetes backend: %d × %v of Lock+Unlock round trips, one every %v, then as many back to back", o.rtTrials, o.rtDuration, o.kubePace)
	p50s, p99s, _, err = h.tracedRoundTrips(ctx, r, "kubernetes", o.rtTrials, o.rtDuration, o.kubePace)
	if r.record(ctx, "roundtrip-kubernetes", err) {
		r.rtt["kubernetes"], r.rtt99["kubernetes"] = p50s, p99s
		_, _, rates, err := h.roundTrips(ctx, "kubernetes", o.rtTrials, o.rtDuration, 0)
		r.record(ctx, "roundtrip-kubernetes", err)
		r.rate["kubernetes"] = rates
	}
}

// tracedRoundTrips is roundTrips with the locker (and the elector, if
// any) tracing each step, whose split of each round trip (roundTripSplit)
// it keeps in r.rtSplit[backend].
func (h *harness) tracedRoundTrips(ctx context.Context, r *results, backend string, trials int, d, interval time.Duration) (p50s, p99s, rates []float64, err error) {
	h.tracing, h.rtSteps = true, nil
	defer func() { h.tracing, h.rtSteps = false, nil }()
	p50s, p99s, rates, err = h.roundTrips(ctx, backend, trials, d, interval)
	r.rtSplit[backend] = h.rtSteps
	return p50s, p99s, rates, err
}

// floor measures the API server's raw conditional Lease update rate.
func (h *harness) floor(ctx context.Context, o options, r *results, began time.Time) error {
	progress("API server: raw Lease updates for %v", o.floorDuration)
	floor, n, err := h.c.updateFloor(ctx, o.namespace, fmt.Sprintf("floor-%d", began.Unix()), o.floorDuration, 0, 1)
	r.record(ctx, "floor", err)
	r.floor, r.floorN = floor.Seconds(), n
	if !o.runs("lockpath") {
		return ctx.Err()
	}
	progress("API server: pairs of Lease updates, one pair every %v, for %v", o.kubePace, o.floorDuration)
	pair, n, err := h.c.updateFloor(ctx, o.namespace, fmt.Sprintf("floor-pair-%d", began.Unix()), o.floorDuration, o.kubePace, 2)
	r.record(ctx, "floor-pair", err)
	r.pairFloor, r.pairFloorN = pair.Seconds(), n
	return ctx.Err()
}

// elections runs the leader-election trials, graceful handovers then crash
// failovers, client-go and mpsync interleaved so that a slow spell on the
// machine hits both; then mpsync's graceful handovers after a long hold.
func (h *harness) elections(ctx context.Context, o options, r *results) error {
	for _, crash := range []bool{false, true} {
		kind, trials := "handover", o.trials
		if crash {
			kind, trials = "failover", o.failoverTrials
		}
		for i := range trials {
			which := fmt.Sprintf("%d/%d", i+1, trials)
			for _, sys := range h.systems() {
				// mpsync's handovers are traced, step by step; the
				// outsiders' and client-go's are not.
				h.tracing = !crash && sys.name != clientGo.name
				h.leaderTrialInto(ctx, r, sys, kind, crash, 0, which)
				h.tracing = false
			}
			if !crash {
				for _, sys := range h.outsiders() {
					h.leaderTrialInto(ctx, r, sys, kind, crash, 0, which)
				}
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
	}
	for i := range o.longTrials {
		which := fmt.Sprintf("%d/%d", i+1, o.longTrials)
		for _, sys := range h.systems() {
			if sys.name == clientGo.name {
				continue
			}
			h.tracing = true
			h.leaderTrialInto(ctx, r, sys, "handover", false, o.longHoldOf(), which)
			h.tracing = false
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

// longHoldOf is the hold of the long-hold handover trials: -long-hold, or
// twice the lease duration.
func (o options) longHoldOf() time.Duration {
	if o.longHold > 0 {
		return o.longHold
	}
	return 2 * o.lease
}

// longKey is the key, in results.handover and results.steps, of sys's
// handovers after a long hold.
func longKey(sys string) string { return sys + " after a long hold" }

// leaderTrialInto runs one leader trial of sys (after a hold of hold, or
// of leaderTrial's random wait if hold is 0) and records it in r, unless
// an earlier trial of that kind failed.
func (h *harness) leaderTrialInto(ctx context.Context, r *results, sys system, kind string, crash bool, hold time.Duration, which string) {
	name := sys.name
	if hold > 0 {
		name = longKey(sys.name)
	}
	key := kind + "/" + name
	if r.errs[key] != "" {
		return
	}
	res, err := h.leaderTrial(ctx, sys, crash, hold)
	if !r.record(ctx, key, err) {
		return
	}
	if !crash {
		r.handover[name] = append(r.handover[name], res.fromSignal)
		if res.steps != nil {
			r.steps[name] = append(r.steps[name], res.steps)
		}
		progress("%s %s %s: %.3f s", kind, which, name, res.fromSignal)
		return
	}
	r.failover[sys.name] = append(r.failover[sys.name], res.fromSignal)
	r.expiry[sys.name] = append(r.expiry[sys.name], res.fromRenewal)
	progress("%s %s %s: %.3f s after the kill, %.3f s after the last renewal", kind, which, sys.name, res.fromSignal, res.fromRenewal)
}

// idleLoad measures the API load of idle candidates, net of a quiet
// baseline, which the scale run uses too.
func (h *harness) idleLoad(ctx context.Context, o options, r *results) error {
	var err error
	if o.runs("load") || o.runs("scale") {
		progress("quiet baseline: %d × %v with no candidates", o.loadWindows, o.window)
		r.quiet, err = h.loadWindows(ctx, nil, o.loadWindows, o.window)
		r.record(ctx, "load/quiet", err)
	}
	if o.runs("load") {
		for _, sys := range h.systems() {
			progress("idle load: three %s candidates, %d × %v", sys.name, o.loadWindows, o.window)
			ws, err := h.loadWindows(ctx, &sys, o.loadWindows, o.window)
			r.record(ctx, "load/"+sys.name, err)
			r.load[sys.name] = ws
		}
	}
	return ctx.Err()
}

// publish prints the report and writes it to o.out if set.
func publish(ctx context.Context, h *harness, o options, r *results, began time.Time) error {
	info := gatherInfo(ctx, h.c, o, time.Since(began))
	report := renderReport(r, h, o, info)
	fmt.Println(report)
	if o.out != "" {
		if err := writeReport(o.out, report); err != nil {
			return err
		}
		progress("wrote %s", o.out)
	}
	progress("done in %v", time.Since(began).Round(time.Second))
	return nil
}

// results holds every measurement, in seconds unless said otherwise.
type results struct {
	handover, failover map[string][]float64            // by system
	steps              map[string][]map[string]float64 // by system: each traced handover's leaderResult.steps
	expiry             map[string][]float64            // by system: failover from the last renewal
	quiet              []window
	load               map[string][]window // by system
	memHandover        []float64
	rtt, rtt99, rate   map[string][]float64 // by backend: p50s, p99s, round trips per second
	floor              float64              // p50 of a raw Lease update
	floorN             int
	pairFloor          float64 // p50 of two Lease updates back to back, one pair every -kube-pace
	pairFloorN         int
	rtSplit            map[string][]rtSplit       // by backend: each traced paced round trip
	contend            map[string][]contendResult // by run, see contentionRuns
	scale              map[string][]scaleResult   // by run, see scaleRuns
	footprint          map[string]footprint       // by footprintRuns key
	errs               map[string]string          // measurement → what went wrong
}

func newResults() *results {
	return &results{
		rtSplit: map[string][]rtSplit{}, handover: map[string][]float64{}, steps: map[string][]map[string]float64{}, failover: map[string][]float64{}, expiry: map[string][]float64{},
		load: map[string][]window{}, rtt: map[string][]float64{}, rtt99: map[string][]float64{}, rate: map[string][]float64{},
		contend: map[string][]contendResult{}, scale: map[string][]scaleResult{}, footprint: map[string]footprint{}, errs: map[string]string{},
	}
}

// record notes err as the failure of measurement key, and reports whether
// there was none.
func (r *results) record(ctx context.Context, key string, err error) bool {
	if err == nil {
		return true
	}
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return false
	}
	progress("FAILED %s: %v", key, err)
	if r.errs[key] == "" {
		r.errs[key] = err.Error()
	}
	return false
}
