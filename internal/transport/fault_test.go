package transport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/wire"
)

// child is the client process of the fault tests: it takes the lock
// $MPSYNC_TEST_NAME from the elector at $MPSYNC_TEST_ADDR through this
// package, prints "ACQUIRED <token>" and blocks until the lease ends.
func child() int {
	c, err := New(os.Getenv("MPSYNC_TEST_ADDR"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	l, err := c.Acquire(context.Background(), os.Getenv("MPSYNC_TEST_NAME"), "child-"+strconv.Itoa(os.Getpid()), true)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("ACQUIRED %d\n", l.Token())
	<-l.Done()
	fmt.Fprintf(os.Stderr, "lease ended: %v\n", l.Err())
	return 3
}

// startChild starts a client process that holds name and returns it with
// its token once it says it holds the lock.
func startChild(t *testing.T, e *elector, name string) (*exec.Cmd, uint64) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", "MPSYNC_TEST_ADDR="+e.Addr, "MPSYNC_TEST_NAME="+name)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-waited
	})
	line := make(chan string, 1)
	go func() {
		defer close(waited)
		br := bufio.NewReader(out)
		s, _ := br.ReadString('\n')
		line <- s
		_, _ = io.Copy(io.Discard, br)
		_ = cmd.Wait()
	}()
	select {
	case s := <-line:
		tok, ok := strings.CutPrefix(strings.TrimSpace(s), "ACQUIRED ")
		n, err := strconv.ParseUint(tok, 10, 64)
		if !ok || err != nil {
			t.Fatalf("child said %q, want ACQUIRED <token>", s)
		}
		return cmd, n
	case <-time.After(waitFor):
		t.Fatal("child did not acquire")
	}
	return nil, 0
}

// TestKillClient: a client process holding a lock is SIGKILLed; its socket
// closes, the elector releases the lock, and a waiting client gets it.
func TestKillClient(t *testing.T) {
	e := startElector(t)
	c := e.client()
	for i := range 3 {
		name := fmt.Sprintf("kill-client-%d", i)
		cmd, childToken := startChild(t, e, name)

		type result struct {
			l   *Lease
			err error
			at  time.Time
		}
		got := make(chan result, 1)
		go func() {
			l, err := c.Acquire(bg(), name, "survivor", true)
			got <- result{l, err, time.Now()}
		}()
		require.Eventually(t, func() bool { return e.metric("mpsync_elector_waiters") == "1" }, waitFor, 10*time.Millisecond, "survivor waiting")

		killed := time.Now()
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-got:
			if r.err != nil {
				t.Fatalf("survivor's Acquire: %v", r.err)
			}
			handover := r.at.Sub(killed)
			t.Logf("run %d: SIGKILL of the holding client -> next holder: %v", i, handover)
			if handover > 5*time.Second {
				t.Errorf("handover took %v, want about a second at most", handover)
			}
			if r.l.Token() <= childToken {
				t.Errorf("token %d after the child's %d, want it to grow", r.l.Token(), childToken)
			}
			if err := r.l.Release(bg()); err != nil {
				t.Fatal(err)
			}
		case <-time.After(waitFor):
			t.Fatal("survivor not granted after the holder was killed")
		}
	}
}

// TestKillElector: the elector is SIGKILLed; the holder's lease ends at once
// with ErrUnavailable, and so does a watch.
func TestKillElector(t *testing.T) {
	e := startElector(t)
	c := e.client()
	l, err := c.Acquire(bg(), "a", "web-1", false)
	if err != nil {
		t.Fatal(err)
	}
	werr := make(chan error, 1)
	watching := make(chan struct{}, 1)
	go func() {
		werr <- c.Watch(bg(), "a", func(core.Holder) {
			select {
			case watching <- struct{}{}:
			default:
			}
		})
	}()
	<-watching

	killed := time.Now()
	e.Signal(syscall.SIGKILL)
	el := waitDone(t, l)
	t.Logf("SIGKILL of the elector -> lease Done: %v", time.Since(killed))
	if el > 5*time.Second {
		t.Errorf("lease ended %v after the kill, want at once", el)
	}
	if err := l.Err(); !errors.Is(err, core.ErrUnavailable) || !errors.Is(err, core.ErrLockLost) {
		t.Errorf("Err %v, want ErrUnavailable and ErrLockLost", err)
	}
	if !errors.Is(l.Err(), errStreamBroke) {
		t.Errorf("Err %v, want no last line: the stream broke", l.Err())
	}
	select {
	case err := <-werr:
		if !errors.Is(err, core.ErrUnavailable) {
			t.Errorf("Watch: %v, want ErrUnavailable", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Watch did not return after the elector died")
	}
	if _, err := l.Renew(bg()); !errors.Is(err, core.ErrLockLost) {
		t.Errorf("Renew after the elector died: %v, want ErrLockLost", err)
	}
	if _, err := c.Acquire(bg(), "a", "web-2", false); !errors.Is(err, core.ErrUnavailable) {
		t.Errorf("Acquire from a dead elector: %v, want ErrUnavailable", err)
	}
	if err := l.Release(bg()); err != nil {
		t.Errorf("Release of a lease already ended: %v, want nil", err)
	}
}

// TestTermElector: SIGTERM makes the elector tell every holder, release
// everything and exit 0 promptly.
func TestTermElector(t *testing.T) {
	e := startElector(t)
	c := e.client()
	l, err := c.Acquire(bg(), "a", "web-1", false)
	if err != nil {
		t.Fatal(err)
	}
	waiterErr := make(chan error, 1)
	go func() {
		_, err := c.Acquire(bg(), "a", "web-2", true)
		waiterErr <- err
	}()
	require.Eventually(t, func() bool { return e.metric("mpsync_elector_waiters") == "1" }, waitFor, 10*time.Millisecond, "waiter queued")
	// The waiter has its 200 and waiting line: the shutdown reaches it as
	// an error line, which must fail it as a 503 would.
	require.Eventually(t, func() bool {
		return e.Logged("waiting for the lock", map[string]any{"name": "a", "identity": "web-2"})
	}, waitFor, 10*time.Millisecond, "the waiter told it waits")

	termed := time.Now()
	e.Signal(syscall.SIGTERM)
	waitDone(t, l)
	if err := l.Err(); !errors.Is(err, core.ErrLockLost) || !errors.Is(err, core.ErrUnavailable) {
		t.Errorf("Err %v, want ErrLockLost and ErrUnavailable", err)
	}
	if err := l.Err(); errors.Is(err, errStreamBroke) || !strings.Contains(err.Error(), "("+wire.ReasonShutdown+")") {
		t.Errorf("Err %v, want a lost line that tells of the shutdown", err)
	}
	if err := <-waiterErr; !errors.Is(err, core.ErrUnavailable) {
		t.Errorf("waiter: %v, want ErrUnavailable", err)
	}
	select {
	case <-e.Exited():
		took := time.Since(termed)
		t.Logf("SIGTERM -> exit: %v", took)
		if err := e.Err(); err != nil {
			t.Errorf("elector exit: %v, want status 0", err)
		}
		if took > 5*time.Second {
			t.Errorf("exit took %v, want about 2 s at most", took)
		}
	case <-time.After(waitFor):
		t.Fatal("elector did not exit after SIGTERM")
	}
	if !e.Logged("lock released", map[string]any{"name": "a", "identity": "web-1", "why": "elector shutting down"}) {
		t.Errorf("no log of the release of a by web-1 at shutdown")
	}
}

// TestSilentElector: an elector that is stopped (SIGSTOP) keeps its
// connections open but sends nothing. A held lease ends once its stream has
// been silent for Silence, as a lost lease with ErrUnavailable; a waiting
// Acquire fails with ErrUnavailable; a watch fails the same way.
func TestSilentElector(t *testing.T) {
	e := startElector(t)
	c := e.client()
	l, err := c.Acquire(bg(), "a", "web-1", false)
	if err != nil {
		t.Fatal(err)
	}
	waiterErr := make(chan error, 1)
	go func() {
		_, err := c.Acquire(bg(), "a", "web-2", true)
		waiterErr <- err
	}()
	watchErr := make(chan error, 1)
	watching := make(chan struct{}, 1)
	go func() {
		watchErr <- c.Watch(bg(), "a", func(core.Holder) {
			select {
			case watching <- struct{}{}:
			default:
			}
		})
	}()
	require.Eventually(t, func() bool { return c.armedStreams() == 3 }, waitFor, 10*time.Millisecond, "heartbeats on the three streams")
	<-watching

	e.Signal(syscall.SIGSTOP)
	defer e.Signal(syscall.SIGCONT)
	stopped := time.Now()
	took := waitDone(t, l)
	t.Logf("stopped elector -> lease done: %v (Silence %v)", took, Silence)
	if err := l.Err(); !errors.Is(err, core.ErrLockLost) || !errors.Is(err, core.ErrUnavailable) {
		t.Errorf("Err %v, want ErrLockLost and ErrUnavailable", err)
	}
	for what, ch := range map[string]chan error{"waiting Acquire": waiterErr, "Watch": watchErr} {
		select {
		case err := <-ch:
			if !errors.Is(err, core.ErrUnavailable) {
				t.Errorf("%s: %v, want ErrUnavailable", what, err)
			}
			t.Logf("stopped elector -> %s failed: %v", what, time.Since(stopped))
		case <-time.After(waitFor):
			t.Fatalf("%s still going %v after the elector stopped", what, time.Since(stopped))
		}
	}
	if n := c.armedStreams(); n != 0 {
		t.Errorf("%d streams still armed after they ended, want 0", n)
	}
}
