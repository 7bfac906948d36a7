package trace

import (
	"strings"
	"testing"
)

func TestMark(t *testing.T) {
	var b strings.Builder
	Mark(ReleaseSent) // off: nothing to write to, nothing happens
	Enable(&b, "pod a", func() int64 { return 42 })
	defer Enable(nil, "", nil)
	if !Enabled() {
		t.Fatal("Enabled() is false after Enable")
	}
	Mark(WatchEvent, "name", "x=y", "free", "true", "odd")
	want := "benchline mono_ns=42 event=step id=pod_a step=watch-event name=x_y free=true\n"
	if b.String() != want {
		t.Errorf("Mark wrote %q, want %q", b.String(), want)
	}
	Enable(nil, "", nil)
	Mark(ReleaseSent)
	if Enabled() || b.String() != want {
		t.Errorf("Mark wrote after Enable(nil): %q", b.String())
	}
}
