package faults

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a process the harness started. Its output goes to a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and been reaped
	err  error         // from Wait; valid once done is closed
}

// startProc starts argv with stdout and stderr appended to logPath. If
// watch is not nil it also receives every line of stderr, from one
// goroutine, until the process exits.
func startProc(name, logPath string, watch func(line string), argv ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	// Should this test process die without its cleanups (a panic, the
	// test timeout), the kernel kills what it started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stdout = logf
	var pr *io.PipeReader
	var pw *io.PipeWriter
	if watch == nil {
		cmd.Stderr = logf
	} else {
		pr, pw = io.Pipe()
		cmd.Stderr = io.MultiWriter(logf, pw)
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	var lines sync.WaitGroup
	if watch != nil {
		lines.Go(func() {
			sc := bufio.NewScanner(pr)
			sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
			for sc.Scan() {
				watch(sc.Text())
			}
			_, _ = io.Copy(io.Discard, pr)
		})
	}
	go func() {
		p.err = cmd.Wait() // returns once stderr has been copied
		if pw != nil {
			pw.Close()
		}
		lines.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) signal(sig syscall.Signal) error {
	if p.exited() {
		return fmt.Errorf("%s has exited: %v", p.name, p.err)
	}
	return p.cmd.Process.Signal(sig)
}

// kill sends SIGKILL and waits until the process is reaped.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop asks the process to exit (SIGCONT in case it is stopped, then
// SIGTERM), kills it if it has not exited within grace, and waits for it.
// It reports whether the process exited on its own, with status 0.
func (p *proc) stop(grace time.Duration) (clean bool) {
	if p.exited() {
		return p.err == nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return p.err == nil
	case <-t.C:
		p.kill()
		return false
	}
}

// servingAddr returns a stderr watcher that sends, once, the address of
// the elector's JSON "serving" log line.
func servingAddr(ch chan<- string) func(string) {
	found := false
	return func(line string) {
		if found {
			return
		}
		var m struct{ Msg, Addr string }
		if json.Unmarshal([]byte(line), &m) == nil && m.Msg == "serving" && m.Addr != "" {
			found = true
			ch <- m.Addr
		}
	}
}

// httpc is the harness's client for the electors' /readyz and lock state:
// short timeouts, since an elector may be stopped.
var httpc = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// ready reports whether the elector at addr answers /readyz with 200.
func ready(addr string) bool {
	resp, err := httpc.Get("http://" + addr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// lockHolder asks the elector at addr who holds lock name (PROTOCOL.md's
// GET /v1/locks/{name}); "" if nobody.
func lockHolder(addr, name string) (string, error) {
	resp, err := httpc.Get("http://" + addr + "/v1/locks/" + name)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /v1/locks/%s: %s", name, resp.Status)
	}
	var st struct{ Holder string }
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return "", err
	}
	return strings.TrimSpace(st.Holder), nil
}
