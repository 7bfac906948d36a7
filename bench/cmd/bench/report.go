package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/mpsync/mpsync/bench/internal/measure"
	"github.com/mpsync/mpsync/kube"
)

// info is what the report says about the run besides the numbers.
type info struct {
	when, took                      string
	nproc                           int
	cpu, memory                     string
	goVersion, clientGo, kube, etcd string
	mpsyncRev                       string
}

func gatherInfo(ctx context.Context, c *cluster, o options, took time.Duration) info {
	in := info{
		when:      time.Now().UTC().Format("2006-01-02 15:04 MST"),
		took:      took.Round(time.Second).String(),
		nproc:     runtime.NumCPU(),
		cpu:       procField("/proc/cpuinfo", "model name"),
		memory:    "unknown",
		goVersion: runtime.Version(),
		clientGo:  "unknown",
		kube:      c.version(ctx),
		etcd:      c.etcdVersion(ctx),
		mpsyncRev: "unknown",
	}
	if kb, err := strconv.ParseFloat(strings.TrimSuffix(procField("/proc/meminfo", "MemTotal"), " kB"), 64); err == nil {
		in.memory = fmt.Sprintf("%.1f GiB", kb/(1<<20))
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "k8s.io/client-go" {
				in.clientGo = d.Version
			}
		}
	}
	if out, err := exec.CommandContext(ctx, "git", "describe", "--always", "--dirty").Output(); err == nil {
		in.mpsyncRev = strings.TrimSpace(string(out))
	}
	return in
}

// procField returns the value of the first "key : value" line of a /proc
// file, or "unknown".
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// Formats of the figures.
const (
	secs = "%.3f" // seconds
	msec = "%.2f" // milliseconds
	rate = "%.1f" // per minute, per second
)

func renderReport(r *results, h *harness, o options, in info) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("## Results of the last run")
	p("")
	p("Measured %s; the run took %s.", in.when, in.took)
	p("")
	p("- Command: `%s`", o.command)
	p("- Machine: %d CPUs (nproc), %s, %s memory, %s/%s", in.nproc, in.cpu, in.memory, runtime.GOOS, runtime.GOARCH)
	p("- Versions: %s, k8s.io/client-go %s, kube-apiserver %s, etcd %s, mpsync %s", in.goVersion, in.clientGo, in.kube, in.etcd, in.mpsyncRev)
	p("- Settings: lease duration %v for both; client-go renew deadline %v, retry period %v, `LeaseLock`, `ReleaseOnCancel: true`; mpsync one elector per candidate, `--backend=kubernetes --lease-duration=%v` (default log level, JSON logs to a file); mpsync in-process one `kube.NewTransport` per candidate; every candidate and elector a separate process on this machine; times from CLOCK_MONOTONIC; before each signal a random wait of 1 s plus up to %v, from `-rand %d`",
		o.lease, o.renew, o.retry, o.lease, h.phaseSpread(), o.randStart)
	p("- Figures: median [min–max] over the trials; ratios are of the medians, mpsync / client-go")
	p("")

	if h.mpsyncErr != nil {
		p("**mpsync on Kubernetes NOT MEASURED**: `%s --backend=kubernetes` did not start: %s", o.elector, oneLine(h.mpsyncErr.Error()))
		p("")
	}
	if len(r.errs) > 0 {
		p("**Measurements that FAILED** (their rows are incomplete; logs under `%s`):", relPath(h.logs))
		p("")
		for _, k := range sortedKeys(r.errs) {
			p("- %s: %s", k, oneLine(r.errs[k]))
		}
		p("")
	}

	p("### Leader election on Kubernetes: client-go and mpsync")
	p("")
	p("%s", electionTable(r, h, o).Markdown())
	p("Idle load is net of the quiet baseline: the API server alone, no candidates, made %s lease requests/min (%s) over %d × %v.",
		measure.Summarize(totals(r.quiet, nil)).Format(rate, 1), verbSummary(r.quiet), len(r.quiet), o.window)
	p("Watches show up in `apiserver_request_total` only when they end; \"open lease watches\" is the `apiserver_longrunning_requests` gauge at the end of each window, net of the baseline.")
	p("")

	p("### In-process: mpsync's Lease logic in the candidate's own process, beside client-go")
	p("")
	p("mpsync in-process is `kube.NewTransport(cfg, ns, kube.WithLeaseDuration(%v))` with its default client-side limit (%d/s, burst %d), one Transport per candidate process, no elector: the same process model as client-go's, on the same kind of Lease.", o.lease, kube.DefaultQPS, kube.DefaultBurst)
	p("")
	p("%s", inprocTable(r, o).Markdown())
	p("A crashed in-process holder's lock is taken about one lease duration after its last renewal: nothing is left to release it. A sidecar elector that outlives its crashed client notices the connection drop and releases at once; that case is not timed here (the crash failover above kills the elector too, as a pod crash does).")
	p("")

	if t, ok := breakdownTable(r, func(sys string) string { return sys }); ok {
		p("### Graceful handover, step by step (issue 16)")
		p("")
		p("Every mpsync handover trial above, through electors and in-process, is traced: each process of ours prints a line stamped with CLOCK_MONOTONIC at each step (package internal/trace; the candidates' `-trace`, the electors' `--test-trace`). A step is timed from the one before it; a step that did not happen in any trial (only electors have some; a take or confirming write only when the Lease was not handed over as it was) is \"—\". The new leader's watch event and the old leader's answer to its release write race; the next leader waits only for the first.")
		p("")
		p("%s", t.Markdown())
	}
	if t, ok := breakdownTable(r, longKey); ok {
		p("After a long hold (the leader held %v before the signal, so the follower's offer was older than half a validity and it waited longer than a lease), %d trials per system, step by step as above. The follower's elector confirms the Lease handed to it with a write of its own before it grants it (the take or confirming write above); the SDK acts on that grant at once (it renews first only after a wait of about 25 leases, whose drift allowance would leave it less than half a validity).", o.longHoldOf(), o.longTrials)
		p("")
		p("%s", t.Markdown())
	}
	if len(r.handover[exampleSys.name])+len(r.handover[exampleInprocSys.name]) > 0 {
		p("%s", outsiderTable(r, h, o).Markdown())
		p("The outsider's way: the shipped example programs (`bin/election` through an elector of its own, `bin/inprocess` with `kube.NewTransport`'s defaults), untraced, two separate processes; the harness times its SIGTERM to the moment it reads the new leader's \"I am the leader\" line from its stdout pipe, which adds the pipe and the harness's scheduling to the figure.")
		p("")
	}

	p("### mpsync's lock path")
	p("")
	p("%s", lockTable(r, h, o).Markdown())

	if t, ok := contentionTable(r, o); ok {
		p("### Contention and scale")
		p("")
		p("%s", t.Markdown())
		p("%s", contentionNotes(r, o))
		p("%s", profileNotes(r))
		p("")
	}

	p("### Every trial")
	p("")
	list := func(name string, xs []float64, unit float64, f string) {
		if len(xs) == 0 {
			return
		}
		s := make([]string, len(xs))
		for i, x := range xs {
			s[i] = fmt.Sprintf(f, x/unit)
		}
		p("- %s: %s", name, strings.Join(s, ", "))
	}
	allSystems := []string{clientGo.name, mpsyncSys.name, inprocSys.name}
	for _, sys := range append(allSystems, exampleSys.name, exampleInprocSys.name, longKey(mpsyncSys.name), longKey(inprocSys.name)) {
		list("graceful handover, "+sys+", s", r.handover[sys], 1, secs)
	}
	for _, sys := range allSystems {
		list("crash failover, "+sys+", s", r.failover[sys], 1, secs)
	}
	for _, sys := range allSystems {
		list("crash failover from the last renewal, "+sys+", s", r.expiry[sys], 1, secs)
	}
	list("quiet baseline, lease requests/min", totals(r.quiet, nil), 1, rate)
	for _, sys := range allSystems {
		list("idle load, "+sys+", lease requests/min (net)", totals(r.load[sys], r.quiet), 1, rate)
	}
	for _, sys := range allSystems {
		list("idle candidate CPU, "+sys+", % of one core", cpus(r.load[sys]), 1e-2, "%.2f")
	}
	for _, sys := range allSystems {
		list("idle candidate resident memory, "+sys+", MiB", rsses(r.load[sys]), 1<<20, rate)
	}
	list("memory backend handover, ms", r.memHandover, 1e-3, msec)
	for _, backend := range []string{"memory", "kubernetes", inprocBackend} {
		list(backend+" backend Lock+Unlock p50 per trial, ms", r.rtt[backend], 1e-3, msec)
		list(backend+" backend Lock+Unlock p99 per trial, ms", r.rtt99[backend], 1e-3, msec)
		list(backend+" backend round trips per second", r.rate[backend], 1, rate)
	}
	for _, c := range contentionRuns(o) {
		var rates []float64
		for _, x := range r.contend[c.key] {
			rates = append(rates, x.rate)
		}
		list("contended, "+c.key+", acquisitions/s", rates, 1, rate)
	}
	for _, sc := range scaleRuns(o) {
		for _, x := range r.scale[sc.key] {
			list("scale ("+sc.key+" limit), the elector's resident memory every "+scaleSample.String()+", MiB", x.rss, 1<<20, rate)
		}
	}
	p("")
	p("Logs of every process of this run were in `%s` on the machine that ran it.", relPath(h.logs))
	return b.String()
}

// outsiderTable sets the handovers of the example programs beside those of
// the traced benchmark candidates of the same run.
func outsiderTable(r *results, h *harness, o options) measure.Table {
	t := measure.Table{Header: []string{"graceful handover, SIGTERM to the leader → next leader, ms", "through electors", "in-process", "goal (issue 16)"}}
	f := func(sys string) string { return measure.Summarize(r.handover[sys]).Format(msec, 1e-3) }
	el := func(sys string) string {
		if h.mpsyncErr != nil {
			return "not measured"
		}
		return f(sys)
	}
	t.Rows = append(t.Rows,
		[]string{"the benchmark candidates (traced), their own leading line", el(mpsyncSys.name), f(inprocSys.name), "p50 ≤ 12"},
		[]string{"the example programs (untraced), as the harness reads their output", el(exampleSys.name), f(exampleInprocSys.name), "p50 ≤ 12"},
	)
	if len(r.handover[longKey(mpsyncSys.name)])+len(r.handover[longKey(inprocSys.name)]) > 0 {
		t.Rows = append(t.Rows, []string{fmt.Sprintf("the benchmark candidates (traced) after the leader held %v", o.longHoldOf()),
			el(longKey(mpsyncSys.name)), f(longKey(inprocSys.name)), "report"})
	}
	return t
}

func electionTable(r *results, h *harness, o options) measure.Table {
	t := measure.Table{Header: []string{"measurement", "client-go", "mpsync", "mpsync / client-go", "goal (issue 6)"}}
	na := func(s measure.Summary, f string, unit float64) string {
		if s.N == 0 && h.mpsyncErr != nil {
			return "not measured"
		}
		return s.Format(f, unit)
	}
	row := func(name string, cg, mp []float64, f, goal string) {
		a, b := measure.Summarize(cg), measure.Summarize(mp)
		t.Rows = append(t.Rows, []string{name, a.Format(f, 1), na(b, f, 1), measure.Ratio(b, a, "%.3f"), goal})
	}
	row("graceful handover: SIGTERM to the leader → next leader, s", r.handover["client-go"], r.handover["mpsync"], secs,
		"client-go ≈1.6 (0.7–2.7); mpsync p50 ≤ 0.025 (≥ 50× faster)")
	row("crash failover: SIGKILL (mpsync: candidate and its elector) → next leader, s", r.failover["client-go"], r.failover["mpsync"], secs,
		fmt.Sprintf("client-go ≈15.8; mpsync within 0.1 of the lease (%.1f)", o.lease.Seconds()))
	row("crash failover: the dead leader's last renewal (seen by a watch) → next leader, s", r.expiry["client-go"], r.expiry["mpsync"], secs,
		fmt.Sprintf("the lease (%.1f), not the lease plus a polling period", o.lease.Seconds()))
	row(fmt.Sprintf("idle API load, 3 candidates: lease requests/min (%d × %v)", o.loadWindows, o.window),
		totals(r.load["client-go"], r.quiet), totals(r.load["mpsync"], r.quiet), rate,
		"client-go ≈65; mpsync ≤ 1/5 of client-go")
	for _, v := range verbs(r.quiet, r.load["client-go"], r.load["mpsync"]) {
		row("  of which "+v, byVerb(r.load["client-go"], r.quiet, v), byVerb(r.load["mpsync"], r.quiet, v), rate, "")
	}
	row("  open lease watches (gauge)", watches(r.load["client-go"], r.quiet), watches(r.load["mpsync"], r.quiet), "%.0f", "")
	a, b := measure.Summarize(cpus(r.load["client-go"])), measure.Summarize(cpus(r.load["mpsync"]))
	t.Rows = append(t.Rows, []string{"idle candidate CPU, % of one core (mpsync: candidate and its elector)", a.Format("%.2f", 1e-2), na(b, "%.2f", 1e-2), measure.Ratio(b, a, "%.2f"), ""})
	a, b = measure.Summarize(rsses(r.load["client-go"])), measure.Summarize(rsses(r.load["mpsync"]))
	t.Rows = append(t.Rows, []string{"idle candidate resident memory, MiB (mpsync: candidate and its elector)", a.Format(rate, 1<<20), na(b, rate, 1<<20), measure.Ratio(b, a, "%.2f"), ""})
	return t
}

// inprocTable is the table of mpsync in-process (kube.NewTransport) beside
// client-go, both measured in this run, with the goals of issue 14.
func inprocTable(r *results, o options) measure.Table {
	cg, ip := clientGo.name, inprocSys.name
	t := measure.Table{Header: []string{"measurement", "client-go", "mpsync in-process", "in-process / client-go", "goal (issue 14)"}}
	row := func(name string, a, b []float64, f string, unit float64, ratio, goal string) {
		sa, sb := measure.Summarize(a), measure.Summarize(b)
		if ratio == "" {
			ratio = measure.Ratio(sb, sa, "%.3f")
		}
		t.Rows = append(t.Rows, []string{name, sa.Format(f, unit), sb.Format(f, unit), ratio, goal})
	}
	d := o.lease.Seconds()
	less := func(xs []float64) []float64 {
		out := make([]float64, len(xs))
		for i, x := range xs {
			out[i] = x - d
		}
		return out
	}
	row("graceful handover: SIGTERM to the leader → next leader, s", r.handover[cg], r.handover[ip], secs, 1, "",
		"p50 ≤ 0.025, ≥ 50× faster (ratio ≤ 0.020)")
	row("crash failover: SIGKILL to the leader → next leader, s", r.failover[cg], r.failover[ip], secs, 1, "", "")
	row("crash failover: the dead leader's last renewal (seen by a watch) → next leader, s", r.expiry[cg], r.expiry[ip], secs, 1, "",
		fmt.Sprintf("within 0.1 of the lease (%.1f)", d))
	row(fmt.Sprintf("  the same less the lease (%.1f), s", d), less(r.expiry[cg]), less(r.expiry[ip]), secs, 1, "—", "≤ 0.100")
	row(fmt.Sprintf("idle API load, 3 candidates: lease requests/min, net (%d × %v)", o.loadWindows, o.window),
		totals(r.load[cg], r.quiet), totals(r.load[ip], r.quiet), rate, 1, "", "≤ 1/5 of client-go (ratio ≤ 0.200)")
	for _, v := range verbs(r.quiet, r.load[cg], r.load[ip]) {
		row("  of which "+v, byVerb(r.load[cg], r.quiet, v), byVerb(r.load[ip], r.quiet, v), rate, 1, "", "")
	}
	row("  open lease watches (gauge)", watches(r.load[cg], r.quiet), watches(r.load[ip], r.quiet), "%.0f", 1, "", "")
	row("idle candidate process CPU, % of one core (mean of the three, per window)", cpus(r.load[cg]), cpus(r.load[ip]), "%.2f", 1e-2, "", "report")
	row("idle candidate process resident memory, MiB (the largest of the three, end of each window)", rsses(r.load[cg]), rsses(r.load[ip]), rate, 1<<20, "", "report")

	// The lock path has no client-go counterpart: its ratio is to the
	// floor of two conditional Lease updates (acquire and release).
	rt := measure.Summarize(r.rtt[inprocBackend])
	floorRatio := "n/a"
	if rt.N > 0 && r.floor > 0 {
		floorRatio = fmt.Sprintf("%.2f × the two-write floor (2 × %.2f ms)", rt.Median/(2*r.floor), r.floor*1e3)
	}
	pairRatio := ""
	if rt.N > 0 && r.pairFloor > 0 {
		pairRatio = fmt.Sprintf("%.2f × the paced two-write floor (%.2f ms)", rt.Median/r.pairFloor, r.pairFloor*1e3)
	}
	t.Rows = append(t.Rows,
		[]string{fmt.Sprintf("Lock+Unlock round trip in-process, uncontended, one every %v, p50 of each %v trial, ms", o.kubePace, o.rtDuration),
			"(no lock)", rt.Format(msec, 1e-3), floorRatio, "≤ 1.25 × the two-write floor"},
		[]string{"  the same against two updates paced as the round trips are (below)", "", "", pairRatio, "≤ 1.25 × the two-write floor"},
		splitRow(r.rtSplit[inprocBackend]),
		[]string{fmt.Sprintf("  the same, p99 of each %v trial, ms", o.rtDuration), "", measure.Summarize(r.rtt99[inprocBackend]).Format(msec, 1e-3), "", ""},
		[]string{"  back-to-back round trips per second, one client (client-side limit as shipped)", "", measure.Summarize(r.rate[inprocBackend]).Format(rate, 1), "", ""},
	)
	return t
}

// splitRow is the row of the traced paced round trips xs: the median
// round trip, the median of its two Lease writes, and the median of the
// rest, which is the SDK's and the Lease logic's own time (and the
// trace's).
func splitRow(xs []rtSplit) []string {
	if len(xs) == 0 {
		return []string{"  the same, traced: round trip = its two Lease writes + the rest, median, ms", "", "n/a", "", ""}
	}
	var total, writes, rest, ratio []float64
	for _, x := range xs {
		total = append(total, x.total)
		writes = append(writes, x.writes)
		rest = append(rest, x.total-x.writes)
		if x.writes > 0 {
			ratio = append(ratio, x.total/x.writes)
		}
	}
	med := func(v []float64) float64 { return measure.Summarize(v).Median }
	return []string{"  the same, traced: round trip = its two Lease writes + the rest, median, ms", "",
		fmt.Sprintf("%.2f = %.2f + %.2f (of %d)", med(total)*1e3, med(writes)*1e3, med(rest)*1e3, len(xs)),
		fmt.Sprintf("%.2f × its own two writes (median per round trip)", med(ratio)), "the rest is what is not physics"}
}

// cpus returns the candidates' CPU of each window of ws, in cores.
func cpus(ws []window) []float64 {
	var out []float64
	for _, w := range ws {
		out = append(out, w.cpu)
	}
	return out
}

// rsses returns the largest candidate's resident memory at the end of each
// window of ws, in bytes.
func rsses(ws []window) []float64 {
	var out []float64
	for _, w := range ws {
		out = append(out, w.rss)
	}
	return out
}

func lockTable(r *results, h *harness, o options) measure.Table {
	t := measure.Table{Header: []string{"measurement", "median [min–max]", "trials", "goal (issue 6)"}}
	add := func(name string, xs []float64, f string, unit float64, goal string) {
		s := measure.Summarize(xs)
		v := s.Format(f, unit)
		if s.N == 0 && h.mpsyncErr != nil && strings.Contains(name, "kubernetes") {
			v = "not measured"
		}
		t.Rows = append(t.Rows, []string{name, v, strconv.Itoa(s.N), goal})
	}
	add("memory backend: lock handover, Unlock → the waiting process's Lock returns, ms", r.memHandover, msec, 1e-3, "")
	add(fmt.Sprintf("memory backend: uncontended Lock+Unlock round trip, back to back, p50 of each %v trial, ms", o.rtDuration), r.rtt["memory"], msec, 1e-3, "p50 ≤ 1 ms")
	add(fmt.Sprintf("memory backend: the same, p99 of each %v trial, ms", o.rtDuration), r.rtt99["memory"], msec, 1e-3, "")
	add("memory backend: back-to-back Lock+Unlock round trips per second, one client", r.rate["memory"], rate, 1, "")
	add(fmt.Sprintf("kubernetes backend: uncontended Lock+Unlock round trip, one every %v, p50 of each %v trial, ms", o.kubePace, o.rtDuration), r.rtt["kubernetes"], msec, 1e-3, "report against the floor below")
	add(fmt.Sprintf("kubernetes backend: the same, p99 of each %v trial, ms", o.rtDuration), r.rtt99["kubernetes"], msec, 1e-3, "")
	add("kubernetes backend: back-to-back Lock+Unlock round trips per second, one client", r.rate["kubernetes"], rate, 1, "")
	floor := []float64{}
	if r.floorN > 0 {
		floor = []float64{r.floor}
	}
	add(fmt.Sprintf("API server floor: one conditional Lease update, back to back, no client-side rate limit, p50 of %d, ms", r.floorN), floor, msec, 1e-3, "")
	if s := measure.Summarize(r.rtt["kubernetes"]); s.N > 0 && r.floor > 0 {
		t.Rows = append(t.Rows, []string{"kubernetes round trip / update floor", fmt.Sprintf("%.1f", s.Median/r.floor), "", ""})
	}
	if xs := r.rtSplit["kubernetes"]; len(xs) > 0 {
		s := splitRow(xs)
		t.Rows = append(t.Rows, []string{"kubernetes backend: " + strings.TrimSpace(s[0]), s[2] + "; " + s[3], "", ""})
	}
	pair := []float64{}
	if r.pairFloorN > 0 {
		pair = []float64{r.pairFloor}
	}
	add(fmt.Sprintf("API server floor, paced as the round trips: two conditional Lease updates back to back, one pair every %v, p50 of %d, ms", o.kubePace, r.pairFloorN), pair, msec, 1e-3, "")
	if s := measure.Summarize(r.rtt["kubernetes"]); s.N > 0 && r.pairFloor > 0 {
		t.Rows = append(t.Rows, []string{"kubernetes round trip / paced two-write floor", fmt.Sprintf("%.2f", s.Median/r.pairFloor), "", ""})
	}
	return t
}

// totals returns, per window of ws, its lease requests per minute over all
// verbs, less the median of the same over quiet (when not nil).
func totals(ws, quiet []window) []float64 {
	sum := func(w window) float64 {
		var s float64
		for _, v := range w.perMin {
			s += v
		}
		return s
	}
	var base float64
	if quiet != nil {
		var qs []float64
		for _, w := range quiet {
			qs = append(qs, sum(w))
		}
		base = measure.Summarize(qs).Median
	}
	var out []float64
	for _, w := range ws {
		out = append(out, sum(w)-base)
	}
	return out
}

// byVerb is totals for one verb.
func byVerb(ws, quiet []window, verb string) []float64 {
	var qs []float64
	for _, w := range quiet {
		qs = append(qs, w.perMin[verb])
	}
	base := measure.Summarize(qs).Median
	var out []float64
	for _, w := range ws {
		out = append(out, w.perMin[verb]-base)
	}
	return out
}

// watches returns the open lease watches at the end of each window of ws,
// less the quiet median.
func watches(ws, quiet []window) []float64 {
	var qs []float64
	for _, w := range quiet {
		qs = append(qs, w.watches)
	}
	base := measure.Summarize(qs).Median
	var out []float64
	for _, w := range ws {
		out = append(out, w.watches-base)
	}
	return out
}

// verbSummary describes the quiet windows' requests by verb.
func verbSummary(quiet []window) string {
	var parts []string
	for _, v := range verbs(quiet) {
		var xs []float64
		for _, w := range quiet {
			xs = append(xs, w.perMin[v])
		}
		parts = append(parts, fmt.Sprintf("%s %.1f", v, measure.Summarize(xs).Median))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// relPath returns path relative to the working directory when it is
// under it.
func relPath(path string) string {
	wd, err := os.Getwd()
	if err != nil {
		return path
	}
	if rel, err := filepath.Rel(wd, path); err == nil && !strings.HasPrefix(rel, "..") {
		return rel
	}
	return path
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// writeReport puts report between the markers of the Markdown file path,
// keeping the rest of it, creating it if need be.
func writeReport(path, report string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	doc := string(old)
	if doc == "" {
		doc = "# Benchmarks\n\nWritten by `make bench` (hack/bench.sh, bench/cmd/bench).\n"
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(measure.Splice(doc, report)), 0o644)
}

// contentionLabel names a contended run in the table.
func contentionLabel(c contentionRun) string {
	switch c.key {
	case "kube":
		return fmt.Sprintf("kubernetes: %d lockers of one lock through %d electors, client-side limit as shipped (%d/s, burst %d)",
			c.clients, c.electors, kube.DefaultQPS, kube.DefaultBurst)
	case "kube-raised":
		return fmt.Sprintf("kubernetes: the same, the electors' limit raised (`%s`)", strings.Join(c.extra, " "))
	case "crowd-memory":
		return fmt.Sprintf("memory: %d lockers (processes) of one lock through one elector", c.clients)
	case "crowd-kube":
		return fmt.Sprintf("kubernetes: %d lockers (processes) of one lock through one elector, limit as shipped", c.clients)
	}
	return c.key
}

// contentionTable is the table of the contended runs and the scale run;
// ok is false when neither ran.
func contentionTable(r *results, o options) (t measure.Table, ok bool) {
	t = measure.Table{Header: []string{"measurement", "median [min–max]", "trials"}}
	add := func(name string, xs []float64, f string, unit float64) {
		s := measure.Summarize(xs)
		t.Rows = append(t.Rows, []string{name, s.Format(f, unit), strconv.Itoa(s.N)})
	}
	floorRate := 0.0
	if r.floorN > 0 {
		floorRate = float64(r.floorN) / o.floorDuration.Seconds()
	}
	for _, c := range contentionRuns(o) {
		rs := r.contend[c.key]
		if len(rs) == 0 {
			continue
		}
		ok = true
		var rates, share, writes, conflicts, writeRate, least, most, cpu, rss []float64
		for _, x := range rs {
			rates = append(rates, x.rate)
			if floorRate > 0 {
				share = append(share, x.rate/floorRate)
			}
			writes, conflicts, writeRate = append(writes, x.writes), append(conflicts, x.conflicts), append(writeRate, x.writeRate)
			cs := measure.Summarize(x.counts)
			least, most = append(least, cs.Min/o.contendWindow.Seconds()), append(most, cs.Max/o.contendWindow.Seconds())
			var sum, top float64
			for i := range x.cpu {
				sum += x.cpu[i]
				top = max(top, x.rss[i])
			}
			cpu, rss = append(cpu, 100*sum), append(rss, top)
		}
		t.Rows = append(t.Rows, []string{"**" + contentionLabel(c) + "**", "", ""})
		add("  acquisitions/s, all lockers", rates, rate, 1)
		if c.backend == "kubernetes" {
			if floorRate > 0 {
				add(fmt.Sprintf("  share of the raw conditional-update rate (%.0f/s, one writer back to back)", floorRate), share, "%.2f", 1)
			}
			add("  lease writes (PUT, POST) per acquisition", writes, "%.2f", 1)
			add("    of which refused (409 Conflict)", conflicts, "%.2f", 1)
			add("  lease writes/s at the API server, all electors", writeRate, rate, 1)
		}
		add("  acquisitions/s of the least served locker", least, "%.2f", 1)
		add("  acquisitions/s of the most served locker", most, "%.2f", 1)
		add("  elector CPU, % of one core (all electors)", cpu, "%.0f", 1)
		add("  elector resident memory, MiB (the largest elector)", rss, rate, 1<<20)
	}
	for _, sc := range scaleRuns(o) {
		for _, x := range r.scale[sc.key] {
			ok = true
			limit := fmt.Sprintf("`%s`", strings.Join(sc.extra, " "))
			if len(sc.extra) == 0 {
				limit = fmt.Sprintf("limit as shipped, %d/s", kube.DefaultQPS)
			}
			t.Rows = append(t.Rows, []string{fmt.Sprintf("**kubernetes: one elector holding %d locks for %v (%s)**", o.scaleLocks, sc.window, limit), "", ""})
			add("  locks taken (Lock returned; the others failed)", []float64{float64(x.taken)}, "%.0f", 1)
			add("  time to take them (or fail), s", []float64{x.acquire}, secs, 1)
			add(fmt.Sprintf("  elector resident memory, MiB, sampled every %v", scaleSample), x.rss, rate, 1<<20)
			add("  elector CPU, % of one core", []float64{100 * x.cpu}, "%.0f", 1)
			total := 0.0
			for _, v := range x.perMin {
				total += v
			}
			add("  lease requests/min, net of the quiet baseline", []float64{total - measure.Summarize(totals(r.quiet, nil)).Median}, rate, 1)
			for _, v := range sortedKeys(x.perMin) {
				if x.perMin[v] != 0 {
					add("    of which "+v+" (not net)", []float64{x.perMin[v]}, rate, 1)
				}
			}
			add("  locks lost while held", []float64{float64(x.lost)}, "%.0f", 1)
			if sc.key == "sized" {
				footprintRows(add, x.fp, r.footprint["kubernetes-1"])
			}
		}
	}
	if mem, ok1 := r.footprint["memory-n"]; ok1 {
		ok = true
		t.Rows = append(t.Rows, []string{fmt.Sprintf("**memory: one elector holding %d locks, after a lease duration**", mem.locks), "", ""})
		add(fmt.Sprintf("  elector resident memory, MiB (%d samples %v apart)", footprintSamples, footprintEvery), mem.rss, rate, 1<<20)
		footprintRows(add, mem, r.footprint["memory-1"])
	}
	return t, ok
}

// footprintRows adds to a table, through add, what one more held lock costs
// the elector of fp over that of base (the same holding one lock), when
// both were measured.
func footprintRows(add func(string, []float64, string, float64), fp, base footprint) {
	if fp.locks == 0 || base.locks == 0 {
		return
	}
	one := func(f func(footprint) float64) []float64 { return []float64{perLock(fp, base, f)} }
	add(fmt.Sprintf("  per held lock over an elector holding one (%.1f MiB): resident memory, KiB", medianRSS(base)/(1<<20)), one(medianRSS), "%.1f", 1<<10)
	add("  per held lock: live heap after a GC (heap profile, inuse_space), KiB", one(func(f footprint) float64 { return f.heapLive }), "%.1f", 1<<10)
	add("  per held lock: heap spans in use after that GC, KiB", one(func(f footprint) float64 { return f.heapInuse }), "%.1f", 1<<10)
	add("  per held lock: goroutine stacks, KiB", one(func(f footprint) float64 { return f.stacks }), "%.1f", 1<<10)
	add("  per held lock: goroutines", one(func(f footprint) float64 { return f.goroutines }), "%.2f", 1)
}

// profileNotes lists the top entries of the heap and goroutine profiles of
// the electors that held the most locks, per held lock.
func profileNotes(r *results) string {
	var b strings.Builder
	show := func(what string, fp footprint) {
		if fp.locks == 0 {
			return
		}
		fmt.Fprintf(&b, "\n%s, holding %d locks: live heap %.1f MiB after a GC, %.0f goroutines. Heap in use by allocating function, KiB per held lock (inuse_space / %d):\n\n",
			what, fp.locks, fp.heapLive/(1<<20), fp.goroutines, fp.locks)
		for _, e := range fp.heapTop {
			fmt.Fprintf(&b, "- %.2f `%s`\n", e.value/float64(fp.locks)/(1<<10), e.name)
		}
		fmt.Fprintf(&b, "\nGoroutines per held lock, by the function each started with … where it waits:\n\n")
		for _, e := range fp.goTop {
			fmt.Fprintf(&b, "- %.2f `%s`\n", e.value/float64(fp.locks), e.name)
		}
	}
	if xs := r.scale["sized"]; len(xs) > 0 {
		show("The kubernetes elector of the scale run (limit sized), at the end of its window", xs[len(xs)-1].fp)
	}
	show("The memory elector", r.footprint["memory-n"])
	return b.String()
}

// contentionNotes is the text under the contention table: the safety
// check over every contended run.
func contentionNotes(r *results, o options) string {
	var n, bad, lost int
	for _, rs := range r.contend {
		for _, x := range rs {
			for _, c := range x.counts {
				n += int(c)
			}
			bad += len(x.violations)
			lost += x.lost
		}
	}
	return fmt.Sprintf("Every contended run is also checked for mutual exclusion on the lockers' own clock: over all of them, %d acquisitions, %d violations "+
		"(a term acquired before the previous one began to unlock, or a token not greater than the previous one's), %d terms lost before their Unlock. "+
		"Each run lasts %v; lockers hold the lock for no time at all (Lock, then at once Unlock).", n, bad, lost, o.contendWindow)
}
