package electorproc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Spec says how to run a process with Run.
type Spec struct {
	// Name names the process in errors.
	Name string
	// Argv is the command and its arguments.
	Argv []string
	// Env, if not nil, is added to this process's environment.
	Env []string
	// Log, if not empty, is a file that receives the command line and the
	// process's stdout and stderr, appended, line by line; Proc.Log then
	// reads it back. If empty, the process's stderr is kept in memory for
	// Proc.Log, and stdout is dropped (but for Stdout).
	Log string
	// Stdin gives the process a pipe on its standard input, for Tell.
	Stdin bool
	// Nofile, if not 0, is the process's descriptor limit (RLIMIT_NOFILE,
	// soft and hard), set as `ulimit -n` in a shell would.
	Nofile uint64
	// Stdout and Stderr, if not nil, receive every line the process
	// writes there, without its newline, each from one goroutine of its
	// own, until the process exits. A slow one slows the process down.
	Stdout, Stderr func(line string)
}

// Proc is a process that Run started. The kernel kills it should the
// process that started it die first (PR_SET_PDEATHSIG). Its methods are
// safe for concurrent use.
type Proc struct {
	name  string
	log   string // Spec.Log
	cmd   *exec.Cmd
	stdin io.WriteCloser // nil unless Spec.Stdin
	done  chan struct{}  // closed once exited and its output read
	err   error          // from Wait; valid once done is closed

	mu     sync.Mutex
	stderr bytes.Buffer
}

// Run starts the process s describes. The caller must end it (Kill, Stop)
// or wait for it to exit (Exited).
func Run(s Spec) (*Proc, error) {
	if len(s.Argv) == 0 {
		return nil, errors.New("electorproc: Run with no command")
	}
	argv := s.Argv
	if s.Nofile != 0 {
		script := fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, s.Nofile)
		argv = append([]string{"sh", "-c", script}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if s.Env != nil {
		cmd.Env = append(os.Environ(), s.Env...)
	}
	p := &Proc{name: s.Name, log: s.Log, cmd: cmd, done: make(chan struct{})}
	var log io.WriteCloser = nopCloser{io.Discard}
	if s.Log != "" {
		f, err := os.OpenFile(s.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		log = f
	}
	out := &lineWriter{w: log}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		log.Close()
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		log.Close()
		return nil, err
	}
	if s.Stdin {
		if p.stdin, err = cmd.StdinPipe(); err != nil {
			log.Close()
			return nil, err
		}
	}
	if s.Log != "" {
		out.line("# " + strings.Join(argv, " "))
	}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("electorproc: starting %s: %w", s.Name, err)
	}
	var readers sync.WaitGroup
	readers.Go(func() { copyLines(stdout, out, nil, s.Stdout) })
	keep := p.keep
	if s.Log != "" {
		keep = nil // the file has it
	}
	readers.Go(func() { copyLines(stderr, out, keep, s.Stderr) })
	go func() {
		readers.Wait() // Wait must follow the pipes' EOF
		p.err = cmd.Wait()
		log.Close()
		close(p.done)
	}()
	return p, nil
}

// copyLines reads r to its end, a line at a time, and hands each line to
// out, keep and fn (those not nil).
func copyLines(r io.Reader, out *lineWriter, keep, fn func(string)) {
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			line = strings.TrimSuffix(line, "\n")
			out.line(line)
			if keep != nil {
				keep(line)
			}
			if fn != nil {
				fn(line)
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *Proc) keep(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stderr.WriteString(line)
	p.stderr.WriteByte('\n')
}

// lineWriter writes whole lines from several goroutines to one file.
type lineWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lineWriter) line(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = io.WriteString(l.w, s+"\n")
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// Name is the Spec's Name.
func (p *Proc) Name() string { return p.name }

// Pid is the process id; /proc/PID describes the process.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited is closed once the process has ended and its output is read.
func (p *Proc) Exited() <-chan struct{} { return p.done }

// HasExited reports whether Exited is closed.
func (p *Proc) HasExited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err waits for the process to end and returns its exit error (nil for
// status 0).
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// Log returns the process's log so far: the Spec.Log file's contents, or
// else everything the process wrote to stderr.
func (p *Proc) Log() string {
	if p.log != "" {
		b, _ := os.ReadFile(p.log)
		return string(b)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// Tail returns the last n lines of Log, for error messages.
func (p *Proc) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.Log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Signal sends sig to the process. Once it has exited, Signal sends
// nothing and returns an error saying how it ended.
func (p *Proc) Signal(sig os.Signal) error {
	if p.HasExited() {
		return fmt.Errorf("electorproc: %s has exited: %v", p.name, p.err)
	}
	return p.cmd.Process.Signal(sig)
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Proc) Kill() {
	_ = p.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop asks the process to end (SIGCONT, in case it is stopped, then
// SIGTERM), waits up to grace for it, then kills it. It reports whether
// the process ended within grace; Err then says how.
func (p *Proc) Stop(grace time.Duration) bool {
	_ = p.Signal(syscall.SIGCONT)
	_ = p.Signal(syscall.SIGTERM)
	return p.Await(grace)
}

// Await waits up to grace for the process to end, then kills it: Stop
// without the signals, for a caller that has already asked the process to
// end (a second SIGTERM could reach a Go program after its handler is
// gone, while it exits, and kill it). It reports whether the process
// ended within grace; Err then says how.
func (p *Proc) Await(grace time.Duration) bool {
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return true
	case <-timer.C:
		p.Kill()
		return false
	}
}

// StopAll is Stop for several processes at once, with one grace for all of
// them.
func StopAll(grace time.Duration, procs ...*Proc) {
	for _, p := range procs {
		_ = p.Signal(syscall.SIGCONT)
		_ = p.Signal(syscall.SIGTERM)
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	expired := false
	for _, p := range procs {
		if !expired {
			select {
			case <-p.done:
				continue
			case <-timer.C:
				expired = true
			}
		}
		p.Kill()
	}
}

// Tell writes line and a newline to the process's stdin (Spec.Stdin).
func (p *Proc) Tell(line string) error {
	if p.stdin == nil {
		return fmt.Errorf("electorproc: %s has no stdin", p.name)
	}
	_, err := fmt.Fprintln(p.stdin, line)
	return err
}

// CloseStdin closes the process's stdin, if it has one.
func (p *Proc) CloseStdin() {
	if p.stdin != nil {
		p.stdin.Close()
	}
}

// Poll calls cond every interval until it returns true, and returns an
// error naming what if that has not happened within timeout. It is for
// harness code that reports errors, for conditions nothing pushes (an HTTP
// endpoint turning ready); tests with a *testing.T use testify's
// require.Eventually.
func Poll(what string, timeout, interval time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %v", what, timeout)
		}
		time.Sleep(interval)
	}
	return nil
}
