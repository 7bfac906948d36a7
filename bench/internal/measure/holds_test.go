package measure

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestHoldRecordRoundTrip(t *testing.T) {
	in := []Hold{{ID: "a", Token: 3, Acquired: 10, Unlocking: 20}, {ID: "a", Token: 7, Acquired: 30, Unlocking: 30}}
	var buf bytes.Buffer
	for _, h := range in {
		require.NoError(t, WriteHold(&buf, h))
	}
	got, err := ReadHolds(&buf, "a")
	require.NoError(t, err)
	if len(got) != len(in) || got[0] != in[0] || got[1] != in[1] {
		t.Fatalf("ReadHolds = %+v, want %+v", got, in)
	}
}

func TestReadHoldsGarbage(t *testing.T) {
	for _, in := range []string{
		"1 2\n",                      // too few fields
		"1 2 3 4\n",                  // too many
		"x 2 3\n",                    // bad token
		"1 -2 3\n",                   // negative time
		"1 5 4\n",                    // unlocking before acquired
		"1 2 3\nnope\n",              // a bad second line
		"-1 2 3\n",                   // negative token
		"1 2 99999999999999999999\n", // overflow
	} {
		if hs, err := ReadHolds(strings.NewReader(in), "a"); err == nil {
			t.Errorf("ReadHolds(%q) = %+v, want an error", in, hs)
		}
	}
}

func TestCheckHolds(t *testing.T) {
	tests := []struct {
		name  string
		holds []Hold
		want  int // violations
	}{
		{"none", nil, 0},
		{"one", []Hold{{ID: "a", Token: 1, Acquired: 1, Unlocking: 2}}, 0},
		{"in turn, given out of order", []Hold{
			{ID: "b", Token: 2, Acquired: 3, Unlocking: 4},
			{ID: "a", Token: 1, Acquired: 1, Unlocking: 2},
			{ID: "c", Token: 5, Acquired: 5, Unlocking: 9},
		}, 0},
		{"overlap", []Hold{
			{ID: "a", Token: 1, Acquired: 1, Unlocking: 5},
			{ID: "b", Token: 2, Acquired: 4, Unlocking: 6},
		}, 1},
		{"acquired at the instant of the unlock", []Hold{
			{ID: "a", Token: 1, Acquired: 1, Unlocking: 5},
			{ID: "b", Token: 2, Acquired: 5, Unlocking: 6},
		}, 1},
		{"token not increasing", []Hold{
			{ID: "a", Token: 4, Acquired: 1, Unlocking: 2},
			{ID: "b", Token: 4, Acquired: 3, Unlocking: 4},
		}, 1},
		{"both", []Hold{
			{ID: "a", Token: 4, Acquired: 1, Unlocking: 9},
			{ID: "b", Token: 3, Acquired: 3, Unlocking: 4},
		}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CheckHolds(tt.holds); len(got) != tt.want {
				t.Errorf("CheckHolds = %q, want %d violations", got, tt.want)
			}
		})
	}
}

func TestCheckHoldsCapsTheList(t *testing.T) {
	var hs []Hold
	for i := range 25 {
		hs = append(hs, Hold{ID: "a", Token: 1, Acquired: int64(i), Unlocking: 100})
	}
	got := CheckHolds(hs)
	if len(got) != 11 || got[10] != "and 38 more" {
		t.Fatalf("CheckHolds gave %d lines ending %q, want 10 and \"and 38 more\"", len(got), got[len(got)-1])
	}
}

func TestParseUsage(t *testing.T) {
	stat := "4242 (elec tor) S 1 4242 4242 0 -1 4194560 1500 0 0 0 250 50 0 0 20 0 12 0 7000 1000000 3000 18446744073709551615\n"
	status := "Name:\telector\nVmPeak:\t  99999 kB\nVmRSS:\t   20480 kB\nThreads:\t12\n"
	u, err := parseUsage(stat, status)
	require.NoError(t, err)
	if u.RSS != 20480<<10 || u.CPU != 3*time.Second {
		t.Fatalf("parseUsage = %+v, want RSS 20 MiB and CPU 3s", u)
	}
	for _, bad := range [][2]string{
		{"4242 elector S 1", status},                       // no parentheses
		{"4242 (e) S 1 2 3", status},                       // too short
		{strings.Replace(stat, " 250 ", " x ", 1), status}, // bad utime
		{stat, "Name:\telector\n"},                         // no VmRSS
		{stat, "VmRSS:\tlots kB\n"},                        // bad VmRSS
	} {
		if u, err := parseUsage(bad[0], bad[1]); err == nil {
			t.Errorf("parseUsage(%q, %q) = %+v, want an error", bad[0], bad[1], u)
		}
	}
}

func TestReadUsageOfThisProcess(t *testing.T) {
	u, err := ReadUsage(os.Getpid())
	require.NoError(t, err)
	if u.RSS <= 0 || u.CPU < 0 {
		t.Fatalf("ReadUsage(self) = %+v, want a positive RSS", u)
	}
	if _, err := ReadUsage(-1); err == nil {
		t.Fatal("ReadUsage(-1) succeeded")
	}
}
