package measure

import (
	"fmt"
	"slices"
)

// A Summary is the median, minimum and maximum of repeated trials.
type Summary struct {
	// N is the number of trials; the other fields are zero when it is 0.
	N int
	// Median is the middle value, or the mean of the two middle values
	// when N is even.
	Median float64
	// Min and Max are the extremes.
	Min, Max float64
}

// Summarize returns the Summary of xs, which it does not modify.
func Summarize(xs []float64) Summary {
	if len(xs) == 0 {
		return Summary{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	m := s[n/2]
	if n%2 == 0 {
		m = (s[n/2-1] + s[n/2]) / 2
	}
	return Summary{N: n, Median: m, Min: s[0], Max: s[n-1]}
}

// Format formats s as "median [min–max]" with the verb f (such as "%.2f")
// for each number, after dividing each by unit; "n/a" when s is empty.
func (s Summary) Format(f string, unit float64) string {
	if s.N == 0 {
		return "n/a"
	}
	return fmt.Sprintf(f+" ["+f+"–"+f+"]", s.Median/unit, s.Min/unit, s.Max/unit)
}

// Ratio returns a.Median/b.Median formatted with f, or "n/a" when either
// is empty or b's median is zero.
func Ratio(a, b Summary, f string) string {
	if a.N == 0 || b.N == 0 || b.Median == 0 {
		return "n/a"
	}
	return fmt.Sprintf(f, a.Median/b.Median)
}
