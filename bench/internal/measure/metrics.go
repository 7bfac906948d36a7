package measure

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// A Sample is one series of a Prometheus text exposition: a metric name,
// its labels, and its value.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// ParseMetrics reads the Prometheus text format (as the API server serves
// it on /metrics) and returns the samples whose metric name is one of
// names (all of them if names is empty). Comments and blank lines are
// skipped; a malformed sample line is an error.
func ParseMetrics(r io.Reader, names ...string) ([]Sample, error) {
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	var out []Sample
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for lineNo := 1; sc.Scan(); lineNo++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name := line
		if i := strings.IndexAny(line, "{ \t"); i >= 0 {
			name = line[:i]
		}
		if len(want) > 0 && !want[name] {
			continue
		}
		s, err := parseSample(line, name)
		if err != nil {
			return nil, fmt.Errorf("measure: metrics line %d: %w", lineNo, err)
		}
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("measure: read metrics: %w", err)
	}
	return out, nil
}

func parseSample(line, name string) (Sample, error) {
	s := Sample{Name: name}
	rest := line[len(name):]
	if strings.HasPrefix(rest, "{") {
		labels, after, err := parseLabels(rest[1:])
		if err != nil {
			return Sample{}, fmt.Errorf("%q: %w", line, err)
		}
		s.Labels, rest = labels, after
	}
	f := strings.Fields(rest)
	if len(f) < 1 || len(f) > 2 { // value, and an optional timestamp
		return Sample{}, fmt.Errorf("%q: want a value after the labels", line)
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return Sample{}, fmt.Errorf("%q: bad value: %w", line, err)
	}
	s.Value = v
	return s, nil
}

// parseLabels parses `k="v",k2="v2"}` (the text after '{') and returns the
// labels and the text after the closing brace.
func parseLabels(s string) (map[string]string, string, error) {
	labels := make(map[string]string)
	for {
		s = strings.TrimLeft(s, " ,")
		if strings.HasPrefix(s, "}") {
			return labels, s[1:], nil
		}
		eq := strings.IndexByte(s, '=')
		if eq <= 0 || len(s) < eq+2 || s[eq+1] != '"' {
			return nil, "", fmt.Errorf("malformed labels")
		}
		key := strings.TrimSpace(s[:eq])
		s = s[eq+2:]
		var val strings.Builder
		i := 0
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					val.WriteByte('\n')
				default:
					val.WriteByte(s[i])
				}
				continue
			}
			val.WriteByte(s[i])
		}
		if i == len(s) {
			return nil, "", fmt.Errorf("unterminated label value")
		}
		labels[key] = val.String()
		s = s[i+1:]
	}
}

// LeaseRequests sums apiserver_request_total over the series with
// resource="leases", by verb (GET, PUT, POST, WATCH, LIST, ...).
func LeaseRequests(samples []Sample) map[string]float64 {
	out := make(map[string]float64)
	for _, s := range samples {
		if s.Name == "apiserver_request_total" && s.Labels["resource"] == "leases" {
			out[s.Labels["verb"]] += s.Value
		}
	}
	return out
}

// LeaseConflicts sums apiserver_request_total over the series with
// resource="leases" and code="409": writes refused because the object
// changed since the writer read it (or, for a create, exists).
func LeaseConflicts(samples []Sample) float64 {
	var n float64
	for _, s := range samples {
		if s.Name == "apiserver_request_total" && s.Labels["resource"] == "leases" && s.Labels["code"] == "409" {
			n += s.Value
		}
	}
	return n
}

// LeaseWatches returns the number of open watches on leases, from the
// apiserver_longrunning_requests gauge. Watches appear in
// apiserver_request_total only when they end, so this is how an idle
// window sees the watches that are open through it.
func LeaseWatches(samples []Sample) float64 {
	var n float64
	for _, s := range samples {
		if s.Name == "apiserver_longrunning_requests" && s.Labels["resource"] == "leases" && s.Labels["verb"] == "WATCH" {
			n += s.Value
		}
	}
	return n
}

// Delta returns after minus before, key by key (keys of either).
func Delta(after, before map[string]float64) map[string]float64 {
	out := make(map[string]float64, len(after))
	for k, v := range after {
		out[k] = v - before[k]
	}
	for k, v := range before {
		if _, ok := after[k]; !ok {
			out[k] = -v
		}
	}
	return out
}
