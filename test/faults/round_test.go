package faults

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mpsync/mpsync/internal/electorproc"

	"github.com/mpsync/mpsync/test/faults/history"
)

// Kinds of fault, as the harness records them (history.Record.Kind).
const (
	// A client process is SIGKILLed while (usually) holding a lock; a new
	// client process takes its place. Its elector must release its locks
	// when its streams break (docs/DESIGN.md, guarantee 5).
	faultClientKill = "client-sigkill"
	// A client process is stopped (SIGSTOP) and later continued: it stops
	// renewing, its lease lapses and another client takes the lock, while
	// its own context must end on its local deadline (guarantees 1, 2).
	faultClientStop = "client-sigstop"
	// An elector is SIGKILLed and restarted on the same address: its
	// clients' contexts end at once; its Leases are taken by others a
	// lease duration after their last change (guarantees 1, 4, 5).
	faultElectorKill = "elector-sigkill"
	// An elector is stopped for longer than the lease duration (a long GC
	// pause), then continued: its clients must stop on their own timers
	// before the other electors take the Leases (guarantees 1, 2).
	faultElectorStop = "elector-sigstop"
	// The API server is SIGKILLed and restarted with the same flags: no
	// renewal succeeds meanwhile, every holder stops by its deadline, and
	// the locks are taken again once it is back.
	faultAPIServerKill = "apiserver-kill"
	// One elector is cut off from the API server (its proxy holds every
	// byte) while the others are not; on healing, the held bytes go
	// through or the connections are reset.
	faultPartition = "elector-partition"
	// One elector's traffic to the API server is delayed by up to 600ms
	// each way: renewals land late or time out.
	faultSlowLink = "elector-slow-link"
	// An elector whose backend clock is hours off and runs at a rate off
	// by half a percent. Not injected and healed: a standing condition,
	// recorded once per skewed elector when the round starts.
	faultClockSkew = "elector-clock-skew"

	// The faults of in-process holders: client processes that keep their
	// locks as Leases themselves (kube.NewTransport), with no elector,
	// each talking to the API server through a proxy of its own.
	//
	// An in-process client is SIGKILLed while (usually) holding a lock; a
	// new one takes its place. Nothing is left to release its Leases:
	// the others take them a lease duration after its last renewal, which
	// was before the kill, so the round's bound (lease + allowance, from
	// the kill) covers the wait; see allowance. Its heal is the death.
	faultInProcKill = "inprocess-sigkill"
	// An in-process client is stopped (SIGSTOP) for up to two lease
	// durations, then continued: its Transport renews no more, its
	// contexts end on their local deadlines, the others take its Leases a
	// lease duration after its last renewal, and once continued it finds
	// its Leases taken (its writes conflict).
	faultInProcStop = "inprocess-sigstop"
	// One in-process client is cut off from the API server (its proxy
	// holds every byte) while every other process is not; on healing, the
	// held bytes go through or the connections are reset.
	faultInProcPartition = "inprocess-partition"
	// An in-process client whose Transport runs its Lease logic on a
	// clock hours off and half a percent fast (kube.WithTestClock). A
	// standing condition like faultClockSkew, recorded once per skewed
	// client when the round starts.
	faultInProcClockSkew = "inprocess-clock-skew"
)

// roundConfig describes one fault round.
type roundConfig struct {
	name       string // names the round's namespace and directory
	backend    string // "memory" or "kubernetes"
	electors   int
	clientsPer int           // client processes per elector
	locks      []string      // each client loops Lock/Unlock on every one, holding each up to 60ms
	longLocks  []string      // likewise, holding each up to longHold: its terms span renewals
	longHold   time.Duration // 0: four lease durations
	elections  []string      // each client runs every one, for up to three lease durations each time
	// inProcess adds this many client processes that keep their locks
	// in-process (the client's -kubeconfig: kube.NewTransport, lease
	// lease), each through a proxy of its own to the API server; every
	// second one runs its Lease logic on a skewed clock. Kubernetes only.
	inProcess int
	// abandoner adds, on the first elector, a client that abandons its
	// connections (the client's -abandon): raw-socket acquires of locks
	// with bytes after the request, walked away from, never renewed.
	abandoner bool
	lease     time.Duration
	// allowance is added to the lease duration to make history.Check's
	// Bound: see bound.
	allowance time.Duration
	faults    []string // injected in turn
	// A bounded round stops once it has minAcquisitions acquisitions and
	// has injected every fault minEach times; an unsafe one (see unsafe),
	// once it has injected every fault minEach times and the checker sees
	// an overlap. Either fails if that takes more than maxDuration. A soak
	// (duration > 0) runs for duration instead.
	minAcquisitions int
	minEach         int
	maxDuration     time.Duration
	duration        time.Duration
	// staleExtra is passed to the clients as -stale-extra: a test-only
	// way to let stale holders keep acting.
	staleExtra time.Duration
	// fastClocks runs every elector on a clock 30% fast (and hours
	// ahead), far beyond the drift the timing model allows: a test-only
	// way to break the timing margin. The default skews two electors of
	// three within the model.
	fastClocks bool
	// clockRates, if not nil, gives each elector's --test-clock-rate ("" for
	// none) instead.
	clockRates []string
	// summary, if set, is a file the round's summary is also written to.
	summary string
}

// unsafe reports whether the round breaks the guarantee on purpose. Its
// faults then all hit holders, and every SIGSTOP of a client outlasts the
// lease, so that each one ends a term by expiry.
func (c roundConfig) unsafe() bool { return c.staleExtra > 0 || c.fastClocks }

// bound is history.Check's Bound: how long after a heal, or after a
// holder's death, a new holder must appear.
func (c roundConfig) bound() time.Duration { return c.lease + c.allowance }

// round is one run of the harness: a control plane (for the kubernetes
// backend), electors, clients, and the faults injected among them.
type round struct {
	t    *testing.T
	cfg  roundConfig
	dir  string // histories and logs
	hist string // histories only
	rng  *rand.Rand
	mono history.Mono
	w    *history.Writer
	wf   *os.File

	cp       *controlPlane
	ns       string
	electors []*electorProc
	clients  []*clientProc
	procs    []*electorproc.Proc // every process started, for the cleanup
	injected map[string]int
	started  time.Time
	progress *progress
	// lastHeal is when the last fault healed, or a client was killed: the
	// start of the window in which Check wants a holder of every lock.
	lastHeal int64
	// mix is what finish counted of in-process and sidecar holders.
	mix holderMix
}

// holderMix counts, in a round's histories, the terms of in-process
// clients and the handovers of a lock between an in-process holder and an
// elector's client (either way): the mixed contention whose exclusion and
// tokens Check verifies like any other.
type holderMix struct {
	inProcTerms int
	handovers   int
}

type electorProc struct {
	id       string
	addr     string // fixed by the first start: restarts listen there too
	kubeconf string
	proxy    *proxy
	extra    []string // more flags (clock skew)
	p        *electorproc.Proc
}

type clientProc struct {
	slot    string       // "e1-c0": elector and place; "p1": an in-process client
	abandon bool         // runs with -abandon
	e       *electorProc // nil for an in-process client
	// An in-process client's proxy to the API server, its kubeconfig
	// (pointing at the proxy) and more flags (clock skew).
	proxy    *proxy
	kubeconf string
	extra    []string
	gen      int
	name     string // slot and generation: the client of its records
	p        *electorproc.Proc
}

// newRound sets up a round: its directory, control plane, namespace,
// electors and clients. Everything it starts is stopped by t.Cleanup.
func newRound(t *testing.T, cfg roundConfig) *round {
	t.Helper()
	if testing.Short() && controlPlaneEnv() == "" {
		t.Skip("-short: a fault round runs for tens of seconds")
	}
	randStart := uint64(time.Now().UnixNano())
	r := &round{t: t, cfg: cfg, rng: rand.New(rand.NewPCG(randStart, 0)), injected: map[string]int{}}
	t.Logf("round %s: random start %d", cfg.name, randStart)
	dir, err := os.MkdirTemp("", "mpsync-faults-"+cfg.name+"-")
	require.NoError(t, err)
	r.dir = dir
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("MPSYNC_FAULTS_KEEP") != "" {
			t.Logf("logs and histories kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	r.hist = filepath.Join(dir, "history")
	require.NoError(t, os.Mkdir(r.hist, 0o755))
	r.wf, err = os.OpenFile(filepath.Join(r.hist, "harness.jsonl"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	require.NoError(t, err)
	t.Cleanup(func() { r.wf.Close() })
	r.mono = history.NewMono()
	r.w = history.NewWriter(r.wf)
	r.progress = newProgress(r.hist)

	if cfg.backend == "kubernetes" {
		if r.cp, err = startControlPlane(t, filepath.Join(dir, "cp")); err != nil {
			t.Fatal(err)
		}
		if r.ns, err = r.cp.namespace("faults-" + cfg.name); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(r.cleanup)

	skew := cfg.backend == "kubernetes" && clockFlags(t)
	for i := range cfg.electors {
		e := &electorProc{id: fmt.Sprintf("e%d", i+1), addr: "127.0.0.1:0"}
		if r.cp != nil {
			if e.proxy, err = newProxy(r.cp.hostport); err != nil {
				t.Fatal(err)
			}
			if e.kubeconf, err = r.cp.proxiedKubeconfig(e.id, e.proxy.Addr()); err != nil {
				t.Fatal(err)
			}
		}
		switch {
		case cfg.fastClocks:
			if !skew {
				t.Fatal("the elector has no --test-clock-offset/--test-clock-rate flags")
			}
			e.extra = []string{"--test-clock-offset", "2h", "--test-clock-rate", "1.3"}
			r.note(history.Record{Ev: history.Fault, Kind: faultClockSkew})
		case cfg.clockRates != nil:
			if i < len(cfg.clockRates) && cfg.clockRates[i] != "" {
				if !skew {
					t.Fatal("the elector has no --test-clock-offset/--test-clock-rate flags")
				}
				e.extra = []string{"--test-clock-offset", "1h", "--test-clock-rate", cfg.clockRates[i]}
				r.note(history.Record{Ev: history.Fault, Kind: faultClockSkew})
			}
		case skew && i%3 != 0:
			// Two of three electors run on skewed clocks: hours ahead
			// or behind, half a percent fast or slow (within core.Rho
			// of the clients' clocks and of each other).
			offset, rate := "3h", "1.005"
			if i%3 == 2 {
				offset, rate = "-5h", "0.995"
			}
			e.extra = []string{"--test-clock-offset", offset, "--test-clock-rate", rate}
			r.note(history.Record{Ev: history.Fault, Kind: faultClockSkew})
		}
		r.electors = append(r.electors, e)
		require.NoError(t, r.startElector(e))
	}
	if !skew && cfg.backend == "kubernetes" {
		t.Logf("the elector has no --test-clock-offset/--test-clock-rate flags: the %s fault is left out", faultClockSkew)
	}
	for _, e := range r.electors {
		slots := make([]*clientProc, 0, cfg.clientsPer+1)
		for j := range cfg.clientsPer {
			slots = append(slots, &clientProc{slot: fmt.Sprintf("%s-c%d", e.id, j), e: e})
		}
		if cfg.abandoner && e == r.electors[0] {
			slots = append(slots, &clientProc{slot: e.id + "-abandon", e: e, abandon: true})
		}
		for _, c := range slots {
			r.clients = append(r.clients, c)
			require.NoError(t, r.startClient(c))
		}
	}
	for i := range cfg.inProcess {
		if r.cp == nil {
			t.Fatal("in-process clients need the kubernetes backend")
		}
		c := &clientProc{slot: fmt.Sprintf("p%d", i+1)}
		if c.proxy, err = newProxy(r.cp.hostport); err != nil {
			t.Fatal(err)
		}
		if c.kubeconf, err = r.cp.proxiedKubeconfig(c.slot, c.proxy.Addr()); err != nil {
			t.Fatal(err)
		}
		if i%2 == 1 {
			// Hours behind, half a percent fast: within core.Rho of
			// the SDK's clock in the same process and of every
			// elector's (a fast clock is the one that could take a
			// Lease too early).
			c.extra = []string{"-test-clock-offset", "-4h", "-test-clock-rate", "1.005"}
			r.note(history.Record{Ev: history.Fault, Kind: faultInProcClockSkew})
		}
		r.clients = append(r.clients, c)
		require.NoError(t, r.startClient(c))
	}
	r.started = time.Now()
	return r
}

// clockFlags reports whether the elector has the hidden test flags that
// skew its backend's clock.
func clockFlags(t *testing.T) bool {
	cmd := exec.Command(electorBin, "--test-clock-offset", "1s", "--test-clock-rate", "1.001", "--help")
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running %s: %v", electorBin, err)
	}
	return err == nil
}

// cleanup stops, in order, every client, every elector and every proxy
// still running (after a failure; a round that finished has stopped them).
func (r *round) cleanup() {
	for _, p := range slices.Backward(r.procs) {
		p.Stop(5 * time.Second)
	}
	for _, e := range r.electors {
		if e.proxy != nil {
			e.proxy.Close()
		}
	}
	for _, c := range r.clients {
		if c.proxy != nil {
			c.proxy.Close()
		}
	}
}

// note writes a harness record, at the machine's time now.
func (r *round) note(rec history.Record) {
	rec.T = r.mono.Now()
	if err := r.w.Write(rec); err != nil {
		r.t.Fatalf("writing the harness history: %v", err)
	}
	if rec.Ev == history.Heal || rec.Ev == history.Kill {
		r.lastHeal = rec.T
	}
}

// settle waits until every lock has been acquired since the last heal (or
// kill), or the liveness bound has passed since then, whichever comes
// first, so that the next fault does not start inside the window in which
// Check wants a holder after the last one. Check judges what happened
// meanwhile.
func (r *round) settle() {
	locks := append(r.lockNames(), r.cfg.elections...)
	deadline := r.lastHeal + r.cfg.bound().Nanoseconds()
	for r.mono.Now() < deadline {
		r.progress.update()
		if r.progress.acquiredSince(locks, r.lastHeal) {
			return
		}
		time.Sleep(50 * time.Millisecond) // the files have no change notification
	}
}

// lockNames is every lock the clients Lock and Unlock.
func (r *round) lockNames() []string {
	return append(slices.Clone(r.cfg.locks), r.cfg.longLocks...)
}

func (r *round) startElector(e *electorProc) error {
	args := []string{electorBin,
		"--backend", r.cfg.backend,
		"--identity", e.id,
		"--listen", e.addr,
		"--lease-duration", r.cfg.lease.String(),
		"--log-format", "json"}
	if r.cp != nil {
		args = append(args, "--kubeconfig", e.kubeconf, "--namespace", r.ns)
	}
	args = append(args, e.extra...)
	log := filepath.Join(r.dir, e.id+".log")
	ep, err := electorproc.Launch(electorproc.Spec{Name: "elector " + e.id, Argv: args, Log: log}, waitFor)
	if err != nil {
		return fmt.Errorf("%w (log: %s)", err, log)
	}
	p := ep.Proc
	r.procs = append(r.procs, p)
	e.addr, e.p = ep.Addr, p
	return electorproc.Poll("elector "+e.id+" ready", waitFor, 20*time.Millisecond, func() bool {
		return !p.HasExited() && ready(e.addr)
	})
}

func (r *round) startClient(c *clientProc) error {
	c.gen++
	c.name = fmt.Sprintf("%s-g%d", c.slot, c.gen)
	args := []string{clientBin,
		"-name", c.name,
		"-history", filepath.Join(r.hist, c.name+".jsonl"),
		"-run-max", (3 * r.cfg.lease).String(),
		"-rand", fmt.Sprint(r.rng.Uint64()),
	}
	if c.e != nil {
		args = append(args, "-elector", c.e.addr)
	} else {
		args = append(args, "-kubeconfig", c.kubeconf, "-namespace", r.ns, "-lease", r.cfg.lease.String())
		args = append(args, c.extra...)
	}
	if c.abandon {
		args = append(args, "-abandon", "-locks", strings.Join(r.cfg.locks, ","))
	} else {
		args = append(args, "-locks", strings.Join(r.lockSpecs(), ","), "-elections", strings.Join(r.cfg.elections, ","))
	}
	if r.cfg.staleExtra > 0 {
		args = append(args, "-stale-extra", r.cfg.staleExtra.String())
	}
	p, err := electorproc.Run(electorproc.Spec{Name: c.name, Argv: args, Log: filepath.Join(r.dir, c.slot+".log")})
	if err != nil {
		return err
	}
	r.procs = append(r.procs, p)
	c.p = p
	return nil
}

// lockSpecs is the clients' -locks.
func (r *round) lockSpecs() []string {
	specs := slices.Clone(r.cfg.locks)
	hold := r.cfg.longHold
	if hold == 0 {
		hold = 4 * r.cfg.lease
	}
	for _, l := range r.cfg.longLocks {
		specs = append(specs, fmt.Sprintf("%s:%v", l, hold))
	}
	return specs
}

// between returns a random duration in [lo, hi).
func (r *round) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.rng.Int64N(int64(hi-lo)))
}

// wait lets the round run for d: the clients keep locking meanwhile. It is
// a length of the experiment, not a stand-in for a condition.
func (r *round) wait(d time.Duration) {
	time.Sleep(d)
}

// holder returns the client that holds, now, one of the locks held long
// (a long lock, or an election; a short lock if there are none), if an
// elector can say so and it is in-process or not as inproc says. A fault
// aimed at it lands in the middle of a term.
func (r *round) holder(inproc bool) *clientProc {
	names := append(slices.Clone(r.cfg.longLocks), r.cfg.elections...)
	if len(names) == 0 {
		names = r.cfg.locks
	}
	name := names[r.rng.IntN(len(names))]
	for _, e := range r.electors {
		h, err := lockHolder(e.addr, name)
		if err != nil {
			continue
		}
		for _, c := range r.clients {
			if c.name == h && (c.e == nil) == inproc {
				return c
			}
		}
		return nil
	}
	return nil
}

// victim picks the client a fault hits among those through an elector:
// most often the holder of a lock, so that the fault bites; sometimes any
// such client.
func (r *round) victim() *clientProc {
	tries := 1
	if r.cfg.unsafe() {
		tries = 50 // a holder, unless nobody holds anything for long
	} else if r.rng.IntN(4) == 0 {
		tries = 0
	}
	for range tries {
		if c := r.holder(false); c != nil {
			return c
		}
	}
	return r.pick(false)
}

// inProcVictim picks the in-process client a fault hits: three times in
// four the first one seen holding a long lock or an election within a
// lease (fewer in-process clients than others contend, so one try would
// rarely find one holding); otherwise, or if none does, any of them.
func (r *round) inProcVictim() *clientProc {
	if r.rng.IntN(4) != 0 {
		var found *clientProc
		_ = electorproc.Poll("an in-process holder", r.cfg.lease, 50*time.Millisecond, func() bool {
			found = r.holder(true)
			return found != nil
		})
		if found != nil {
			return found
		}
	}
	return r.pick(true)
}

// pick returns a random client, in-process or not as inproc says.
func (r *round) pick(inproc bool) *clientProc {
	var cs []*clientProc
	for _, c := range r.clients {
		if (c.e == nil) == inproc {
			cs = append(cs, c)
		}
	}
	return cs[r.rng.IntN(len(cs))]
}

// run injects faults until the round is over, then stops every process
// and checks the histories.
func (r *round) run() history.Report {
	t := r.t
	for i := 0; !r.over(); i++ {
		r.settle()
		r.wait(r.between(r.cfg.lease/4, r.cfg.lease))
		kind := r.cfg.faults[i%len(r.cfg.faults)]
		if err := r.inject(kind); err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		r.injected[kind]++
		if err := r.healthy(); err != nil {
			t.Fatalf("after %s: %v", kind, err)
		}
	}
	// Run on past the bound after the last heal, so that Check sees the
	// holder that must follow it.
	r.wait(r.cfg.bound() + time.Second)
	require.NoError(t, r.healthy())
	return r.finish()
}

// over reports whether the round has done enough.
func (r *round) over() bool {
	elapsed := time.Since(r.started)
	if r.cfg.duration > 0 {
		return elapsed >= r.cfg.duration
	}
	for _, k := range r.cfg.faults {
		if r.injected[k] < r.cfg.minEach {
			return false
		}
	}
	if r.cfg.unsafe() {
		// Until the checker has seen what the round is meant to show.
		if r.overlapSoFar() {
			return true
		}
		if elapsed > r.cfg.maxDuration {
			r.t.Fatalf("no overlap after %v of an unsafe round (faults: %v)", elapsed.Round(time.Second), r.injected)
		}
		return false
	}
	n := r.acquisitions()
	if n >= r.cfg.minAcquisitions {
		return true
	}
	if elapsed > r.cfg.maxDuration {
		r.t.Fatalf("only %d acquisitions after %v; want %d", n, elapsed.Round(time.Second), r.cfg.minAcquisitions)
	}
	return false
}

// overlapSoFar reports whether the terms recorded so far, those that have
// ended, include two that overlap. (A term that has ended but whose end
// record is not written yet would look as if it lasted until now.)
func (r *round) overlapSoFar() bool {
	files, _ := filepath.Glob(filepath.Join(r.hist, "*.jsonl"))
	var recs []history.Record
	for _, f := range files {
		b, _ := os.ReadFile(f)
		b = b[:bytes.LastIndexByte(b, '\n')+1] // whole lines only
		if fr, err := history.Parse(bytes.NewReader(b)); err == nil {
			recs = append(recs, fr...)
		}
	}
	type key struct {
		lock, client string
		token        uint64
	}
	ended := map[key]bool{}
	for _, rec := range recs {
		if rec.Ev == history.End {
			ended[key{rec.Lock, rec.Client, rec.Token}] = true
		}
	}
	var closed []history.Record
	for _, rec := range recs {
		if (rec.Ev == history.Acquire || rec.Ev == history.End) && ended[key{rec.Lock, rec.Client, rec.Token}] {
			closed = append(closed, rec)
		}
	}
	for _, v := range history.Check(closed, history.Options{}).Violations {
		if strings.Contains(v, " overlaps ") {
			return true
		}
	}
	return false
}

// acquisitions counts the acquire records written so far.
func (r *round) acquisitions() int {
	r.progress.update()
	return r.progress.n
}

// healthy checks that every elector and client the harness did not stop
// is still running, and that every elector is ready.
func (r *round) healthy() error {
	for _, c := range r.clients {
		if c.p.HasExited() {
			return fmt.Errorf("client %s exited on its own: %v (log: %s)", c.name, c.p.Err(), filepath.Join(r.dir, c.slot+".log"))
		}
	}
	for _, e := range r.electors {
		if e.p.HasExited() {
			return fmt.Errorf("elector %s exited on its own: %v (log: %s)", e.id, e.p.Err(), filepath.Join(r.dir, e.id+".log"))
		}
		if err := electorproc.Poll("elector "+e.id+" ready", waitFor, 20*time.Millisecond, func() bool { return ready(e.addr) }); err != nil {
			return err
		}
	}
	return nil
}

// inject injects one fault and heals it.
func (r *round) inject(kind string) error {
	lease := r.cfg.lease
	switch kind {
	case faultClientKill:
		c := r.victim()
		r.note(history.Record{Ev: history.Fault, Kind: kind})
		// Its intervals end here, just before the signal: a killed process
		// acts no more once kill(2) returns, while a time read after it
		// may come late on a loaded machine, after its elector saw the
		// connections close and granted the lock to another client.
		r.note(history.Record{Ev: history.Kill, Client: c.name})
		if err := c.p.Signal(syscall.SIGKILL); err != nil {
			return err
		}
		<-c.p.Exited()
		return r.startClient(c)

	case faultClientStop:
		c := r.victim()
		d := r.between(lease/2, 2*lease)
		if r.cfg.unsafe() {
			d = r.between(lease+time.Second, 2*lease+time.Second)
		}
		r.note(history.Record{Ev: history.Fault, Kind: kind})
		if err := c.p.Signal(syscall.SIGSTOP); err != nil {
			return err
		}
		r.wait(d)
		if err := c.p.Signal(syscall.SIGCONT); err != nil {
			return err
		}
		r.note(history.Record{Ev: history.Heal, Kind: kind})

	case faultInProcKill:
		c := r.inProcVictim()
		r.note(history.Record{Ev: history.Fault, Kind: kind})
		r.note(history.Record{Ev: history.Kill, Client: c.name})
		if err := c.p.Signal(syscall.SIGKILL); err != nil {
			return err
		}
		<-c.p.Exited()
		// The fault is over as it dies: from here every lock must be
		// held again within the bound (see faultInProcKill).
		r.note(history.Record{Ev: history.Heal, Kind: kind})
		return r.startClient(c)

	case faultInProcStop:
		c := r.inProcVictim()
		r.note(history.Record{Ev: history.Fault, Kind: kind})
		if err := c.p.Signal(syscall.SIGSTOP); err != nil {
			return err
		}
		r.wait(r.between(lease/2, 2*lease))
		if err := c.p.Signal(syscall.SIGCONT); err != nil {
			return err
		}
		r.note(history.Record{Ev: history.Heal, Kind: kind})

	case faultInProcPartition:
		c := r.inProcVictim()
		r.note(history.Record{Ev: history.Fault, Kind: kind})
		c.proxy.Blackhole()
		r.wait(r.between(lease+lease/4, 2*lease))
		c.proxy.Heal(r.rng.IntN(2) == 0)
		r.note(history.Record{Ev: history.Heal, Kind: kind})

	case faultElectorKill:
		e := r.victim().e
		r.note(history.Record{Ev: history.Fault, Kind: kind})
		e.p.Kill()
		if err := r.startElector(e); err != nil {
			return err
		}
		r.note(history.Record{Ev: history.Heal, Kind: kind})

	case faultElectorStop:
		e := r.victim().e
		r.note(history.Record{Ev: history.Fault, Kind: kind})
		if err := e.p.Signal(syscall.SIGSTOP); err != nil {
			return err
		}
		r.wait(r.between(lease+lease/4, 2*lease))
		if err := e.p.Signal(syscall.SIGCONT); err != nil {
			return err
		}
		r.note(history.Record{Ev: history.Heal, Kind: kind})

	case faultAPIServerKill:
		r.note(history.Record{Ev: history.Fault, Kind: kind})
		if err := r.cp.killAPIServer(); err != nil {
			return err
		}
		r.wait(r.between(0, lease))
		if err := r.cp.startAPIServer(); err != nil {
			return err
		}
		r.note(history.Record{Ev: history.Heal, Kind: kind})

	case faultPartition:
		e := r.victim().e
		r.note(history.Record{Ev: history.Fault, Kind: kind})
		e.proxy.Blackhole()
		r.wait(r.between(lease+lease/4, 2*lease))
		e.proxy.Heal(r.rng.IntN(2) == 0)
		r.note(history.Record{Ev: history.Heal, Kind: kind})

	case faultSlowLink:
		e := r.victim().e
		r.note(history.Record{Ev: history.Fault, Kind: kind})
		e.proxy.Delay(r.between(50*time.Millisecond, 600*time.Millisecond))
		r.wait(2 * lease)
		e.proxy.Heal(false)
		r.note(history.Record{Ev: history.Heal, Kind: kind})

	default:
		return fmt.Errorf("unknown fault %q", kind)
	}
	return nil
}

// finish stops the clients (each records the end of its terms), then the
// electors, and checks every history.
func (r *round) finish() history.Report {
	t := r.t
	for _, c := range r.clients {
		_ = c.p.Signal(syscall.SIGCONT)
		_ = c.p.Signal(syscall.SIGTERM)
	}
	for _, c := range r.clients {
		// One SIGTERM each: a second one could kill a client that has
		// let go of its handler on its way out.
		if !c.p.Await(10*time.Second) || c.p.Err() != nil {
			// Killed, or failed: its open intervals end now.
			r.note(history.Record{Ev: history.Kill, Client: c.name})
			t.Errorf("client %s did not stop cleanly: %v (log: %s)", c.name, c.p.Err(), filepath.Join(r.dir, c.slot+".log"))
		}
	}
	for _, e := range r.electors {
		if !e.p.Stop(10*time.Second) || e.p.Err() != nil {
			t.Errorf("elector %s did not stop cleanly on SIGTERM: %v", e.id, e.p.Err())
		}
	}
	elapsed := time.Since(r.started)
	recs, err := r.records()
	require.NoError(t, err)
	rep := history.Check(recs, history.Options{Bound: r.cfg.bound()})
	r.mix = r.countMix(recs)
	sum := r.summary(rep, recs, elapsed)
	t.Log(sum)
	if r.cfg.summary != "" {
		assert.NoError(t, os.WriteFile(r.cfg.summary, []byte(sum), 0o644))
	}
	return rep
}

// inProc reports whether the client of a record (slot and generation) is
// an in-process one.
func (r *round) inProc(client string) bool {
	for _, c := range r.clients {
		if c.e == nil && strings.HasPrefix(client, c.slot+"-g") {
			return true
		}
	}
	return false
}

// countMix counts the in-process terms of recs and the handovers between
// in-process and sidecar holders, lock by lock in acquisition order.
func (r *round) countMix(recs []history.Record) holderMix {
	var m holderMix
	byLock := map[string][]history.Record{}
	for _, rec := range recs {
		if rec.Ev == history.Acquire {
			byLock[rec.Lock] = append(byLock[rec.Lock], rec)
		}
	}
	for _, list := range byLock {
		sort.SliceStable(list, func(i, j int) bool { return list[i].T < list[j].T })
		for i, rec := range list {
			in := r.inProc(rec.Client)
			if in {
				m.inProcTerms++
			}
			if i > 0 && in != r.inProc(list[i-1].Client) {
				m.handovers++
			}
		}
	}
	return m
}

// records parses every history file of the round.
func (r *round) records() ([]history.Record, error) {
	files, err := filepath.Glob(filepath.Join(r.hist, "*.jsonl"))
	if err != nil {
		return nil, err
	}
	var all []history.Record
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, err
		}
		recs, err := history.Parse(fh)
		fh.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		all = append(all, recs...)
	}
	return all, nil
}

// summary is the round's report in words.
func (r *round) summary(rep history.Report, recs []history.Record, elapsed time.Duration) string {
	var b strings.Builder
	perLock, causes := map[string]int{}, map[string]int{}
	for _, rec := range recs {
		switch rec.Ev {
		case history.Acquire:
			perLock[rec.Lock]++
		case history.End:
			causes[rec.Cause]++
		}
	}
	fmt.Fprintf(&b, "fault round %q on the %s backend: %v, %d electors, %d client processes (%d of them in-process), lease %v, bound %v\n",
		r.cfg.name, r.cfg.backend, elapsed.Round(time.Second), len(r.electors), len(r.clients), r.cfg.inProcess, r.cfg.lease, r.cfg.bound())
	fmt.Fprintf(&b, "acquisitions checked: %d (%s)\n", rep.Acquisitions, countList(perLock))
	if r.cfg.inProcess > 0 {
		fmt.Fprintf(&b, "in-process: %d of those terms; %d handovers between an in-process and a sidecar holder\n",
			r.mix.inProcTerms, r.mix.handovers)
	}
	fmt.Fprintf(&b, "terms ended (by cause, as the holder saw it): %s\n", countList(causes))
	total := 0
	for _, n := range rep.Faults {
		total += n
	}
	fmt.Fprintf(&b, "faults injected: %d (%s)\n", total, countList(rep.Faults))
	fmt.Fprintf(&b, "violations: %d\n", len(rep.Violations))
	const show = 20
	for i, v := range rep.Violations {
		if i == show {
			fmt.Fprintf(&b, "  ... and %d more\n", len(rep.Violations)-show)
			break
		}
		fmt.Fprintf(&b, "  %s\n", v)
	}
	gaps := map[string]string{}
	for k, d := range history.Gaps(recs) {
		gaps[k] = d.Round(time.Millisecond).String()
	}
	fmt.Fprintf(&b, "longest time with no holder after a fault: %v (after each kind: %s)\n",
		rep.LongestGap.Round(time.Millisecond), countList(gaps))
	return b.String()
}

func countList[V any](m map[string]V) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %v", k, m[k])
	}
	return strings.Join(parts, ", ")
}
