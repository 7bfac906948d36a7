package measure

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// A Hold is one term of one locker in a contended run: the fencing token
// it was granted and, on CLOCK_MONOTONIC, when its Lock returned and when
// it was about to call Unlock.
type Hold struct {
	ID        string // the locker
	Token     uint64
	Acquired  int64 // ns
	Unlocking int64 // ns; not before Acquired
}

// WriteHold writes h as one line of a hold record: "token acquired_ns
// unlocking_ns". The locker's identity is not written; ReadHolds is told
// it.
func WriteHold(w io.Writer, h Hold) error {
	_, err := fmt.Fprintf(w, "%d %d %d\n", h.Token, h.Acquired, h.Unlocking)
	return err
}

// ReadHolds reads a record that WriteHold wrote, giving every Hold the
// identity id. A malformed line is an error naming its line number.
func ReadHolds(r io.Reader, id string) ([]Hold, error) {
	var out []Hold
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			return nil, fmt.Errorf("measure: hold record of %s, line %d: want 3 fields, got %d", id, n, len(f))
		}
		tok, err1 := strconv.ParseUint(f[0], 10, 64)
		a, err2 := strconv.ParseInt(f[1], 10, 64)
		u, err3 := strconv.ParseInt(f[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil || a < 0 || u < a {
			return nil, fmt.Errorf("measure: hold record of %s, line %d: bad line %q", id, n, sc.Text())
		}
		out = append(out, Hold{ID: id, Token: tok, Acquired: a, Unlocking: u})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("measure: hold record of %s: %w", id, err)
	}
	return out, nil
}

// CheckHolds checks the holds of every locker of one lock against mutual
// exclusion as their own clocks saw it: taken in the order they were
// acquired, each must be acquired after the previous one began to unlock,
// and with a greater fencing token. It returns one description per
// violation (at most 10, then a count), none when the holds are
// consistent. holds is sorted in place by acquisition time.
func CheckHolds(holds []Hold) []string {
	slices.SortFunc(holds, func(a, b Hold) int {
		if a.Acquired != b.Acquired {
			return cmpInt64(a.Acquired, b.Acquired)
		}
		return cmpInt64(int64(a.Token), int64(b.Token))
	})
	var out []string
	n := 0
	add := func(format string, args ...any) {
		n++
		if len(out) < 10 {
			out = append(out, fmt.Sprintf(format, args...))
		}
	}
	for i := 1; i < len(holds); i++ {
		p, h := holds[i-1], holds[i]
		if h.Acquired <= p.Unlocking {
			add("%s acquired (token %d) %.3f ms before %s began to unlock (token %d)",
				h.ID, h.Token, float64(p.Unlocking-h.Acquired)/1e6, p.ID, p.Token)
		}
		if h.Token <= p.Token {
			add("%s's token %d is not greater than %s's %d, granted before it", h.ID, h.Token, p.ID, p.Token)
		}
	}
	if n > len(out) {
		out = append(out, fmt.Sprintf("and %d more", n-len(out)))
	}
	return out
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
