package history

import (
	"encoding/json"
	"io"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Mono converts times of this process to the machine's CLOCK_MONOTONIC
// nanoseconds, the clock that every process of a history shares.
type Mono struct {
	ref   time.Time
	refNS int64
}

// NewMono reads both clocks once, side by side.
func NewMono() Mono {
	var ts unix.Timespec
	ref := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic("history: CLOCK_MONOTONIC: " + err.Error()) // Linux always has it
	}
	return Mono{ref: ref, refNS: ts.Nano()}
}

// At returns t (a time from this process, with its monotonic reading) on
// the machine's clock.
func (m Mono) At(t time.Time) int64 { return m.refNS + t.Sub(m.ref).Nanoseconds() }

// Now returns the machine's clock now.
func (m Mono) Now() int64 { return m.At(time.Now()) }

// Writer appends records to w, one write call per line, so that a process
// killed at any moment leaves only whole lines. It is safe for concurrent
// use.
type Writer struct {
	mu sync.Mutex
	w  io.Writer
}

// NewWriter returns a Writer to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write appends r.
func (w *Writer) Write(r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	_, err = w.w.Write(append(b, '\n'))
	return err
}
