package history

import (
	"slices"
	"sort"
	"time"
)

// HolderDeath is the key of Gaps for the deaths of holders (kill records
// that ended an open interval), which have no heal record.
const HolderDeath = "holder-death"

// Gaps breaks Report.LongestGap down by kind of fault: for each kind, the
// longest time, after one of its heals, until some holder held a lock that
// had been held before; and under HolderDeath, the longest time after a
// killed client's death while holding until the next holder. It measures
// as Check does, and checks nothing.
func Gaps(recs []Record) map[string]time.Duration {
	type key struct {
		lock, client string
		token        uint64
	}
	recs = slices.Clone(recs)
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].T < recs[j].T })
	var last int64
	open := map[key]*Interval{}
	byLock := map[string][]*Interval{}
	kills := map[string][]int64{}
	type heal struct {
		kind string
		t    int64
	}
	var heals []heal
	for _, r := range recs {
		last = max(last, r.T)
		k := key{r.Lock, r.Client, r.Token}
		switch r.Ev {
		case Acquire:
			if open[k] == nil {
				iv := &Interval{Lock: r.Lock, Client: r.Client, Token: r.Token, Begin: r.T, Open: true}
				open[k] = iv
				byLock[r.Lock] = append(byLock[r.Lock], iv)
			}
		case End:
			if iv := open[k]; iv != nil {
				iv.End, iv.Open = max(r.T, iv.Begin), false
				delete(open, k)
			}
		case Kill:
			kills[r.Client] = append(kills[r.Client], r.T)
		case Heal:
			heals = append(heals, heal{r.Kind, r.T})
		}
	}
	for _, iv := range open {
		iv.End = last
		for _, t := range kills[iv.Client] {
			if t >= iv.Begin {
				iv.End = t
				break
			}
		}
	}
	out := map[string]time.Duration{}
	// gap is the time from t until the first holder of list after t (0 if
	// one holds at t); false if there is none before the history ends.
	gap := func(list []*Interval, t int64) (time.Duration, bool) {
		for _, iv := range list {
			if iv.End > t {
				return time.Duration(max(iv.Begin-t, 0)), true
			}
		}
		return 0, false
	}
	note := func(kind string, d time.Duration) {
		out[kind] = max(out[kind], d)
	}
	for _, list := range byLock {
		sort.SliceStable(list, func(i, j int) bool { return list[i].Begin < list[j].Begin })
		for _, h := range heals {
			if h.t < list[0].Begin {
				continue
			}
			if d, ok := gap(list, h.t); ok {
				note(h.kind, d)
			}
		}
		for _, iv := range list {
			if iv.Open && iv.End < last {
				if d, ok := gap(list, iv.End); ok {
					note(HolderDeath, d)
				}
			}
		}
	}
	return out
}
