package history

import (
	"strings"
	"testing"
	"time"
)

const s = int64(time.Second)

func acq(lock, client string, tok uint64, t int64) Record {
	return Record{Ev: Acquire, Lock: lock, Client: client, Token: tok, T: t}
}
func end(lock, client string, tok uint64, t int64) Record {
	return Record{Ev: End, Lock: lock, Client: client, Token: tok, T: t}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name       string
		recs       []Record
		violations []string // substrings, one per expected violation
		gap        time.Duration
	}{
		{"clean handover", []Record{
			acq("l", "a", 1, 1*s), end("l", "a", 1, 2*s),
			acq("l", "b", 2, 2*s), end("l", "b", 2, 3*s),
		}, nil, 0},
		{"overlap", []Record{
			acq("l", "a", 1, 1*s), end("l", "a", 1, 3*s),
			acq("l", "b", 2, 2*s), end("l", "b", 2, 4*s),
		}, []string{"overlaps"}, 0},
		{"overlap hidden behind a long interval", []Record{
			acq("l", "a", 1, 1*s), end("l", "a", 1, 10*s),
			acq("l", "b", 2, 2*s), end("l", "b", 2, 3*s),
			acq("l", "c", 3, 4*s), end("l", "c", 3, 5*s),
		}, []string{"b token 2", "c token 3"}, 0},
		{"other locks do not conflict", []Record{
			acq("l", "a", 1, 1*s), end("l", "a", 1, 3*s),
			acq("m", "b", 1, 2*s), end("m", "b", 1, 4*s),
		}, nil, 0},
		{"token goes back", []Record{
			acq("l", "a", 5, 1*s), end("l", "a", 5, 2*s),
			acq("l", "b", 4, 3*s), end("l", "b", 4, 4*s),
		}, []string{"token 4 of b acquired after token 5"}, 0},
		{"token repeats", []Record{
			acq("l", "a", 5, 1*s), end("l", "a", 5, 2*s),
			acq("l", "b", 5, 3*s), end("l", "b", 5, 4*s),
		}, []string{"token 5 of b acquired after token 5"}, 0},
		{"killed holder ends at its kill", []Record{
			acq("l", "a", 1, 1*s), {Ev: Kill, Client: "a", T: 2 * s},
			acq("l", "b", 2, 3*s), end("l", "b", 2, 4*s),
		}, nil, time.Second},
		{"killed holder's lock never taken", []Record{
			acq("l", "a", 1, 1*s), {Ev: Kill, Client: "a", T: 2 * s},
			{Ev: Fault, Kind: "other", T: 60 * s},
		}, []string{"no holder in the 58s after a died"}, 0},
		{"slow takeover after a kill", []Record{
			acq("l", "a", 1, 1*s), {Ev: Kill, Client: "a", T: 2 * s},
			acq("l", "b", 2, 40*s), end("l", "b", 2, 41*s),
		}, []string{"no holder for 38s after a died"}, 38 * time.Second},
		{"holder within the bound after a heal", []Record{
			acq("l", "a", 1, 1*s), end("l", "a", 1, 2*s),
			{Ev: Fault, Kind: "elector-sigstop", T: 3 * s}, {Ev: Heal, Kind: "elector-sigstop", T: 10 * s},
			acq("l", "b", 2, 15*s), end("l", "b", 2, 16*s),
		}, nil, 5 * time.Second},
		{"no holder long after a heal", []Record{
			acq("l", "a", 1, 1*s), end("l", "a", 1, 2*s),
			{Ev: Fault, Kind: "apiserver-kill", T: 3 * s}, {Ev: Heal, Kind: "apiserver-kill", T: 10 * s},
			acq("l", "b", 2, 50*s), end("l", "b", 2, 51*s),
		}, []string{"no holder for 40s after a heal"}, 40 * time.Second},
		{"end without acquire", []Record{end("l", "a", 1, 1*s)}, []string{"never acquired"}, 0},
		{"acquired twice", []Record{acq("l", "a", 1, 1*s), acq("l", "a", 1, 2*s)}, []string{"twice"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := Check(tt.recs, Options{Bound: 20 * time.Second})
			if len(rep.Violations) != len(tt.violations) {
				t.Fatalf("violations = %q, want %d like %q", rep.Violations, len(tt.violations), tt.violations)
			}
			for i, want := range tt.violations {
				if !strings.Contains(rep.Violations[i], want) {
					t.Errorf("violation %d = %q, want it to mention %q", i, rep.Violations[i], want)
				}
			}
			if rep.LongestGap != tt.gap {
				t.Errorf("longest gap = %v, want %v", rep.LongestGap, tt.gap)
			}
		})
	}
}

func TestParse(t *testing.T) {
	good := `{"ev":"acquire","t":1,"lock":"l","client":"a","token":1}

{"ev":"end","t":2,"lock":"l","client":"a","token":1,"cause":"unlocked"}
{"ev":"kill","t":3,"client":"a"}
{"ev":"fault","t":4,"kind":"x"}
{"ev":"heal","t":5,"kind":"x"}
`
	recs, err := Parse(strings.NewReader(good))
	if err != nil || len(recs) != 5 {
		t.Fatalf("Parse = %d records, %v; want 5, nil", len(recs), err)
	}
	bad := []struct{ name, in string }{
		{"not json", "hello\n"},
		{"unknown kind", `{"ev":"nap","t":1}`},
		{"no time", `{"ev":"kill","client":"a"}`},
		{"negative time", `{"ev":"kill","client":"a","t":-5}`},
		{"acquire without token", `{"ev":"acquire","t":1,"lock":"l","client":"a"}`},
		{"unknown field", `{"ev":"kill","t":1,"client":"a","x":1}`},
		{"two records on a line", `{"ev":"kill","t":1,"client":"a"}{"ev":"kill","t":1,"client":"a"}`},
		{"wrong type", `{"ev":"kill","t":"1","client":"a"}`},
		{"too long", `{"ev":"kill","t":1,"client":"` + strings.Repeat("a", MaxLine) + `"}`},
	}
	for _, tt := range bad {
		if _, err := Parse(strings.NewReader(tt.in)); err == nil {
			t.Errorf("%s: Parse accepted %q", tt.name, tt.in)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"ev":"acquire","t":1,"lock":"l","client":"a","token":1}` + "\n" + `{"ev":"end","t":2,"lock":"l","client":"a","token":1}`))
	f.Add([]byte(`{"ev":"kill","t":3,"client":"a"}`))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, in []byte) {
		recs, err := Parse(strings.NewReader(string(in)))
		if err != nil {
			return
		}
		for _, r := range recs {
			if err := r.validate(); err != nil {
				t.Fatalf("Parse returned an invalid record %+v: %v", r, err)
			}
		}
		Check(recs, Options{Bound: time.Second}) // must not panic
	})
}
