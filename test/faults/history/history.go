// Package history records what every holder of a lock did, on one machine
// and one clock, and checks the record against docs/DESIGN.md's guarantees: no
// two holders' leadership intervals of the same lock overlap, fencing
// tokens strictly increase in acquisition order, a holder appears soon
// after every fault heals, and no lock stays held by a dead client.
//
// A history is JSON lines. Clients write acquire and end records; the
// fault harness writes kill, fault and heal records. Times are nanoseconds
// of CLOCK_MONOTONIC, which every process on the machine shares (and which
// Go's monotonic clock reads on Linux).
package history

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"
)

// Kinds of record.
const (
	Acquire = "acquire" // a client's leadership context began: Lock, Client, Token, T
	End     = "end"     // it ended: Lock, Client, Token, T (at most its local deadline)
	Kill    = "kill"    // the harness SIGKILLed Client at T
	Fault   = "fault"   // the harness injected fault Kind at T
	Heal    = "heal"    // the harness healed fault Kind at T
)

// Record is one line of a history.
type Record struct {
	Ev     string `json:"ev"`
	T      int64  `json:"t"`
	Lock   string `json:"lock,omitempty"`
	Client string `json:"client,omitempty"`
	Token  uint64 `json:"token,omitempty"`
	Kind   string `json:"kind,omitempty"`
	Cause  string `json:"cause,omitempty"`
}

// MaxLine is the longest record line Parse accepts.
const MaxLine = 4096

// Parse reads a history. It rejects, with the line number, a line that is
// not a record of a known kind with the fields that kind needs.
func Parse(r io.Reader) ([]Record, error) {
	var out []Record
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, MaxLine), MaxLine)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var rec Record
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rec); err != nil {
			return nil, fmt.Errorf("history: line %d: %w", n, err)
		}
		if dec.More() {
			return nil, fmt.Errorf("history: line %d: more than one record", n)
		}
		if err := rec.validate(); err != nil {
			return nil, fmt.Errorf("history: line %d: %w", n, err)
		}
		out = append(out, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	return out, nil
}

func (r Record) validate() error {
	if r.T <= 0 {
		return errors.New("time missing or not positive")
	}
	switch r.Ev {
	case Acquire, End:
		if r.Lock == "" || r.Client == "" || r.Token == 0 {
			return fmt.Errorf("%s record needs lock, client and token", r.Ev)
		}
	case Kill:
		if r.Client == "" {
			return errors.New("kill record needs client")
		}
	case Fault, Heal:
		if r.Kind == "" {
			return fmt.Errorf("%s record needs kind", r.Ev)
		}
	default:
		return fmt.Errorf("unknown record kind %q", r.Ev)
	}
	return nil
}

// Interval is one holding of a lock.
type Interval struct {
	Lock, Client string
	Token        uint64
	Begin, End   int64  // End is the end record's time, the client's kill time, or the history's end
	Open         bool   // no end record: the client was killed, or the history stopped first
	Cause        string // the end record's Cause
}

// String names the interval, its times and, when it had an end record,
// why it ended.
func (iv Interval) String() string {
	why := iv.Cause
	if iv.Open {
		why = "no end record"
	}
	return fmt.Sprintf("%s token %d [%d, %d] (%s)", iv.Client, iv.Token, iv.Begin, iv.End, why)
}

// Report is what Check found.
type Report struct {
	Acquisitions int            // intervals checked
	Faults       map[string]int // faults injected, by kind
	Violations   []string       // empty when every guarantee held
	// LongestGap is the longest time, after a fault healed, until the next
	// acquisition of a lock that clients were waiting for.
	LongestGap time.Duration
}

// Options tune Check.
type Options struct {
	// Bound is how long after a heal (or a holder's death) a new holder
	// must appear: the lease duration plus a small allowance.
	Bound time.Duration
}

// Check verifies recs. Records may come in any order (one file per
// process, concatenated).
func Check(recs []Record, opt Options) Report {
	c := &checker{rep: Report{Faults: map[string]int{}}, kills: map[string][]int64{}}
	ivs := c.intervals(recs)
	c.rep.Acquisitions = len(ivs)
	byLock := map[string][]*Interval{}
	for _, iv := range ivs {
		byLock[iv.Lock] = append(byLock[iv.Lock], iv)
	}
	for _, l := range slices.Sorted(maps.Keys(byLock)) {
		list := byLock[l]
		sort.SliceStable(list, func(i, j int) bool { return list[i].Begin < list[j].Begin })
		c.safety(l, list)
		if opt.Bound > 0 {
			c.liveness(l, list, opt.Bound)
		}
	}
	return c.rep
}

// checker is one run of Check: the report so far and what the records
// said besides intervals.
type checker struct {
	rep   Report
	last  int64              // the time of the last record
	kills map[string][]int64 // each client's kills, in time order
	heals []int64
}

// intervals reads recs in time order into the holding intervals they
// describe, counting faults and noting kills and heals. A killed client's
// open intervals end at its kill; others stay open to the end of the
// history.
func (c *checker) intervals(recs []Record) []*Interval {
	type key struct {
		lock, client string
		token        uint64
	}
	open := map[key]*Interval{}
	var ivs []*Interval
	recs = slices.Clone(recs)
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].T < recs[j].T })
	for _, r := range recs {
		c.last = max(c.last, r.T)
		k := key{r.Lock, r.Client, r.Token}
		switch r.Ev {
		case Acquire:
			if _, dup := open[k]; dup {
				c.violation("%s: %s acquired token %d twice", r.Lock, r.Client, r.Token)
				continue
			}
			iv := &Interval{Lock: r.Lock, Client: r.Client, Token: r.Token, Begin: r.T, Open: true}
			open[k] = iv
			ivs = append(ivs, iv)
		case End:
			iv := open[k]
			if iv == nil {
				c.violation("%s: %s ended token %d it never acquired", r.Lock, r.Client, r.Token)
				continue
			}
			iv.End, iv.Open, iv.Cause = max(r.T, iv.Begin), false, r.Cause
			delete(open, k)
		case Kill:
			c.kills[r.Client] = append(c.kills[r.Client], r.T)
		case Fault:
			c.rep.Faults[r.Kind]++
		case Heal:
			c.heals = append(c.heals, r.T)
		}
	}
	for _, iv := range open {
		iv.End = c.last
		for _, t := range c.kills[iv.Client] {
			if t >= iv.Begin {
				iv.End = t
				break
			}
		}
	}
	return ivs
}

// safety checks the intervals of lock l, sorted by beginning: none begins
// before another has ended, and tokens increase.
func (c *checker) safety(l string, list []*Interval) {
	var prev *Interval // the interval that ends last so far
	for i, iv := range list {
		if prev != nil && iv.Begin < prev.End {
			c.violation("%s: %v overlaps %v by %v", l, iv, prev, time.Duration(prev.End-iv.Begin))
		}
		if i > 0 && iv.Token <= list[i-1].Token {
			c.violation("%s: token %d of %s acquired after token %d of %s", l, iv.Token, iv.Client, list[i-1].Token, list[i-1].Client)
		}
		if prev == nil || iv.End > prev.End {
			prev = iv
		}
	}
}

// liveness checks that after each heal, and after each holder's death,
// some holder holds lock l within bound, unless the history ends first.
func (c *checker) liveness(l string, list []*Interval, bound time.Duration) {
	for _, h := range c.heals {
		if h >= list[0].Begin {
			c.heldWithin(l, list, h, bound, fmt.Sprintf("a heal at %d", h))
		}
	}
	for _, iv := range list {
		if iv.Open && iv.End < c.last {
			c.heldWithin(l, list, iv.End, bound, fmt.Sprintf("%s died holding it at %d", iv.Client, iv.End))
		}
	}
}

// heldWithin checks that an interval of list holds at t or begins within
// bound after it (what names t), and keeps the longest gap seen.
func (c *checker) heldWithin(l string, list []*Interval, t int64, bound time.Duration, what string) {
	for _, iv := range list {
		if iv.End <= t {
			continue
		}
		gap := time.Duration(max(iv.Begin-t, 0))
		c.rep.LongestGap = max(c.rep.LongestGap, gap)
		if gap > bound {
			c.violation("%s: no holder for %v after %s (bound %v)", l, gap, what, bound)
		}
		return
	}
	if time.Duration(c.last-t) > bound {
		c.violation("%s: no holder in the %v after %s", l, time.Duration(c.last-t), what)
	}
}

func (c *checker) violation(format string, args ...any) {
	c.rep.Violations = append(c.rep.Violations, fmt.Sprintf(format, args...))
}
