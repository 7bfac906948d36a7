package transport

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// These tests run against a real elector process: TestMain builds
// ./sidecar/cmd/elector once into a temporary directory, and each test
// starts its own elector on a free loopback port (--listen 127.0.0.1:0; the
// port is read from the elector's "serving" log line).
//
// The test binary doubles as a client process: with $childEnv set, TestMain
// runs child instead of the tests (see fault_test.go).

// waitFor bounds every wait for something that should happen promptly. It
// is generous: the machine may be slow and shared.
const waitFor = 10 * time.Second

const childEnv = "MPSYNC_TRANSPORT_TEST_CHILD"

var electorBin string

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(child())
	}
	dir, err := os.MkdirTemp("", "mpsync-elector-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	electorBin = filepath.Join(dir, "elector")
	build := exec.Command("go", "build", "-o", electorBin, "github.com/mpsync/mpsync/sidecar/cmd/elector")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the elector: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// elector is a running elector process.
type elector struct {
	t      *testing.T
	cmd    *exec.Cmd
	addr   string // host:port
	logs   *logSink
	exited chan struct{}
	err    error // from Wait; valid after exited is closed
}

// startElector starts an elector with the memory backend on a free port,
// plus args, and waits until it serves. It is killed at the end of the test.
func startElector(t *testing.T, args ...string) *elector {
	t.Helper()
	logs := &logSink{serving: make(chan string, 1)}
	cmd := exec.Command(electorBin, append([]string{
		"--listen", "127.0.0.1:0", "--identity", "test-elector", "--log-level", "debug",
	}, args...)...)
	cmd.Stdout = io.Discard
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e := &elector{t: t, cmd: cmd, logs: logs, exited: make(chan struct{})}
	go func() {
		e.err = cmd.Wait()
		close(e.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-e.exited
		if t.Failed() {
			t.Logf("elector log:\n%s", logs.String())
		}
	})
	select {
	case e.addr = <-logs.serving:
	case <-e.exited:
		t.Fatalf("elector exited before serving: %v\n%s", e.err, logs.String())
	case <-time.After(waitFor):
		t.Fatalf("elector not serving within %v\n%s", waitFor, logs.String())
	}
	return e
}

// client returns a Client for the elector, closed at the end of the test.
func (e *elector) client() *Client {
	e.t.Helper()
	c, err := New(e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(c.CloseIdleConnections)
	return c
}

// metric returns the value of an unlabelled series on /metrics.
func (e *elector) metric(series string) string {
	e.t.Helper()
	resp, err := http.Get("http://" + e.addr + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return v
		}
	}
	return ""
}

// post sends a POST with no body and checks for 200.
func (e *elector) post(path string) {
	e.t.Helper()
	resp, err := http.Post("http://"+e.addr+path, "application/json", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		e.t.Fatalf("POST %s: %s %s", path, resp.Status, b)
	}
}

// logged reports whether the elector logged a line with message msg whose
// fields include every key and value of fields.
func (e *elector) logged(msg string, fields map[string]any) bool {
	for _, line := range e.logs.lines() {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["msg"] != msg {
			continue
		}
		ok := true
		for k, v := range fields {
			if fmt.Sprint(m[k]) != fmt.Sprint(v) {
				ok = false
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// logSink keeps the elector's stderr and finds its "serving" line.
type logSink struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	serving chan string // the bound address, once
	found   bool
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	if !l.found {
		for _, line := range strings.Split(l.buf.String(), "\n") {
			var m struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &m) == nil && m.Msg == "serving" && m.Addr != "" {
				l.found = true
				l.serving <- m.Addr
				break
			}
		}
	}
	return len(p), nil
}

func (l *logSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logSink) lines() []string { return strings.Split(l.String(), "\n") }

// eventually polls cond until it holds or waitFor passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitFor)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitDone waits for a lease to end and returns how long that took.
func waitDone(t *testing.T, l *Lease) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-l.Done():
		return time.Since(start)
	case <-time.After(waitFor):
		t.Fatalf("lease not done within %v", waitFor)
	}
	return 0
}

func bg() context.Context { return context.Background() }
