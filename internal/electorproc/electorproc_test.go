package electorproc

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestLaunchFindsServingAcrossWrites: the "serving" line is found even when
// the process writes it in pieces, and only the first one counts.
func TestLaunchFindsServingAcrossWrites(t *testing.T) {
	script := `printf '{"level":"info","msg":"memory backend"}\n{"level":"info","msg":"serv' >&2
sleep 0.05
printf 'ing","addr":"127.0.0.1:4' >&2
sleep 0.05
printf '2424","addrs":["127.0.0.1:42424","[::1]:42424"]}\n{"msg":"serving","addr":"127.0.0.1:1"}\n' >&2
exec sleep 60`
	p, err := Launch(Spec{Name: "fake elector", Argv: []string{"sh", "-c", script}}, 10*time.Second)
	require.NoError(t, err)
	defer p.Kill()
	assert.Equal(t, "127.0.0.1:42424", p.Addr, "the first serving line's address")
	assert.Equal(t, []string{"127.0.0.1:42424", "[::1]:42424"}, p.Addrs)
}

func TestParseServingGarbage(t *testing.T) {
	for _, line := range []string{
		"", "serving", `{"msg":"serving"}`, `{"msg":"serving","addr":""}`,
		`{"msg":"listening","addr":"127.0.0.1:1"}`, `{"msg":"serving","addr":`, `[1,2]`,
	} {
		sl, ok := parseServing(line)
		assert.False(t, ok, "parseServing(%q) = %+v", line, sl)
	}
}

func TestStartFailsClearly(t *testing.T) {
	_, err := Start("/nonexistent/elector", 0)
	require.Error(t, err, "Start of a missing binary")
	// A program that exits at once never serves.
	_, err = Start("/bin/false", 10*time.Second)
	require.ErrorContains(t, err, "exited before serving", "Start of /bin/false")
}

// TestRunLinesLogAndStdin: Run hands over stdout line by line, logs both
// stdout and stderr to the file, and feeds stdin.
func TestRunLinesLogAndStdin(t *testing.T) {
	log := filepath.Join(t.TempDir(), "p.log")
	var out []string
	p, err := Run(Spec{
		Name:   "echo",
		Argv:   []string{"sh", "-c", `read x; echo "out $x"; echo "err $x" >&2; echo last`},
		Log:    log,
		Stdin:  true,
		Stdout: func(l string) { out = append(out, l) },
	})
	require.NoError(t, err)
	require.NoError(t, p.Tell("hello"))
	<-p.Exited()
	require.NoError(t, p.Err())
	assert.Equal(t, []string{"out hello", "last"}, out, "stdout lines")
	b, err := os.ReadFile(log)
	require.NoError(t, err)
	assert.Equal(t, string(b), p.Log(), "Log reads the file")
	for _, want := range []string{"# sh -c", "out hello", "err hello", "last"} {
		assert.Contains(t, string(b), want, "the log file")
	}
	assert.Error(t, p.Signal(os.Interrupt), "Signal after exit")
	assert.Error(t, p.Tell("again"), "Tell after exit: the pipe is closed")
}

// TestStopAndNofile: Stop ends a process that obeys SIGTERM within grace
// and kills one that does not; Nofile sets the descriptor limit.
func TestStopAndNofile(t *testing.T) {
	p, err := Run(Spec{Name: "limited", Argv: []string{"sh", "-c", `ulimit -n >&2; exec sleep 60`}, Nofile: 77})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return strings.TrimSpace(p.Log()) == "77" }, 10*time.Second, 5*time.Millisecond, "the limit printed")
	assert.True(t, p.Stop(10*time.Second), "sleep ends on SIGTERM")
	assert.Equal(t, "77", p.Tail(1), "stderr kept in memory without a log file")

	stubborn, err := Run(Spec{Name: "stubborn", Argv: []string{"sh", "-c", `trap '' TERM; echo ready >&2; while :; do sleep 0.01; done`}})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return stubborn.Log() == "ready\n" }, 10*time.Second, 5*time.Millisecond, "the trap set")
	assert.False(t, stubborn.Stop(100*time.Millisecond), "a process ignoring SIGTERM is killed")
	assert.True(t, stubborn.HasExited())
}

func TestPoll(t *testing.T) {
	n := 0
	require.NoError(t, Poll("third call", time.Second, time.Millisecond, func() bool { n++; return n == 3 }))
	assert.Equal(t, 3, n)
	assert.ErrorContains(t, Poll("never", 20*time.Millisecond, time.Millisecond, func() bool { return false }), "never: not within")
}
