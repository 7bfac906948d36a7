package campaign

import (
	"strings"
	"testing"

	"github.com/mpsync/mpsync/bench/internal/measure"
	"github.com/mpsync/mpsync/internal/trace"
)

// The step lines of package internal/trace are benchmark lines.
func TestStepLinesParse(t *testing.T) {
	var b strings.Builder
	trace.Enable(&b, "a", measure.Now)
	trace.Mark(StepSignal)
	trace.Enable(nil, "", nil)
	l, err := measure.ParseLine(b.String())
	if err != nil {
		t.Fatalf("ParseLine(%q): %v", b.String(), err)
	}
	if l.Event != trace.Event || l.ID != "a" || l.Fields["step"] != StepSignal || l.Mono <= 0 {
		t.Errorf("ParseLine(%q) = %+v", b.String(), l)
	}
}
