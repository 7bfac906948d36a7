package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/mpsync/mpsync/bench/internal/measure"
)

// scaleResult is one elector holding many locks for a while.
type scaleResult struct {
	acquire float64   // seconds to take them all
	rss     []float64 // the elector's resident memory, bytes, sampled through the window
	cpu     float64   // its CPU time over the window / the window
	perMin  map[string]float64
	taken   int       // locks taken of those asked for
	lost    int       // locks lost while held, including before the window
	fp      footprint // the elector's profiles at the end of the window
}

// scaleSample is how often scale samples the elector's memory.
const scaleSample = 10 * time.Second

// scale has one locker take n locks through one elector on the kubernetes
// backend (started with the flags extra and --debug-pprof), holds them for
// window, and measures the elector and the API requests meanwhile, and
// profiles it at the end.
func (h *harness) scale(ctx context.Context, what string, n int, window time.Duration, extra ...string) (scaleResult, error) {
	var res scaleResult
	g, err := h.newGroup(what)
	if err != nil {
		return res, err
	}
	defer g.stop(stopGrace + time.Duration(n)*10*time.Millisecond)
	el, addr, err := h.startElector(g, "elector", "kubernetes", "pod-scale", slices.Concat(extra, []string{"--debug-pprof"})...)
	if err != nil {
		return res, err
	}
	locker, err := g.start("locker", true, filepath.Join(h.bin, "mpsync-locker"),
		"-elector", addr, "-name", fmt.Sprintf("%s-%d", what, h.trial), "-identity", "scale",
		"-mode", "hold", "-locks", strconv.Itoa(n), "-keep-going")
	if err != nil {
		return res, err
	}
	l, err := g.wait(ctx, startTimeout+time.Duration(n)*50*time.Millisecond, "the locks to be taken", locker,
		event(measure.EventHolding, "scale"))
	if err != nil {
		return res, err
	}
	elapsed, err := strconv.ParseFloat(l.Fields["elapsed_ns"], 64)
	if err != nil {
		return res, fmt.Errorf("bad holding line %v", l.Line)
	}
	res.acquire = elapsed / 1e9
	res.taken, err = strconv.Atoi(l.Fields["n"])
	if err != nil {
		return res, fmt.Errorf("bad holding line %v", l.Line)
	}
	// Past the acquisitions, into the steady state.
	if err := sleep(ctx, h.lease); err != nil {
		return res, err
	}
	before, err := h.c.scrape(ctx)
	if err != nil {
		return res, err
	}
	u0, err := measure.ReadUsage(el.Pid())
	if err != nil {
		return res, err
	}
	deadline := time.Now().Add(window)
	for time.Now().Before(deadline) {
		if err := sleep(ctx, min(scaleSample, time.Until(deadline))); err != nil {
			return res, err
		}
		if locker.HasExited() || el.HasExited() {
			return res, fmt.Errorf("a process exited while holding; the locker's log ends:\n%s\nthe elector's:\n%s", locker.Tail(5), el.Tail(5))
		}
		u, err := measure.ReadUsage(el.Pid())
		if err != nil {
			return res, err
		}
		res.rss = append(res.rss, float64(u.RSS))
	}
	u1, err := measure.ReadUsage(el.Pid())
	if err != nil {
		return res, err
	}
	after, err := h.c.scrape(ctx)
	if err != nil {
		return res, err
	}
	if res.fp, err = profileElector(ctx, addr, res.taken); err != nil {
		return res, err
	}
	res.fp.rss = res.rss
	res.cpu = (u1.CPU - u0.CPU).Seconds() / (float64(after.mono-before.mono) / 1e9)
	mins := float64(after.mono-before.mono) / 1e9 / 60
	res.perMin = measure.Delta(after.requests, before.requests)
	for k := range res.perMin {
		res.perMin[k] /= mins
	}
	// Let the locker release them all, and check it lost none.
	locker.CloseStdin()
	rel, err := g.wait(ctx, startTimeout+time.Duration(n)*50*time.Millisecond, "the locks to be released", locker,
		event(measure.EventReleased, "scale"))
	if err != nil {
		return res, err
	}
	if res.lost, err = strconv.Atoi(rel.Fields["lost"]); err != nil {
		return res, fmt.Errorf("bad released line %v", rel.Line)
	}
	return res, nil
}
