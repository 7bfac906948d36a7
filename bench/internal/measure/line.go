package measure

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Prefix starts every line a benchmark program prints for the harness.
// Other output (logs) may share the stream; ParseLine skips it.
const Prefix = "benchline"

// Events that benchmark programs report.
const (
	// EventStarted: the program is up and about to campaign or lock.
	EventStarted = "started"
	// EventLeading: this candidate has just become leader.
	EventLeading = "leading"
	// EventFollowing: this candidate follows the leader in field "leader"
	// (empty when nobody leads).
	EventFollowing = "following"
	// EventStopped: this candidate's term as leader has ended.
	EventStopped = "stopped-leading"
	// EventWaiting: a locker is about to call Lock.
	EventWaiting = "waiting"
	// EventAcquired: a locker's Lock has returned the lock.
	EventAcquired = "acquired"
	// EventUnlocking: a locker is about to call Unlock.
	EventUnlocking = "unlocking"
	// EventUnlocked: a locker's Unlock has returned.
	EventUnlocked = "unlocked"
	// EventRoundTrips: a locker's summary of Lock+Unlock round trips, with
	// fields n, elapsed_ns, p50_ns, p99_ns and max_ns.
	EventRoundTrips = "roundtrips"
	// EventContended: a locker's summary of a contended run, with fields
	// n (its acquisitions) and lost (terms that ended before it unlocked).
	EventContended = "contended"
	// EventHolding: a locker holds its locks, field n of them, taken in
	// elapsed_ns; field failed counts the Lock calls that failed.
	EventHolding = "holding"
	// EventFailed: a locker's Lock of field name failed with field err.
	EventFailed = "failed"
	// EventLost: a locker's lock, field name, was lost while it held it.
	EventLost = "lost"
	// EventReleased: a locker has unlocked its n locks; field lost counts
	// those it had lost meanwhile.
	EventReleased = "released"
	// EventExiting: the program is about to exit; field "err" says why if
	// it failed.
	EventExiting = "exiting"
)

// ErrNotLine is returned by ParseLine for output that is not a benchmark
// line (does not start with Prefix).
var ErrNotLine = errors.New("measure: not a benchmark line")

// A Line is one event a benchmark program reported.
type Line struct {
	// Mono is CLOCK_MONOTONIC, in nanoseconds, when the event happened.
	Mono int64
	// Event is one of the Event constants.
	Event string
	// ID is the identity of the candidate or locker.
	ID string
	// Fields holds the other key=value pairs; nil if there are none.
	Fields map[string]string
}

// Now returns CLOCK_MONOTONIC in nanoseconds: the clock every benchmark
// program stamps its lines with and the harness times its signals with, so
// that times from different processes on one machine compare directly.
func Now() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(fmt.Sprintf("measure: clock_gettime(CLOCK_MONOTONIC): %v", err))
	}
	return ts.Nano()
}

// String formats l as one line (without the newline) that ParseLine reads
// back: "benchline mono_ns=N event=E id=I k=v ...", other fields sorted by
// key. Values must not contain spaces; String replaces them with '_'.
func (l Line) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s mono_ns=%d event=%s id=%s", Prefix, l.Mono, clean(l.Event), clean(l.ID))
	keys := make([]string, 0, len(l.Fields))
	for k := range l.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%s", clean(k), clean(l.Fields[k]))
	}
	return b.String()
}

func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '=' {
			return '_'
		}
		return r
	}, s)
}

// Emit writes a line for event by id, stamped with Now(), to w. kv are
// further key, value pairs; an odd one out is ignored.
func Emit(w io.Writer, event, id string, kv ...string) error {
	l := Line{Mono: Now(), Event: event, ID: id}
	for i := 0; i+1 < len(kv); i += 2 {
		if l.Fields == nil {
			l.Fields = make(map[string]string)
		}
		l.Fields[kv[i]] = kv[i+1]
	}
	_, err := fmt.Fprintln(w, l.String())
	return err
}

// ParseLine parses one line of a benchmark program's output. It returns
// ErrNotLine for a line that does not start with Prefix, and another error
// for a benchmark line that is malformed.
func ParseLine(s string) (Line, error) {
	s = strings.TrimRight(s, "\r\n")
	f := strings.Fields(s)
	if len(f) == 0 || f[0] != Prefix {
		return Line{}, ErrNotLine
	}
	var l Line
	var haveMono, haveEvent bool
	for _, kv := range f[1:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return Line{}, fmt.Errorf("measure: parse %q: field %q is not key=value", s, kv)
		}
		switch k {
		case "mono_ns":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return Line{}, fmt.Errorf("measure: parse %q: bad mono_ns %q", s, v)
			}
			l.Mono, haveMono = n, true
		case "event":
			l.Event, haveEvent = v, v != ""
		case "id":
			l.ID = v
		default:
			if l.Fields == nil {
				l.Fields = make(map[string]string)
			}
			l.Fields[k] = v
		}
	}
	if !haveMono || !haveEvent {
		return Line{}, fmt.Errorf("measure: parse %q: mono_ns and event are required", s)
	}
	return l, nil
}
