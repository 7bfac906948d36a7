// Package inputs tests the elector against clients it did not write: raw
// HTTP requests that guess or replay session ids, and floods of lock names,
// each next to a healthy SDK client that must see no error. Every test runs
// a real elector process (memory backend) over real sockets.
package inputs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/internal/electorproc"
	"github.com/mpsync/mpsync/internal/wire"
)

// waitFor bounds every wait for something that should happen promptly. It
// is generous: the machine may be slow and shared.
const waitFor = 20 * time.Second

// electorBin is $MPSYNC_ELECTOR_BIN, else an elector built for this run.
var electorBin string

func TestMain(m *testing.M) { electorproc.RunTests(m, &electorBin) }

// startElector starts an elector on the memory backend, killed at the end
// of the test.
func startElector(t *testing.T, args ...string) *electorproc.Process {
	t.Helper()
	p, err := electorproc.Start(electorBin, waitFor, append([]string{"--identity", "inputs-elector"}, args...)...)
	require.NoError(t, err)
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("elector log:\n%s", p.Log())
		}
	})
	return p
}

// answer is one plain HTTP exchange's result.
type answer struct {
	status int
	body   []byte
}

// code is the "code" of an error body, or "" if there is none.
func (a answer) code() string {
	var eb wire.ErrorBody
	if json.Unmarshal(a.body, &eb) != nil {
		return ""
	}
	return eb.Code
}

// send makes one plain HTTP request, as a client that is not the SDK would.
func send(t *testing.T, hc *http.Client, method, url, body string) answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = bytes.NewBufferString(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	require.NoError(t, err)
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return answer{resp.StatusCode, b}
}

// healthyHolder is an SDK client that keeps locking and unlocking name
// through the elector at addr, each term held for a few renewals, until
// stop. Its first error, if any, is reported by wait.
type healthyHolder struct {
	cancel context.CancelFunc
	done   chan error
	terms  chan uint64 // the token of each term, as it starts
}

func startHealthyHolder(t *testing.T, addr, name string, hold time.Duration) *healthyHolder {
	t.Helper()
	lock, err := mpsync.NewLock(name, mpsync.WithElector(addr), mpsync.WithIdentity("healthy-"+name))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	h := &healthyHolder{cancel: cancel, done: make(chan error, 1), terms: make(chan uint64, 1024)}
	go func() { h.done <- h.run(ctx, lock, hold) }()
	t.Cleanup(func() { _ = h.stop() })
	return h
}

func (h *healthyHolder) run(ctx context.Context, lock *mpsync.Lock, hold time.Duration) error {
	for {
		held, err := lock.Lock(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("Lock: %w", err)
		}
		tok, _ := mpsync.FencingToken(held)
		select {
		case h.terms <- tok:
		default:
		}
		timer := time.NewTimer(hold)
		select {
		case <-held.Done():
			timer.Stop()
			if ctx.Err() != nil {
				_ = lock.Unlock()
				return nil
			}
			return fmt.Errorf("term %d ended before Unlock: %w", tok, context.Cause(held))
		case <-timer.C:
		}
		if err := lock.Unlock(); err != nil {
			return fmt.Errorf("Unlock: %w", err)
		}
	}
}

// stop ends the holder and returns its first error.
func (h *healthyHolder) stop() error {
	h.cancel()
	err, ok := <-h.done
	if !ok {
		return nil
	}
	close(h.done)
	return err
}

// nextTerm waits for the holder to start a term and returns its token.
func (h *healthyHolder) nextTerm(t *testing.T) uint64 {
	t.Helper()
	select {
	case tok := <-h.terms:
		return tok
	case <-time.After(waitFor):
		t.Fatalf("the healthy holder started no term within %v", waitFor)
	}
	return 0
}
