package main

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mpsync/mpsync/bench/internal/measure"
)

// TestGroupLinesAndStop: a group's processes hand their benchmark lines to
// wait and collect, read commands from stdin, and all end on stop, the
// one that ignores SIGTERM killed after the grace.
func TestGroupLinesAndStop(t *testing.T) {
	g, err := newGroup(t.TempDir())
	require.NoError(t, err)
	line := func(ev string) string { return measure.Prefix + " mono_ns=1 event=" + ev + " id=$0" }
	echo, err := g.start("echo", true, "sh", "-c", `echo "`+line("ready")+`"; read x; echo "`+line("got-$x")+`"; exec sleep 60`, "a")
	require.NoError(t, err)
	stubborn, err := g.start("stubborn", false, "sh", "-c", `trap '' TERM; echo "`+line("ready")+`"; while :; do sleep 0.01; done`, "b")
	require.NoError(t, err)
	stubborn.late = true

	got, err := g.collect(context.Background(), 10*time.Second, "ready", []string{"a", "b"})
	require.NoError(t, err)
	assert.Equal(t, "echo", got["a"].proc)
	assert.Equal(t, "stubborn", got["b"].proc)
	require.NoError(t, echo.Tell("go"))
	l, err := g.wait(context.Background(), 10*time.Second, "got-go", echo, event("got-go", "a"))
	require.NoError(t, err)
	assert.Equal(t, "echo", l.proc)

	g.stop(200 * time.Millisecond)
	assert.True(t, echo.HasExited())
	assert.True(t, stubborn.HasExited())
	assert.Error(t, stubborn.Err(), "the stubborn one was killed")
}

func TestExampleLine(t *testing.T) {
	for _, c := range []struct {
		text, event, id, leader string
	}{
		{"17:01:02.345 a: I am the leader (token 3)", measure.EventLeading, "a", ""},
		{"17:01:02.345 b: following a (token 3)", measure.EventFollowing, "b", "a"},
		{"17:01:02.345 b: following a", measure.EventFollowing, "b", "a"},
		{"17:01:02.345 a: stopped", measure.EventExiting, "a", ""},
		{"17:01:02.345 a: running for leader of x", "", "", ""},
		{"garbage", "", "", ""},
	} {
		l, err := exampleLine(c.text)
		if c.event == "" {
			if err == nil {
				t.Errorf("exampleLine(%q) = %+v, want ErrNotLine", c.text, l)
			}
			continue
		}
		if err != nil || l.Event != c.event || l.ID != c.id || l.Fields["leader"] != c.leader || l.Mono <= 0 {
			t.Errorf("exampleLine(%q) = %+v, %v", c.text, l, err)
		}
	}
}
