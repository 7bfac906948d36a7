package transport

import (
	"context"
	"io"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/mpsync/mpsync/internal/electorproc"
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
	electorproc.RunTests(m, &electorBin)
}

// elector is a running elector process.
type elector struct {
	t *testing.T
	*electorproc.Process
}

// startElector starts an elector with the memory backend on a free port,
// plus args, and waits until it serves. It is killed at the end of the test.
func startElector(t *testing.T, args ...string) *elector {
	t.Helper()
	p, err := electorproc.Start(electorBin, waitFor, append([]string{"--identity", "test-elector"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("elector log:\n%s", p.Log())
		}
	})
	return &elector{t: t, Process: p}
}

// client returns a Client for the elector, closed at the end of the test.
func (e *elector) client() *Client {
	e.t.Helper()
	c, err := New(e.Addr)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(c.CloseIdleConnections)
	return c
}

// metric returns the value of an unlabelled series on /metrics.
func (e *elector) metric(series string) string {
	e.t.Helper()
	v, err := e.Metric(series)
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

// post sends a POST with no body and checks for 200.
func (e *elector) post(path string) {
	e.t.Helper()
	resp, err := http.Post("http://"+e.Addr+path, "application/json", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		e.t.Fatalf("POST %s: %s %s", path, resp.Status, b)
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
