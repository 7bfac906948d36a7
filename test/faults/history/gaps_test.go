package history

import (
	"maps"
	"testing"
	"time"
)

func TestGaps(t *testing.T) {
	recs := []Record{
		acq("l", "a", 1, 1*s), end("l", "a", 1, 2*s),
		{Ev: Fault, Kind: "x", T: 3 * s}, {Ev: Heal, Kind: "x", T: 4 * s},
		acq("l", "b", 2, 6*s), {Ev: Kill, Client: "b", T: 7 * s},
		acq("l", "c", 3, 10*s), end("l", "c", 3, 11*s),
		{Ev: Fault, Kind: "y", T: 12 * s}, {Ev: Heal, Kind: "y", T: 13 * s},
		acq("l", "d", 4, 14*s), end("l", "d", 4, 20*s),
		{Ev: Fault, Kind: "y", T: 15 * s}, {Ev: Heal, Kind: "y", T: 16 * s}, // d holds: no gap
		acq("m", "e", 1, 30*s), end("m", "e", 1, 31*s), // a lock first held after every heal
	}
	got := Gaps(recs)
	want := map[string]time.Duration{"x": 2 * time.Second, "y": time.Second, HolderDeath: 3 * time.Second}
	if !maps.Equal(got, want) {
		t.Errorf("Gaps = %v, want %v", got, want)
	}
	if rep := Check(recs, Options{Bound: 20 * time.Second}); rep.LongestGap != 3*time.Second {
		t.Errorf("Check's LongestGap = %v, want the greatest of Gaps, 3s", rep.LongestGap)
	}
}
