package main

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mpsync/mpsync/bench/internal/measure"
)

func TestLoadArithmetic(t *testing.T) {
	quiet := []window{
		{perMin: map[string]float64{"PUT": 6}},
		{perMin: map[string]float64{"PUT": 5}},
		{perMin: map[string]float64{"PUT": 7, "GET": 0}, watches: 1},
	}
	load := []window{
		{perMin: map[string]float64{"PUT": 36, "GET": 40}, watches: 4},
		{perMin: map[string]float64{"PUT": 30, "GET": 46}, watches: 1},
	}
	if got, want := totals(load, quiet), []float64{70, 70}; !slices.Equal(got, want) {
		t.Errorf("totals = %v, want %v", got, want)
	}
	if got, want := totals(quiet, nil), []float64{6, 5, 7}; !slices.Equal(got, want) {
		t.Errorf("totals without a baseline = %v, want %v", got, want)
	}
	if got, want := byVerb(load, quiet, "PUT"), []float64{30, 24}; !slices.Equal(got, want) {
		t.Errorf("byVerb PUT = %v, want %v", got, want)
	}
	if got, want := watches(load, quiet), []float64{4, 1}; !slices.Equal(got, want) {
		t.Errorf("watches = %v, want %v", got, want)
	}
	if got, want := verbs(quiet, load), []string{"GET", "PUT"}; !slices.Equal(got, want) {
		t.Errorf("verbs = %v, want %v", got, want)
	}
	if got, want := verbs(quiet), []string{"PUT"}; !slices.Equal(got, want) {
		t.Errorf("verbs of quiet = %v, want %v (GET is all zeros)", got, want)
	}
}

// cell returns the cell in column col of the row of t whose first cell is
// name, failing the test if there is none.
func cell(t *testing.T, tb measure.Table, name string, col int) string {
	t.Helper()
	for _, r := range tb.Rows {
		if r[0] == name {
			require.Greater(t, len(r), col, "row %q", name)
			return r[col]
		}
	}
	require.Failf(t, "no row", "%q in %v", name, tb.Rows)
	return ""
}

func TestInprocTable(t *testing.T) {
	o := options{lease: 15 * time.Second, window: time.Minute, loadWindows: 2, kubePace: 50 * time.Millisecond, rtDuration: 3 * time.Second}
	r := newResults()
	r.handover["client-go"] = []float64{2, 1, 3}
	r.handover["in-process"] = []float64{0.02, 0.01, 0.03}
	r.expiry["client-go"] = []float64{16, 17}
	r.expiry["in-process"] = []float64{15.05, 15.07}
	r.quiet = []window{{perMin: map[string]float64{"PUT": 2}}, {perMin: map[string]float64{"PUT": 2}}}
	r.load["client-go"] = []window{{perMin: map[string]float64{"PUT": 62}, cpu: 0.01, rss: 40 << 20}, {perMin: map[string]float64{"PUT": 62}, cpu: 0.03, rss: 44 << 20}}
	r.load["in-process"] = []window{{perMin: map[string]float64{"PUT": 8}, cpu: 0.002, rss: 30 << 20}, {perMin: map[string]float64{"PUT": 8}, cpu: 0.004, rss: 30 << 20}}
	r.floor = 0.004
	r.rtt[inprocBackend] = []float64{0.009, 0.010, 0.011}
	tb := inprocTable(r, o)

	handover := "graceful handover: SIGTERM to the leader → next leader, s"
	assert.Equal(t, "2.000 [1.000–3.000]", cell(t, tb, handover, 1))
	assert.Equal(t, "0.020 [0.010–0.030]", cell(t, tb, handover, 2))
	assert.Equal(t, "0.010", cell(t, tb, handover, 3))
	assert.Equal(t, "0.060 [0.050–0.070]", cell(t, tb, "  the same less the lease (15.0), s", 2))
	load := "idle API load, 3 candidates: lease requests/min, net (2 × 1m0s)"
	assert.Equal(t, "60.0 [60.0–60.0]", cell(t, tb, load, 1))
	assert.Equal(t, "6.0 [6.0–6.0]", cell(t, tb, load, 2))
	assert.Equal(t, "0.100", cell(t, tb, load, 3))
	assert.Equal(t, "0.30 [0.20–0.40]", cell(t, tb, "idle candidate process CPU, % of one core (mean of the three, per window)", 2))
	assert.Equal(t, "42.0 [40.0–44.0]", cell(t, tb, "idle candidate process resident memory, MiB (the largest of the three, end of each window)", 1))
	rt := "Lock+Unlock round trip in-process, uncontended, one every 50ms, p50 of each 3s trial, ms"
	assert.Equal(t, "10.00 [9.00–11.00]", cell(t, tb, rt, 2))
	assert.Equal(t, "1.25 × the two-write floor (2 × 4.00 ms)", cell(t, tb, rt, 3))
}

func TestProfileNames(t *testing.T) {
	assert.Equal(t, "bufio.NewReaderSize ← net/http.newBufioReader",
		allocSite([]string{"runtime.mallocgc", "runtime.makeslice", "bufio.NewReaderSize", "net/http.newBufioReader", "net/http.(*conn).serve"}))
	assert.Equal(t, "k8s.io/x.(*ObjectMeta).Unmarshal",
		allocSite([]string{"runtime.mallocgc", "k8s.io/x.(*ObjectMeta).Unmarshal", "k8s.io/x.(*Lease).Unmarshal"}))
	assert.Equal(t, "runtime.malg", allocSite([]string{"runtime.malg"}))
	assert.Equal(t, "net/http.(*conn).serve … example.com/server.(*Server).hold",
		goroutineRole([]string{"runtime.gopark", "runtime.selectgo", "example.com/server.(*Server).hold", "example.com/server.(*Server).ServeHTTP", "net/http.(*conn).serve"}))
	assert.Equal(t, "net/http.(*connReader).backgroundRead",
		goroutineRole([]string{"runtime.gopark", "internal/poll.runtime_pollWait", "net.(*conn).Read", "net/http.(*connReader).backgroundRead"}))
	base := footprint{locks: 1, rss: []float64{10 << 20}, goroutines: 20}
	with := footprint{locks: 1001, rss: []float64{30 << 20, 40 << 20, 50 << 20}, goroutines: 2020}
	assert.InDelta(t, float64(30<<20)/1000, perLock(with, base, medianRSS), 1e-9)
	assert.InDelta(t, 2.0, perLock(with, base, func(f footprint) float64 { return f.goroutines }), 1e-9)
	assert.Zero(t, perLock(base, base, medianRSS))
}
