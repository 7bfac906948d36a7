package main

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/pprof/profile"

	"github.com/mpsync/mpsync/bench/internal/measure"
)

// footprint is what an elector holding some locks costs, from its Go
// runtime (heap and goroutine profiles through --debug-pprof, and the Go
// collector's figures on /metrics), taken while it holds them.
type footprint struct {
	locks      int       // locks held when profiled
	rss        []float64 // resident memory, bytes, sampled while they were held
	heapLive   float64   // heap in use after a forced GC, bytes (the heap profile's inuse_space)
	heapInuse  float64   // go_memstats_heap_inuse_bytes just after that GC: live objects and their spans
	stacks     float64   // go_memstats_stack_inuse_bytes: goroutine stacks
	goroutines float64
	heapTop    []entry // inuse_space after the GC by allocating function (flat), largest first
	goTop      []entry // goroutines by what they run, most first
}

// entry is one line of a profile's top: a name and its bytes or count.
type entry struct {
	name  string
	value float64
}

// profileTop is how many entries of each profile the report keeps.
const profileTop = 12

// footprintSamples and footprintEvery: the resident memory of a footprint
// run is the median of this many samples this far apart.
const (
	footprintSamples = 5
	footprintEvery   = 2 * time.Second
)

// footprintRun has one locker take n locks through one elector on backend
// (started with the flags extra and --debug-pprof), lets them settle for a
// lease duration (past the first renewal of each), samples the elector's
// resident memory, profiles it and lets the locks go.
func (h *harness) footprintRun(ctx context.Context, what, backend string, n int, extra ...string) (footprint, error) {
	var fp footprint
	g, err := h.newGroup(what)
	if err != nil {
		return fp, err
	}
	defer g.stop(stopGrace + time.Duration(n)*10*time.Millisecond)
	el, addr, err := h.startElector(g, "elector", backend, "pod-footprint", slices.Concat(extra, []string{"--debug-pprof"})...)
	if err != nil {
		return fp, err
	}
	locker, err := g.start("locker", true, filepath.Join(h.bin, "mpsync-locker"),
		"-elector", addr, "-name", fmt.Sprintf("%s-%d", what, h.trial), "-identity", "footprint",
		"-mode", "hold", "-locks", strconv.Itoa(n))
	if err != nil {
		return fp, err
	}
	if _, err := g.wait(ctx, startTimeout+time.Duration(n)*50*time.Millisecond, "the locks to be taken", locker,
		event(measure.EventHolding, "footprint")); err != nil {
		return fp, err
	}
	if err := sleep(ctx, h.lease); err != nil {
		return fp, err
	}
	var rss []float64
	for i := range footprintSamples {
		if i > 0 {
			if err := sleep(ctx, footprintEvery); err != nil {
				return fp, err
			}
		}
		u, err := measure.ReadUsage(el.Pid())
		if err != nil {
			return fp, err
		}
		rss = append(rss, float64(u.RSS))
	}
	if fp, err = profileElector(ctx, addr, n); err != nil {
		return fp, err
	}
	fp.rss = rss
	locker.CloseStdin()
	rel, err := g.wait(ctx, startTimeout+time.Duration(n)*50*time.Millisecond, "the locks to be released", locker,
		event(measure.EventReleased, "footprint"))
	if err != nil {
		return fp, err
	}
	if rel.Fields["lost"] != "0" {
		return fp, fmt.Errorf("%s: %s locks lost while held", what, rel.Fields["lost"])
	}
	return fp, nil
}

// profileElector takes the heap profile (after a GC) and the goroutine
// profile of the elector at addr, which holds locks locks, and its Go
// collector's figures.
func profileElector(ctx context.Context, addr string, locks int) (footprint, error) {
	fp := footprint{locks: locks}
	heap, err := fetchProfile(ctx, addr, "heap?gc=1")
	if err != nil {
		return fp, err
	}
	space := sampleIndex(heap, "inuse_space")
	if space < 0 {
		return fp, fmt.Errorf("the elector's heap profile has no inuse_space")
	}
	fp.heapTop, fp.heapLive = top(heap, space, allocSite)
	gor, err := fetchProfile(ctx, addr, "goroutine")
	if err != nil {
		return fp, err
	}
	fp.goTop, _ = top(gor, 0, goroutineRole)
	body, err := getBody(ctx, "http://"+addr+"/metrics")
	if err != nil {
		return fp, err
	}
	samples, err := measure.ParseMetrics(bytes.NewReader(body), "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes", "go_goroutines")
	if err != nil {
		return fp, err
	}
	for _, s := range samples {
		switch s.Name {
		case "go_memstats_heap_inuse_bytes":
			fp.heapInuse = s.Value
		case "go_memstats_stack_inuse_bytes":
			fp.stacks = s.Value
		case "go_goroutines":
			fp.goroutines = s.Value
		}
	}
	return fp, nil
}

// fetchProfile gets /debug/pprof/PATH from the elector at addr and parses it.
func fetchProfile(ctx context.Context, addr, path string) (*profile.Profile, error) {
	body, err := getBody(ctx, "http://"+addr+"/debug/pprof/"+path)
	if err != nil {
		return nil, err
	}
	p, err := profile.ParseData(body)
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", path, err)
	}
	return p, nil
}

// getBody GETs url and returns its body, or an error for any status but 200.
func getBody(ctx context.Context, url string) ([]byte, error) {
	return getWith(ctx, http.DefaultClient, url, "")
}

// getWith GETs url with client, as bearer token if it is not empty, and
// returns the body, or an error for any status but 200 that quotes it.
func getWith(ctx context.Context, client *http.Client, url, token string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	return body, nil
}

// sampleIndex is the index of the sample type named typ in p, or -1.
func sampleIndex(p *profile.Profile, typ string) int {
	for i, st := range p.SampleType {
		if st.Type == typ {
			return i
		}
	}
	return -1
}

// top adds up value i of p's samples by the name that key gives each
// sample's stack (leaf first), and returns the profileTop largest, and the
// total.
func top(p *profile.Profile, i int, key func([]string) string) ([]entry, float64) {
	sums := map[string]float64{}
	var total float64
	for _, s := range p.Sample {
		v := float64(s.Value[i])
		sums[key(frames(s))] += v
		total += v
	}
	var es []entry
	for name, v := range sums {
		es = append(es, entry{name, v})
	}
	slices.SortFunc(es, func(a, b entry) int { return cmp.Or(cmp.Compare(b.value, a.value), strings.Compare(a.name, b.name)) })
	return es[:min(len(es), profileTop)], total
}

// frames are the function names of s's stack, leaf first, inlined calls
// included.
func frames(s *profile.Sample) []string {
	var fs []string
	for _, loc := range s.Location {
		for _, l := range loc.Line {
			if l.Function != nil {
				fs = append(fs, l.Function.Name)
			}
		}
	}
	return fs
}

// allocSite names a heap sample by the function that allocated it, as
// pprof -top does, but past the allocator's own frames, and with its
// caller for the generic allocators (make a buffer, grow a slice, copy a
// string), whose name alone says little.
func allocSite(fs []string) string {
	i := 0
	for i < len(fs) && isAllocator(fs[i]) {
		i++
	}
	switch {
	case i == len(fs):
		return strings.Join(fs, " ← ")
	case isGeneric(fs[i]) && i+1 < len(fs):
		return fs[i] + " ← " + fs[i+1]
	}
	return fs[i]
}

// isAllocator reports whether function f is the runtime's allocator itself.
func isAllocator(f string) bool {
	return strings.HasPrefix(f, "runtime.") && (strings.Contains(f, "alloc") || strings.Contains(f, "newobject") ||
		strings.Contains(f, "makeslice") || strings.Contains(f, "growslice") || strings.Contains(f, "makemap") ||
		strings.Contains(f, "makechan") || strings.Contains(f, "concatstring") || strings.Contains(f, "slicebytetostring") ||
		strings.Contains(f, "rawstring") || strings.Contains(f, "rawbyteslice") || strings.Contains(f, "mapassign") ||
		strings.Contains(f, "malg") || strings.Contains(f, "newproc"))
}

// isGeneric reports whether f allocates on behalf of its caller.
func isGeneric(f string) bool {
	for _, p := range []string{"bufio.New", "bytes.", "strings.", "io.ReadAll", "encoding/json.", "reflect.", "context.", "sync.", "time."} {
		if strings.HasPrefix(f, p) {
			return true
		}
	}
	return false
}

// goroutineRole names a goroutine by the function it was started with
// (the root of its stack) and the innermost function of its stack that
// is not plumbing: where it waits.
func goroutineRole(fs []string) string {
	if len(fs) == 0 {
		return "?"
	}
	root := fs[len(fs)-1]
	for _, f := range fs {
		if !isPlumbing(f) {
			if f == root {
				return root
			}
			return root + " … " + f
		}
	}
	return root
}

// isPlumbing reports whether f is part of how a goroutine waits (the
// runtime, the poller, locks, channels, timers) rather than what it does.
func isPlumbing(f string) bool {
	for _, p := range []string{"runtime.", "internal/", "net.", "sync.", "syscall.", "time.", "bufio.", "io.", "os.", "crypto/tls."} {
		if strings.HasPrefix(f, p) {
			return true
		}
	}
	return false
}

// perLock is what one more held lock costs: (with − base) / (its locks −
// base's), from the medians of the resident memory samples or from f.
func perLock(with, base footprint, f func(footprint) float64) float64 {
	d := with.locks - base.locks
	if d <= 0 {
		return 0
	}
	return (f(with) - f(base)) / float64(d)
}

// medianRSS is the median of fp's resident memory samples.
func medianRSS(fp footprint) float64 { return measure.Summarize(fp.rss).Median }
