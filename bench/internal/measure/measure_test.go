package measure

import (
	"bytes"
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseLine(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Line
		wantErr error // nil: no error; ErrNotLine; errAny: some other error
	}{
		{
			name: "leading",
			in:   "benchline mono_ns=123456789 event=leading id=a",
			want: Line{Mono: 123456789, Event: "leading", ID: "a"},
		},
		{
			name: "fields and CRLF",
			in:   "benchline mono_ns=5 event=following id=b leader=a token=7\r\n",
			want: Line{Mono: 5, Event: "following", ID: "b", Fields: map[string]string{"leader": "a", "token": "7"}},
		},
		{
			name: "empty value",
			in:   "benchline mono_ns=5 event=following id=b leader=",
			want: Line{Mono: 5, Event: "following", ID: "b", Fields: map[string]string{"leader": ""}},
		},
		{name: "a log line", in: `{"level":"info","msg":"benchline"}`, wantErr: ErrNotLine},
		{name: "blank", in: "", wantErr: ErrNotLine},
		{name: "prefix glued to text", in: "benchlinex mono_ns=1 event=x", wantErr: ErrNotLine},
		{name: "no mono", in: "benchline event=leading id=a", wantErr: errAny},
		{name: "no event", in: "benchline mono_ns=1 id=a", wantErr: errAny},
		{name: "bad mono", in: "benchline mono_ns=-1 event=leading", wantErr: errAny},
		{name: "not key=value", in: "benchline mono_ns=1 event=leading junk", wantErr: errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseLine(tt.in)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("ParseLine(%q) error %v, want none", tt.in, err)
			case tt.wantErr == errAny && (err == nil || errors.Is(err, ErrNotLine)):
				t.Fatalf("ParseLine(%q) error %v, want a parse error", tt.in, err)
			case tt.wantErr == ErrNotLine && !errors.Is(err, ErrNotLine):
				t.Fatalf("ParseLine(%q) error %v, want ErrNotLine", tt.in, err)
			}
			if tt.wantErr != nil {
				return
			}
			if got.Mono != tt.want.Mono || got.Event != tt.want.Event || got.ID != tt.want.ID || !maps.Equal(got.Fields, tt.want.Fields) {
				t.Errorf("ParseLine(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

var errAny = errors.New("any error but ErrNotLine")

func TestEmitRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	before := Now()
	require.NoError(t, Emit(&buf, EventLeading, "cand a", "token", "42", "leader", "x=y", "odd"))
	after := Now()
	if !strings.HasSuffix(buf.String(), "\n") || strings.Count(buf.String(), "\n") != 1 {
		t.Fatalf("Emit wrote %q, want one line", buf.String())
	}
	l, err := ParseLine(buf.String())
	if err != nil {
		t.Fatalf("ParseLine(Emit output %q): %v", buf.String(), err)
	}
	if l.Mono < before || l.Mono > after {
		t.Errorf("Mono = %d, want within [%d, %d]", l.Mono, before, after)
	}
	want := map[string]string{"token": "42", "leader": "x_y"}
	if l.Event != EventLeading || l.ID != "cand_a" || !maps.Equal(l.Fields, want) {
		t.Errorf("got %+v, want event %q, id %q, fields %v", l, EventLeading, "cand_a", want)
	}
}

func TestSummarize(t *testing.T) {
	tests := []struct {
		name string
		in   []float64
		want Summary
	}{
		{"empty", nil, Summary{}},
		{"one", []float64{3}, Summary{N: 1, Median: 3, Min: 3, Max: 3}},
		{"odd, unsorted", []float64{5, 1, 3}, Summary{N: 3, Median: 3, Min: 1, Max: 5}},
		{"even: mean of the middle two", []float64{4, 1, 2, 10}, Summary{N: 4, Median: 3, Min: 1, Max: 10}},
		{"negative", []float64{-1, -3, 2}, Summary{N: 3, Median: -1, Min: -3, Max: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]float64(nil), tt.in...)
			if got := Summarize(tt.in); got != tt.want {
				t.Errorf("Summarize(%v) = %+v, want %+v", tt.in, got, tt.want)
			}
			for i := range in {
				if in[i] != tt.in[i] {
					t.Fatalf("Summarize modified its input: %v, was %v", tt.in, in)
				}
			}
		})
	}
}

func TestSummaryFormatAndRatio(t *testing.T) {
	s := Summarize([]float64{0.0015, 0.002, 0.001})
	if got, want := s.Format("%.1f", 1e-3), "1.5 [1.0–2.0]"; got != want {
		t.Errorf("Format = %q, want %q", got, want)
	}
	if got := (Summary{}).Format("%.1f", 1); got != "n/a" {
		t.Errorf("empty Format = %q, want n/a", got)
	}
	b := Summarize([]float64{3})
	if got, want := Ratio(s, b, "%.4f"), "0.0005"; got != want {
		t.Errorf("Ratio = %q, want %q", got, want)
	}
	if got := Ratio(s, Summary{}, "%.1f"); got != "n/a" {
		t.Errorf("Ratio with empty = %q, want n/a", got)
	}
	if got := Ratio(s, Summarize([]float64{0}), "%.1f"); got != "n/a" {
		t.Errorf("Ratio by zero = %q, want n/a", got)
	}
}

const metricsText = `# HELP apiserver_request_total [STABLE] Counter of apiserver requests.
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="GET",version="v1"} 12
apiserver_request_total{code="404",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="GET",version="v1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 7
apiserver_request_total{code="409",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="GET",version="v1"} 99
apiserver_request_total{code="201",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="POST",version="v1"} 1.5e+00
# TYPE apiserver_longrunning_requests gauge
apiserver_longrunning_requests{component="apiserver",group="coordination.k8s.io",resource="leases",scope="namespace",subresource="",verb="WATCH",version="v1"} 2
apiserver_longrunning_requests{component="apiserver",group="",resource="pods",scope="cluster",subresource="",verb="WATCH",version="v1"} 1
apiserver_storage_objects{resource="leases.coordination.k8s.io"} 4
go_goroutines 321
weird_metric{path="a\"b\\c",x="}"} 1 1700000000000
`

func TestParseMetrics(t *testing.T) {
	all, err := ParseMetrics(strings.NewReader(metricsText))
	require.NoError(t, err)
	if len(all) != 11 {
		t.Errorf("ParseMetrics (all) got %d samples, want 11", len(all))
	}
	last := all[len(all)-1]
	if last.Name != "weird_metric" || last.Labels["path"] != `a"b\c` || last.Labels["x"] != "}" || last.Value != 1 {
		t.Errorf("escaped labels and timestamp: got %+v", last)
	}

	samples, err := ParseMetrics(strings.NewReader(metricsText), "apiserver_request_total", "apiserver_longrunning_requests")
	require.NoError(t, err)
	if len(samples) != 8 {
		t.Errorf("ParseMetrics (two names) got %d samples, want 8", len(samples))
	}
	want := map[string]float64{"GET": 15, "PUT": 9, "POST": 1.5}
	if got := LeaseRequests(samples); !maps.Equal(got, want) {
		t.Errorf("LeaseRequests = %v, want %v", got, want)
	}
	if got := LeaseWatches(samples); got != 2 {
		t.Errorf("LeaseWatches = %v, want 2", got)
	}
	if got := LeaseConflicts(samples); got != 2 {
		t.Errorf("LeaseConflicts = %v, want 2", got)
	}
}

func TestParseMetricsErrors(t *testing.T) {
	for _, in := range []string{
		`apiserver_request_total{verb="GET"}`,
		`apiserver_request_total{verb="GET"} abc`,
		`apiserver_request_total{verb="GET} 1`,
		`apiserver_request_total{verb=GET} 1`,
	} {
		if s, err := ParseMetrics(strings.NewReader(in), "apiserver_request_total"); err == nil {
			t.Errorf("ParseMetrics(%q) = %+v, want an error", in, s)
		}
	}
}

func TestDelta(t *testing.T) {
	got := Delta(map[string]float64{"GET": 10, "PUT": 4}, map[string]float64{"GET": 7, "POST": 1})
	want := map[string]float64{"GET": 3, "PUT": 4, "POST": -1}
	if !maps.Equal(got, want) {
		t.Errorf("Delta = %v, want %v", got, want)
	}
}

func TestTableMarkdown(t *testing.T) {
	tab := Table{Header: []string{"a", "bb"}, Rows: [][]string{{"x|y", "1"}, {"long cell"}}}
	want := "" +
		"| a         | bb  |\n" +
		"| --------- | --- |\n" +
		"| x\\|y      | 1   |\n" +
		"| long cell |     |\n"
	if got := tab.Markdown(); got != want {
		t.Errorf("Markdown() =\n%s\nwant\n%s", got, want)
	}
}

func TestSplice(t *testing.T) {
	section := "new table\n"
	marked := BeginMarker + "\nnew table\n" + EndMarker
	tests := []struct{ name, doc, want string }{
		{"empty doc", "", marked + "\n"},
		{"no markers", "# Title\nprose\n", "# Title\nprose\n\n" + marked + "\n"},
		{"replaces between markers, keeps the rest",
			"# T\nbefore\n" + BeginMarker + "\nold\nstuff\n" + EndMarker + "\nafter\n",
			"# T\nbefore\n" + marked + "\nafter\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Splice(tt.doc, section); got != tt.want {
				t.Errorf("Splice() =\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
	// Splicing twice changes nothing more.
	once := Splice("# T\n", section)
	if twice := Splice(once, section); twice != once {
		t.Errorf("second Splice changed the doc:\n%q\nwas\n%q", twice, once)
	}
}
