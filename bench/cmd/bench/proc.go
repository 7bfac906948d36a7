package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/mpsync/mpsync/internal/electorproc"

	"github.com/mpsync/mpsync/bench/internal/measure"
)

// errTimeout is returned by group.wait when no line matched in time.
var errTimeout = errors.New("bench: timed out waiting")

// A tagged line is a benchmark line and the name of the process that wrote
// it.
type tagged struct {
	proc string
	measure.Line
}

// A proc is one process the harness started, through the project's one
// process runner.
type proc struct {
	*electorproc.Proc
	late bool // stopped after the others (an elector)
}

// A group is the processes of one trial. Their benchmark lines arrive,
// tagged, on one channel in the order they were read; stop ends them all.
type group struct {
	dir   string // their logs
	lines chan tagged
	mu    sync.Mutex
	procs []*proc
	wg    sync.WaitGroup // the readers of the processes' output
}

func newGroup(dir string) (*group, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &group{dir: dir, lines: make(chan tagged, 4096)}, nil
}

// start runs argv as the process name, its output logged to dir/name.log;
// its benchmark lines (on stdout) go to g.lines.
func (g *group) start(name string, withStdin bool, argv ...string) (*proc, error) {
	return g.run(name, withStdin, measure.ParseLine, argv)
}

// startExample is start for one of the shipped example programs, which
// print sentences, not benchmark lines: exampleLine reads them.
func (g *group) startExample(name string, argv ...string) (*proc, error) {
	return g.run(name, false, exampleLine, argv)
}

// run runs argv as the process name, its output logged to dir/name.log;
// the lines of its stdout that parse reads go to g.lines.
func (g *group) run(name string, withStdin bool, parse func(string) (measure.Line, error), argv []string) (*proc, error) {
	g.wg.Add(1) // the reader of its stdout, until it exits
	pr, err := electorproc.Run(electorproc.Spec{
		Name:  name,
		Argv:  argv,
		Log:   filepath.Join(g.dir, name+".log"),
		Stdin: withStdin,
		Stdout: func(text string) {
			if l, err := parse(text); err == nil {
				g.lines <- tagged{proc: name, Line: l}
			}
		},
	})
	if err != nil {
		g.wg.Done()
		return nil, fmt.Errorf("bench: start %s: %w", name, err)
	}
	go func() { defer g.wg.Done(); <-pr.Exited() }()
	p := &proc{Proc: pr}
	g.mu.Lock()
	g.procs = append(g.procs, p)
	g.mu.Unlock()
	return p, nil
}

// exampleLine reads a line of the example programs (examples/election,
// examples/inprocess), "15:04:05.000 ID: what happened", as the benchmark
// line it stands for, stamped when the harness reads it: "I am the
// leader" is EventLeading, "following X" EventFollowing with leader X,
// "stopped" EventExiting. Other lines are measure.ErrNotLine.
func exampleLine(text string) (measure.Line, error) {
	now := measure.Now()
	_, rest, _ := strings.Cut(text, " ")
	id, what, ok := strings.Cut(rest, ": ")
	if !ok {
		return measure.Line{}, measure.ErrNotLine
	}
	l := measure.Line{Mono: now, ID: id}
	switch {
	case strings.HasPrefix(what, "I am the leader"):
		l.Event = measure.EventLeading
	case strings.HasPrefix(what, "following "):
		leader, _, _ := strings.Cut(strings.TrimPrefix(what, "following "), " ")
		l.Event, l.Fields = measure.EventFollowing, map[string]string{"leader": leader}
	case what == "stopped":
		l.Event = measure.EventExiting
	default:
		return measure.Line{}, measure.ErrNotLine
	}
	return l, nil
}

// wait returns the first line, from now on, for which match is true.
// Lines that do not match are dropped. It gives up after timeout, if ctx
// ends, or if the process dead (when not nil) exits first.
func (g *group) wait(ctx context.Context, timeout time.Duration, what string, dead *proc, match func(tagged) bool) (tagged, error) {
	ls, err := g.waitAll(ctx, timeout, what, dead, match)
	if err != nil {
		return tagged{}, err
	}
	return ls[0], nil
}

// waitAll is wait for several matchers at once: it returns, for each, the
// first line from now on that it matches, in whatever order they arrive.
func (g *group) waitAll(ctx context.Context, timeout time.Duration, what string, dead *proc, matches ...func(tagged) bool) ([]tagged, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var deadC <-chan struct{}
	if dead != nil {
		deadC = dead.Exited()
	}
	got := make([]tagged, len(matches))
	seen := make([]bool, len(matches))
	left := len(matches)
	take := func(l tagged) {
		for i, m := range matches {
			if !seen[i] && m(l) {
				got[i], seen[i] = l, true
				left--
				return
			}
		}
	}
	for left > 0 {
		select {
		case l := <-g.lines:
			take(l)
		case <-deadC:
			// Take what it printed before exiting, then give up.
			for drained := false; !drained && left > 0; {
				select {
				case l := <-g.lines:
					take(l)
				default:
					drained = true
				}
			}
			if left > 0 {
				return nil, fmt.Errorf("bench: %s exited (%v) while waiting for %s; its log ends:\n%s", dead.Name(), dead.Err(), what, dead.Tail(10))
			}
		case <-timer.C:
			return nil, fmt.Errorf("%w %v for %s", errTimeout, timeout, what)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return got, nil
}

// event matches a line of event from id.
func event(ev, id string) func(tagged) bool {
	return func(l tagged) bool { return l.Event == ev && l.ID == id }
}

// stop sends SIGTERM to every process still running (SIGCONT first), waits
// up to grace for them, then kills the rest, and waits for their output.
func (g *group) stop(grace time.Duration) {
	g.mu.Lock()
	procs := append([]*proc(nil), g.procs...)
	g.mu.Unlock()
	// Clients first, so that they release through their electors.
	var first, late []*electorproc.Proc
	for _, p := range procs {
		if p.late {
			late = append(late, p.Proc)
		} else {
			first = append(first, p.Proc)
		}
	}
	electorproc.StopAll(grace, first...)
	electorproc.StopAll(grace, late...)
	for _, p := range procs {
		p.CloseStdin()
	}
	done := make(chan struct{})
	go func() {
		for range g.lines { // keep the readers from blocking
		}
	}()
	go func() { g.wg.Wait(); close(done) }()
	<-done
	close(g.lines)
}

// collect waits for a line of event from each of ids and returns them by
// id. It gives up after timeout, if ctx ends, or if a process of the group
// exits without having written its line.
func (g *group) collect(ctx context.Context, timeout time.Duration, ev string, ids []string) (map[string]tagged, error) {
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	got := make(map[string]tagged, len(ids))
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for len(got) < len(want) {
		select {
		case l := <-g.lines:
			if l.Event == ev && want[l.ID] {
				got[l.ID] = l
			}
			if l.Event == measure.EventExiting && want[l.ID] && got[l.ID].Event == "" {
				return nil, fmt.Errorf("bench: %s exited (%s) before %s", l.proc, l.Fields["err"], ev)
			}
		case <-timer.C:
			return nil, fmt.Errorf("%w %v for %s from %d of %d processes", errTimeout, timeout, ev, len(want)-len(got), len(want))
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return got, nil
}
