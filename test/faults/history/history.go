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
	Begin, End   int64 // End is the end record's time, the client's kill time, or the history's end
	Open         bool  // no end record: the client was killed, or the history stopped first
}

func (iv Interval) String() string {
	return fmt.Sprintf("%s token %d [%d, %d]", iv.Client, iv.Token, iv.Begin, iv.End)
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
	rep := Report{Faults: map[string]int{}}
	var last int64
	kills := map[string][]int64{}
	var heals []int64
	type key struct {
		lock, client string
		token        uint64
	}
	open := map[key]*Interval{}
	var ivs []*Interval
	recs = slices.Clone(recs)
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].T < recs[j].T })
	for _, r := range recs {
		last = max(last, r.T)
		switch r.Ev {
		case Acquire:
			k := key{r.Lock, r.Client, r.Token}
			if _, dup := open[k]; dup {
				rep.Violations = append(rep.Violations, fmt.Sprintf("%s: %s acquired token %d twice", r.Lock, r.Client, r.Token))
				continue
			}
			iv := &Interval{Lock: r.Lock, Client: r.Client, Token: r.Token, Begin: r.T, Open: true}
			open[k] = iv
			ivs = append(ivs, iv)
		case End:
			k := key{r.Lock, r.Client, r.Token}
			iv := open[k]
			if iv == nil {
				rep.Violations = append(rep.Violations, fmt.Sprintf("%s: %s ended token %d it never acquired", r.Lock, r.Client, r.Token))
				continue
			}
			iv.End, iv.Open = max(r.T, iv.Begin), false
			delete(open, k)
		case Kill:
			kills[r.Client] = append(kills[r.Client], r.T)
		case Fault:
			rep.Faults[r.Kind]++
		case Heal:
			heals = append(heals, r.T)
		}
	}
	// A killed client's open intervals end at its kill; others stay open
	// to the end of the history.
	for _, iv := range open {
		iv.End = last
		for _, t := range kills[iv.Client] {
			if t >= iv.Begin {
				iv.End = t
				break
			}
		}
	}
	rep.Acquisitions = len(ivs)

	byLock := map[string][]*Interval{}
	for _, iv := range ivs {
		byLock[iv.Lock] = append(byLock[iv.Lock], iv)
	}
	locks := make([]string, 0, len(byLock))
	for l := range byLock {
		locks = append(locks, l)
	}
	sort.Strings(locks)
	bound := opt.Bound.Nanoseconds()
	for _, l := range locks {
		list := byLock[l]
		sort.SliceStable(list, func(i, j int) bool { return list[i].Begin < list[j].Begin })
		var prev *Interval // the interval that ends last so far
		for i, iv := range list {
			if prev != nil && iv.Begin < prev.End {
				rep.Violations = append(rep.Violations, fmt.Sprintf("%s: %v overlaps %v by %v", l, iv, prev, time.Duration(prev.End-iv.Begin)))
			}
			if i > 0 && iv.Token <= list[i-1].Token {
				rep.Violations = append(rep.Violations, fmt.Sprintf("%s: token %d of %s acquired after token %d of %s", l, iv.Token, iv.Client, list[i-1].Token, list[i-1].Client))
			}
			if prev == nil || iv.End > prev.End {
				prev = iv
			}
		}
		// Liveness: after each heal, and after each holder's death, some
		// holder holds this lock within the bound, unless the history
		// ends first.
		check := func(t int64, what string) {
			for _, iv := range list {
				if iv.End <= t {
					continue
				}
				gap := time.Duration(max(iv.Begin-t, 0))
				rep.LongestGap = max(rep.LongestGap, gap)
				if gap.Nanoseconds() > bound {
					rep.Violations = append(rep.Violations, fmt.Sprintf("%s: no holder for %v after %s (bound %v)", l, gap, what, opt.Bound))
				}
				return
			}
			if last-t > bound {
				rep.Violations = append(rep.Violations, fmt.Sprintf("%s: no holder in the %v after %s", l, time.Duration(last-t), what))
			}
		}
		if bound > 0 {
			for _, h := range heals {
				if h >= list[0].Begin {
					check(h, fmt.Sprintf("a heal at %d", h))
				}
			}
			for _, iv := range list {
				if iv.Open && iv.End < last {
					check(iv.End, fmt.Sprintf("%s died holding it at %d", iv.Client, iv.End))
				}
			}
		}
	}
	return rep
}
