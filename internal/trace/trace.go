// Package trace marks the steps of a lock's way from one holder to the
// next (a release request arriving, a Lease write sent and answered, a
// watch event, a grant leaving the elector, a grant reaching the SDK) for
// the benchmarks' per-step breakdown of a handover (docs/BENCHMARKS.md).
//
// It is off unless a benchmark program or the elector (its --trace flag)
// calls Enable; while off, Mark costs one atomic load. When on, each Mark
// writes one line to the writer given to Enable:
//
//	benchline mono_ns=N event=step id=ID step=STEP k=v ...
//
// the format of the benchmark lines that bench/internal/measure parses,
// stamped by the clock given to Enable (CLOCK_MONOTONIC in nanoseconds in
// every program that enables it, so that stamps of different processes on
// one machine compare directly).
package trace

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
)

// Event is the event field of every line Mark writes.
const Event = "step"

// The steps marked, in the order a graceful handover passes them.
const (
	// TermEnded: the SDK's keeper saw the term's leadership context end.
	TermEnded = "term-ended"
	// ReleaseSent: the SDK is about to send the release to its transport.
	ReleaseSent = "release-sent"
	// ReleaseConn: the SDK's release request has its connection to the
	// elector (field reused=true when it came from the pool).
	ReleaseConn = "release-conn"
	// ReleaseReceived: the elector has read a release request.
	ReleaseReceived = "release-received"
	// ReleaseWriteSent: the Kubernetes backend is sending the Update that
	// clears the holder.
	ReleaseWriteSent = "release-write-sent"
	// ReleaseWriteDone: the API server has answered that Update.
	ReleaseWriteDone = "release-write-done"
	// ReleaseDone: the SDK's transport returned from the release.
	ReleaseDone = "release-done"
	// WatchEvent: the Kubernetes backend's informer delivered a Lease
	// event (fields: free, "true" when it names no holder; holder, the
	// client identity it names; rv).
	WatchEvent = "watch-event"
	// Adopted: the Kubernetes backend has granted a Lease that a
	// releaser's write handed to one of its offers, with no write of its
	// own.
	Adopted = "adopted"
	// TakeWriteSent: the Kubernetes backend is sending the write that
	// takes a Lease.
	TakeWriteSent = "take-write-sent"
	// TakeWriteDone: the API server has answered that write.
	TakeWriteDone = "take-write-done"
	// GrantSent: the elector has written and flushed the acquired line of
	// a grant to its client's stream.
	GrantSent = "grant-sent"
	// Acquired: the SDK's transport has returned a grant.
	Acquired = "acquired"
	// EventSent: an Election handed a Leader event to its reader.
	EventSent = "event-sent"
)

type tracer struct {
	mu  sync.Mutex
	w   io.Writer
	id  string
	now func() int64
}

var on atomic.Pointer[tracer]

// Enable makes Mark write its lines to w, naming id and stamped by now, a
// clock in nanoseconds. Call it before the first Mark that matters; it is
// safe to call at any time, and a nil w turns marking off again.
func Enable(w io.Writer, id string, now func() int64) {
	if w == nil {
		on.Store(nil)
		return
	}
	on.Store(&tracer{w: w, id: clean(id), now: now})
}

// Enabled reports whether Mark writes anything: callers may skip work
// that only a mark needs.
func Enabled() bool { return on.Load() != nil }

// Mark writes a line for step, with kv as further key, value pairs (an
// odd one out is ignored), if Enable has turned marking on.
func Mark(step string, kv ...string) {
	t := on.Load()
	if t == nil {
		return
	}
	stamp := t.now()
	var b strings.Builder
	fmt.Fprintf(&b, "benchline mono_ns=%d event=%s id=%s step=%s", stamp, Event, t.id, clean(step))
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(&b, " %s=%s", clean(kv[i]), clean(kv[i+1]))
	}
	b.WriteByte('\n')
	t.mu.Lock()
	defer t.mu.Unlock()
	_, _ = io.WriteString(t.w, b.String())
}

// clean keeps a value on one field of one line.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '=' {
			return '_'
		}
		if r == 0 {
			return -1
		}
		return r
	}, s)
}
