package main

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/mpsync/mpsync/internal/electorproc"

	"github.com/mpsync/mpsync/bench/internal/measure"
	"github.com/mpsync/mpsync/internal/trace"
)

// Timeouts of the harness's waits: generous, since a shared 2-core machine
// can be slow; they only bound a run that went wrong.
const (
	startTimeout = 60 * time.Second // a candidate's first event
	stopGrace    = 10 * time.Second // SIGTERM to SIGKILL
)

// harness runs the trials.
type harness struct {
	c         *cluster
	ns        string
	bin       string // directory of the benchmark programs
	examples  string // directory of the example programs (make examples)
	elector   string // the elector binary
	logs      string // where each trial's process logs go
	lease     time.Duration
	renew     time.Duration
	retry     time.Duration
	rng       *rand.Rand
	trial     int
	mpsyncErr error // why the mpsync Kubernetes half cannot run, or nil
	// tracing: mpsync's candidates and electors print step lines (package
	// internal/trace) for the handover breakdown; set for handovers only,
	// so that no other measurement pays for them.
	tracing bool
	// rtSteps collects roundTripSplit of the traced round-trip trials
	// since the caller last reset it.
	rtSteps []rtSplit
}

// A member is one candidate: its process and, for mpsync, its own elector
// (one per candidate, as a sidecar is one per pod).
type member struct {
	cand, elector *proc
}

// A system is one leader-election implementation under test.
type system struct {
	name  string // as the report shows it
	short string // in Lease names
	start func(h *harness, g *group, lease, id string) (member, error)
}

var clientGo = system{name: "client-go", short: "cg", start: (*harness).startClientGo}
var mpsyncSys = system{name: "mpsync", short: "mp", start: (*harness).startMpsync}
var inprocSys = system{name: "in-process", short: "ip", start: (*harness).startInproc}

// The outsider's systems: the shipped example programs, unchanged and
// untraced, as a user runs them; the harness stamps their "I am the
// leader" line when it reads it (see exampleLine).
var exampleSys = system{name: "example", short: "ex", start: (*harness).startExample}
var exampleInprocSys = system{name: "example in-process", short: "ei", start: (*harness).startExampleInproc}

// systems returns the systems that can run: client-go and mpsync
// in-process always, mpsync through electors when the elector's
// Kubernetes backend works.
func (h *harness) systems() []system {
	if h.mpsyncErr != nil {
		return []system{clientGo, inprocSys}
	}
	return []system{clientGo, mpsyncSys, inprocSys}
}

// outsiders returns the example systems that can run: the in-process one
// always, the sidecar one when the elector's Kubernetes backend works.
func (h *harness) outsiders() []system {
	if h.mpsyncErr != nil {
		return []system{exampleInprocSys}
	}
	return []system{exampleSys, exampleInprocSys}
}

// traceFlag is the flag that makes a program of ours print step lines, if
// h is tracing: flag for a candidate, --test-trace for an elector.
func (h *harness) traceFlag(flag string) []string {
	if !h.tracing {
		return nil
	}
	return []string{flag}
}

func (h *harness) newGroup(what string) (*group, error) {
	h.trial++
	return newGroup(filepath.Join(h.logs, fmt.Sprintf("%03d-%s", h.trial, what)))
}

func (h *harness) startClientGo(g *group, lease, id string) (member, error) {
	p, err := g.start("candidate-"+id, false, filepath.Join(h.bin, "clientgo-candidate"),
		"-kubeconfig", h.c.electorCfg, "-namespace", h.ns, "-name", lease, "-identity", id,
		"-lease-duration", h.lease.String(), "-renew-deadline", h.renew.String(), "-retry-period", h.retry.String())
	return member{cand: p}, err
}

func (h *harness) startMpsync(g *group, lease, id string) (member, error) {
	el, addr, err := h.startElector(g, "elector-"+id, "kubernetes", "pod-"+id)
	if err != nil {
		return member{}, err
	}
	p, err := g.start("candidate-"+id, false, append([]string{filepath.Join(h.bin, "mpsync-candidate"),
		"-elector", addr, "-name", lease, "-identity", id}, h.traceFlag("-trace")...)...)
	return member{cand: p, elector: el}, err
}

// startExample starts the shipped examples/election program, through an
// elector of its own as a sidecar would be.
func (h *harness) startExample(g *group, lease, id string) (member, error) {
	el, addr, err := h.startElector(g, "elector-"+id, "kubernetes", "pod-"+id)
	if err != nil {
		return member{}, err
	}
	p, err := g.startExample("candidate-"+id, filepath.Join(h.examples, "election"),
		"-elector", addr, "-name", lease, "-identity", id)
	return member{cand: p, elector: el}, err
}

// startExampleInproc starts the shipped examples/inprocess program, which
// keeps its Lease through kube.NewTransport with its defaults.
func (h *harness) startExampleInproc(g *group, lease, id string) (member, error) {
	p, err := g.startExample("candidate-"+id, filepath.Join(h.examples, "inprocess"),
		"-kubeconfig", h.c.electorCfg, "-namespace", h.ns, "-name", lease, "-identity", id)
	return member{cand: p}, err
}

// startInproc starts an mpsync candidate that keeps its Lease through
// kube.NewTransport in its own process: no elector.
func (h *harness) startInproc(g *group, lease, id string) (member, error) {
	p, err := g.start("candidate-"+id, false, append([]string{filepath.Join(h.bin, "inproc-candidate"),
		"-kubeconfig", h.c.electorCfg, "-namespace", h.ns, "-name", lease, "-identity", id,
		"-lease-duration", h.lease.String()}, h.traceFlag("-trace")...)...)
	return member{cand: p}, err
}

// procs returns the processes of m: its candidate and its elector if any.
func (m member) procs() []*proc {
	if m.elector == nil {
		return []*proc{m.cand}
	}
	return []*proc{m.cand, m.elector}
}

// startElector starts an elector on a free loopback port and waits until
// it is ready; it returns its address. extra are further flags.
func (h *harness) startElector(g *group, name, backend, identity string, extra ...string) (*proc, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	args := []string{h.elector, "--backend", backend, "--listen", addr, "--identity", identity,
		"--lease-duration", h.lease.String(), "--log-format", "json"}
	args = append(args, h.traceFlag("--test-trace")...)
	if backend == "kubernetes" {
		args = append(args, "--namespace", h.ns, "--kubeconfig", h.c.electorCfg)
	}
	args = append(args, extra...)
	p, err := g.start(name, false, args...)
	if err != nil {
		return nil, "", err
	}
	p.late = true
	err = electorproc.Poll("elector "+name+" ready", 30*time.Second, 50*time.Millisecond, func() bool {
		if p.HasExited() {
			return true
		}
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if p.HasExited() {
		return nil, "", fmt.Errorf("elector %s exited (%v); its log ends:\n%s", name, p.Err(), p.Tail(5))
	}
	if err != nil {
		return nil, "", fmt.Errorf("%w; its log ends:\n%s", err, p.Tail(5))
	}
	return p, addr, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// checkMpsyncKube reports whether an elector starts on the Kubernetes
// backend against this cluster.
func (h *harness) checkMpsyncKube(ctx context.Context) error {
	g, err := h.newGroup("check-elector-kubernetes")
	if err != nil {
		return err
	}
	defer g.stop(stopGrace)
	_, _, err = h.startElector(g, "elector", "kubernetes", "pod-check")
	return err
}

// A leaderResult is one handover or failover trial, in seconds.
type leaderResult struct {
	fromSignal float64 // the signal to the leader → the next leader
	// fromRenewal (failover only): the dead leader's last change of the
	// Lease, as the harness's own watch saw it → the next leader.
	fromRenewal float64
	// steps (handover only): when each step of the breakdown happened,
	// in seconds since the signal (see handoverSteps).
	steps map[string]float64
}

// phaseSpread is the range of the random wait before the signal of a
// leader trial: at least a third of the lease (mpsync's elector renews
// more often than that) and client-go's longest retry period (RetryPeriod
// with its jitter factor of 1.2), so that the signal falls anywhere in the
// leader's renewal period and the follower's retry period.
func (h *harness) phaseSpread() time.Duration {
	return max(h.lease/3, h.retry*22/10)
}

// leaderTrial runs two candidates of sys on a fresh Lease, waits until one
// leads and the other follows it, waits 1 s plus a random part of
// phaseSpread (or hold, if it is not 0), then stops the leader:
// with SIGTERM, or with SIGKILL to it and its elector when crash is true.
// It times the signal → the follower's "leading" line, and for a crash
// also the last change of the Lease before the signal → that line.
func (h *harness) leaderTrial(ctx context.Context, sys system, crash bool, hold time.Duration) (leaderResult, error) {
	kind := "handover"
	if crash {
		kind = "failover"
	}
	g, err := h.newGroup(kind + "-" + sys.short)
	if err != nil {
		return leaderResult{}, err
	}
	defer g.stop(stopGrace)
	lease := fmt.Sprintf("%s-%s-%d", kind, sys.short, h.trial)
	var lw *leaseWatch
	if crash {
		if lw, err = h.c.watchLease(ctx, h.ns, lease); err != nil {
			return leaderResult{}, err
		}
		defer lw.stop()
	}
	a, err := sys.start(h, g, lease, "a")
	if err != nil {
		return leaderResult{}, err
	}
	if _, err := g.wait(ctx, startTimeout, "a to lead", a.cand, event(measure.EventLeading, "a")); err != nil {
		return leaderResult{}, err
	}
	b, err := sys.start(h, g, lease, "b")
	if err != nil {
		return leaderResult{}, err
	}
	if _, err := g.wait(ctx, startTimeout, "b to follow a", b.cand, func(l tagged) bool {
		return l.Event == measure.EventFollowing && l.ID == "b" && l.Fields["leader"] != ""
	}); err != nil {
		return leaderResult{}, err
	}
	if hold == 0 {
		hold = time.Second + time.Duration(h.rng.Int64N(int64(h.phaseSpread())))
	}
	if err := sleep(ctx, hold); err != nil {
		return leaderResult{}, err
	}
	t0 := measure.Now()
	if crash {
		a.cand.Signal(syscall.SIGKILL)
		if a.elector != nil {
			a.elector.Signal(syscall.SIGKILL)
		}
	} else {
		a.cand.Signal(syscall.SIGTERM)
	}
	var steps []tagged
	keep := func(l tagged) {
		if l.Event == trace.Event && l.Mono >= t0 {
			steps = append(steps, l)
		}
	}
	l, err := g.wait(ctx, 4*h.lease+startTimeout, "b to lead", b.cand, func(l tagged) bool {
		keep(l)
		return l.Event == measure.EventLeading && l.ID == "b"
	})
	if err != nil {
		return leaderResult{}, err
	}
	res := leaderResult{fromSignal: float64(l.Mono-t0) / 1e9}
	if !crash && h.tracing {
		steps = append(steps, l)
		// The old leader's last steps (its Run returning) and lines
		// still in the pipes of the others.
		_, _ = g.wait(ctx, stopGrace, "a to exit", nil, func(l tagged) bool {
			keep(l)
			return l.Event == measure.EventExiting && l.ID == "a"
		})
		_, _ = g.wait(ctx, 100*time.Millisecond, "the last step lines", nil, func(l tagged) bool { keep(l); return false })
		res.steps = stepTimes(steps, t0)
	}
	if crash {
		last, err := lw.lastBefore(t0)
		if err != nil {
			return leaderResult{}, err
		}
		res.fromRenewal = float64(l.Mono-last) / 1e9
	}
	return res, nil
}

// window is one idle-load window: lease requests per minute by verb, the
// open lease watches at its end, and (with candidates) what each
// candidate used: its process and, for mpsync through electors, its
// elector's too.
type window struct {
	perMin  map[string]float64
	watches float64
	cpu     float64 // CPU time over the window / its length, mean of the candidates (1 = one core)
	rss     float64 // resident memory at its end, bytes, the largest candidate
}

// loadWindows measures n consecutive windows of length d with three idle
// candidates of sys on one Lease, or with none (the quiet baseline) when
// sys is nil.
func (h *harness) loadWindows(ctx context.Context, sys *system, n int, d time.Duration) ([]window, error) {
	name := "quiet"
	if sys != nil {
		name = "load-" + sys.short
	}
	g, err := h.newGroup(name)
	if err != nil {
		return nil, err
	}
	defer g.stop(stopGrace)
	var ms []member
	if sys != nil {
		lease := fmt.Sprintf("load-%s-%d", sys.short, h.trial)
		for _, id := range []string{"a", "b", "c"} {
			m, err := sys.start(h, g, lease, id)
			if err != nil {
				return nil, err
			}
			ms = append(ms, m)
		}
		// One leads, and the other two follow it.
		var leader, followers = 0, 0
		for leader < 1 || followers < 2 {
			l, err := g.wait(ctx, startTimeout, "three candidates to settle", nil, func(l tagged) bool {
				return l.Event == measure.EventLeading || (l.Event == measure.EventFollowing && l.Fields["leader"] != "")
			})
			if err != nil {
				return nil, err
			}
			if l.Event == measure.EventLeading {
				leader++
			} else {
				followers++
			}
		}
		// Past the start-up requests.
		if err := sleep(ctx, 5*time.Second); err != nil {
			return nil, err
		}
		for _, m := range ms {
			if m.cand.HasExited() {
				return nil, fmt.Errorf("%s exited during the load test:\n%s", m.cand.Name(), m.cand.Tail(5))
			}
		}
	}
	before, err := h.c.scrape(ctx)
	if err != nil {
		return nil, err
	}
	use0, err := memberUsages(ms)
	if err != nil {
		return nil, err
	}
	var out []window
	for range n {
		if err := sleep(ctx, d); err != nil {
			return nil, err
		}
		after, err := h.c.scrape(ctx)
		if err != nil {
			return nil, err
		}
		use1, err := memberUsages(ms)
		if err != nil {
			return nil, err
		}
		secs := float64(after.mono-before.mono) / 1e9
		perMin := measure.Delta(after.requests, before.requests)
		for k := range perMin {
			perMin[k] /= secs / 60
		}
		w := window{perMin: perMin, watches: after.watches}
		for i := range use1 {
			w.cpu += (use1[i].CPU - use0[i].CPU).Seconds() / secs / float64(len(use1))
			w.rss = max(w.rss, float64(use1[i].RSS))
		}
		out = append(out, w)
		before, use0 = after, use1
	}
	return out, nil
}

// memberUsages reads what each of ms has used so far, its processes'
// Usages added up.
func memberUsages(ms []member) ([]measure.Usage, error) {
	out := make([]measure.Usage, len(ms))
	for i, m := range ms {
		us, err := usages(m.procs())
		if err != nil {
			return nil, err
		}
		for _, u := range us {
			out[i].RSS += u.RSS
			out[i].CPU += u.CPU
		}
	}
	return out, nil
}

// memoryHandover passes a lock n times between two lockers through one
// elector on the memory backend: the seconds from the holder's "unlocking"
// line (just before Unlock) to the waiter's "acquired" line (Lock
// returned).
func (h *harness) memoryHandover(ctx context.Context, n int) ([]float64, error) {
	g, err := h.newGroup("memory-handover")
	if err != nil {
		return nil, err
	}
	defer g.stop(stopGrace)
	_, addr, err := h.startElector(g, "elector", "memory", "bench-memory")
	if err != nil {
		return nil, err
	}
	locker := func(id string) (*proc, error) {
		return g.start("locker-"+id, true, filepath.Join(h.bin, "mpsync-locker"),
			"-elector", addr, "-name", "handover", "-identity", id, "-mode", "handover")
	}
	a, err := locker("a")
	if err != nil {
		return nil, err
	}
	if _, err := g.wait(ctx, startTimeout, "a to acquire", a, event(measure.EventAcquired, "a")); err != nil {
		return nil, err
	}
	b, err := locker("b")
	if err != nil {
		return nil, err
	}
	if _, err := g.wait(ctx, startTimeout, "b to wait", b, event(measure.EventWaiting, "b")); err != nil {
		return nil, err
	}
	holder, waiter := a, b
	ids := map[*proc]string{a: "a", b: "b"}
	var out []float64
	for range n {
		// Let the waiter's Lock reach the elector.
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return nil, err
		}
		if err := holder.Tell("unlock"); err != nil {
			return nil, err
		}
		ls, err := g.waitAll(ctx, 10*time.Second, "the lock to pass", nil,
			event(measure.EventUnlocking, ids[holder]), event(measure.EventAcquired, ids[waiter]))
		if err != nil {
			return nil, err
		}
		out = append(out, float64(ls[1].Mono-ls[0].Mono)/1e9)
		if err := holder.Tell("lock"); err != nil {
			return nil, err
		}
		if _, err := g.wait(ctx, 10*time.Second, "the last holder to wait again", holder, event(measure.EventWaiting, ids[holder])); err != nil {
			return nil, err
		}
		holder, waiter = waiter, holder
	}
	return out, nil
}

// inprocBackend is the backend argument of roundTrips for a locker that
// keeps its Lease in-process (kube.NewTransport), with no elector.
const inprocBackend = "in-process"

// roundTrips runs one locker in roundtrip mode for d, pausing for interval
// after each round trip, trials times, each through a fresh elector on
// backend (or, for inprocBackend, in-process on Kubernetes): per trial,
// the median and 99th percentile Lock+Unlock round trip in seconds and the
// round trips per second.
func (h *harness) roundTrips(ctx context.Context, backend string, trials int, d, interval time.Duration) (p50s, p99s, rates []float64, err error) {
	for i := range trials {
		g, err := h.newGroup("roundtrip-" + backend)
		if err != nil {
			return nil, nil, nil, err
		}
		p50, p99, rate, err := func() (float64, float64, float64, error) {
			defer g.stop(stopGrace)
			via := []string{"-kubeconfig", h.c.electorCfg, "-namespace", h.ns, "-lease-duration", h.lease.String()}
			if backend != inprocBackend {
				_, addr, err := h.startElector(g, "elector", backend, "bench-roundtrip")
				if err != nil {
					return 0, 0, 0, err
				}
				via = []string{"-elector", addr}
			}
			argv := append([]string{filepath.Join(h.bin, "mpsync-locker")}, via...)
			argv = append(argv, "-name", fmt.Sprintf("roundtrip-%d", h.trial), "-identity", "rt",
				"-mode", "roundtrip", "-duration", d.String(), "-interval", interval.String())
			p, err := g.start("locker", false, append(argv, h.traceFlag("-trace")...)...)
			if err != nil {
				return 0, 0, 0, err
			}
			var steps []tagged
			l, err := g.wait(ctx, d+startTimeout, "round trips", p, func(l tagged) bool {
				if l.Event == trace.Event {
					steps = append(steps, l)
				}
				return l.Event == measure.EventRoundTrips && l.ID == "rt"
			})
			if err != nil {
				return 0, 0, 0, err
			}
			if h.tracing {
				// The elector's last lines may still be in its pipe.
				_, _ = g.wait(ctx, 100*time.Millisecond, "the last step lines", nil, func(l tagged) bool {
					if l.Event == trace.Event {
						steps = append(steps, l)
					}
					return false
				})
				h.rtSteps = append(h.rtSteps, roundTripSplit(steps)...)
			}
			n, err1 := strconv.ParseFloat(l.Fields["n"], 64)
			elapsed, err2 := strconv.ParseFloat(l.Fields["elapsed_ns"], 64)
			p50, err3 := strconv.ParseFloat(l.Fields["p50_ns"], 64)
			p99, err4 := strconv.ParseFloat(l.Fields["p99_ns"], 64)
			if err1 != nil || err2 != nil || err3 != nil || err4 != nil || elapsed <= 0 {
				return 0, 0, 0, fmt.Errorf("bad roundtrips line %v", l.Line)
			}
			return p50 / 1e9, p99 / 1e9, n / (elapsed / 1e9), nil
		}()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("trial %d: %w", i+1, err)
		}
		p50s = append(p50s, p50)
		p99s = append(p99s, p99)
		rates = append(rates, rate)
	}
	return p50s, p99s, rates, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// verbs returns the verbs with requests in any window of any of ws,
// sorted.
func verbs(ws ...[]window) []string {
	set := map[string]bool{}
	for _, w := range ws {
		for _, x := range w {
			for k, v := range x.perMin {
				if v != 0 {
					set[k] = true
				}
			}
		}
	}
	return sortedKeys(set)
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
