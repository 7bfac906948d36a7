// Package electorproc runs elector processes for tests that need a real one
// over real sockets: it starts the binary on a free loopback port, learns
// the port from the elector's "serving" log line, keeps its log, and reads
// its metrics. It is not for production use.
package electorproc

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is an elector process that Start started. Its methods are safe
// for concurrent use.
type Process struct {
	// Addr is the first host:port it serves on (the "serving" line's
	// addr).
	Addr string

	cmd    *exec.Cmd
	logs   *logSink
	exited chan struct{}
	err    error // from Wait; valid once exited is closed
}

// Start runs the elector binary bin with --listen 127.0.0.1:0 (unless args
// give --listen: the elector's --listen adds up, so args then say every
// address; port 0 picks one port for all) and --log-level debug, then args
// (a flag given again in args wins), and waits
// up to timeout for it to serve. If it exits first or does not serve in
// time, Start kills it and returns an error that includes its log. The
// caller must end a Process it got with Kill or Stop.
func Start(bin string, timeout time.Duration, args ...string) (*Process, error) {
	return start(exec.Command(bin, append(defaultArgs(args), args...)...), timeout)
}

// StartNofile is Start with the process's descriptor limit (RLIMIT_NOFILE,
// soft and hard) set to nofile, as `ulimit -n` in a shell would.
func StartNofile(bin string, nofile uint64, timeout time.Duration, args ...string) (*Process, error) {
	script := fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, nofile)
	return start(exec.Command("sh", append([]string{"-c", script, bin}, append(defaultArgs(args), args...)...)...), timeout)
}

// defaultArgs are the flags Start gives before args: --log-level debug, and
// --listen 127.0.0.1:0 unless args give --listen (the elector's --listen
// adds up, so args then say every address).
func defaultArgs(args []string) []string {
	base := []string{"--log-level", "debug"}
	if !slices.Contains(args, "--listen") {
		base = append(base, "--listen", "127.0.0.1:0")
	}
	return base
}

func start(cmd *exec.Cmd, timeout time.Duration) (*Process, error) {
	logs := &logSink{serving: make(chan string, 1)}
	cmd.Stdout = io.Discard
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{cmd: cmd, logs: logs, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case p.Addr = <-logs.serving:
		return p, nil
	case <-p.exited:
		return nil, fmt.Errorf("elector exited before serving: %v\n%s", p.err, logs.String())
	case <-timer.C:
		p.Kill()
		return nil, fmt.Errorf("elector not serving within %v\n%s", timeout, logs.String())
	}
}

// Signal sends sig to the process; it does nothing once the process has
// exited.
func (p *Process) Signal(sig os.Signal) {
	select {
	case <-p.exited:
	default:
		_ = p.cmd.Process.Signal(sig)
	}
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Process) Kill() {
	p.Signal(syscall.SIGKILL)
	<-p.exited
}

// Stop sends SIGTERM and waits up to grace for the process to end, then
// kills it. It reports whether the process ended within grace.
func (p *Process) Stop(grace time.Duration) bool {
	p.Signal(syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.exited:
		return true
	case <-timer.C:
		p.Kill()
		return false
	}
}

// Pid is the process id; /proc/PID describes the elector.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited is closed when the process has ended.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Err is the process's exit error (nil for status 0); valid once Exited is
// closed.
func (p *Process) Err() error {
	<-p.exited
	return p.err
}

// Log returns everything the process wrote to stderr so far.
func (p *Process) Log() string { return p.logs.String() }

// Logged reports whether the process logged a JSON line with message msg
// whose fields include every key of fields with the value it gives
// (compared as fmt.Sprint strings).
func (p *Process) Logged(msg string, fields map[string]any) bool {
	for line := range strings.SplitSeq(p.Log(), "\n") {
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

// Metric returns the value of the unlabelled series on the process's
// /metrics, or "" if it has none.
func (p *Process) Metric(series string) (string, error) {
	resp, err := http.Get("http://" + p.Addr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return v, nil
		}
	}
	return "", sc.Err()
}

// Ready reports whether the process's /readyz answers 200.
func (p *Process) Ready() bool {
	resp, err := http.Get("http://" + p.Addr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// servingAddr returns the address of the elector's "serving" log line, and
// false for any other line.
func servingAddr(line string) (string, bool) {
	var m struct{ Msg, Addr string }
	if json.Unmarshal([]byte(line), &m) != nil || m.Msg != "serving" || m.Addr == "" {
		return "", false
	}
	return m.Addr, true
}

// logSink keeps an elector's stderr and finds its "serving" line, which
// may arrive split over several writes.
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
		for line := range strings.SplitSeq(l.buf.String(), "\n") {
			if addr, ok := servingAddr(line); ok {
				l.found = true
				l.serving <- addr
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
