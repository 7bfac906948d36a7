// Package electorproc is the one process runner of the project's tests,
// benchmarks and fault rounds. Run starts any process (its output logged,
// its lines handed to the caller, killed with its parent, stopped with a
// grace); Start and Launch run an elector on a free loopback port, learn
// the port from its "serving" log line, and read its metrics. It is not
// for production use.
package electorproc

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Process is an elector process that Start started. Its methods are safe
// for concurrent use.
type Process struct {
	*Proc
	// Addr is the first host:port it serves on (the "serving" line's
	// addr).
	Addr string
	// Addrs is every address of the "serving" line.
	Addrs []string
}

// Start runs the elector binary bin with --listen 127.0.0.1:0 (unless args
// give --listen: the elector's --listen adds up, so args then say every
// address; port 0 picks one port for all) and --log-level debug, then args
// (a flag given again in args wins), and waits up to timeout for it to
// serve. If it exits first or does not serve in time, Start kills it and
// returns an error that includes its log. The caller must end a Process it
// got with Kill or Stop.
func Start(bin string, timeout time.Duration, args ...string) (*Process, error) {
	return Launch(Spec{Name: "elector", Argv: append(append([]string{bin}, defaultArgs(args)...), args...)}, timeout)
}

// StartNofile is Start with the process's descriptor limit (RLIMIT_NOFILE,
// soft and hard) set to nofile, as `ulimit -n` in a shell would.
func StartNofile(bin string, nofile uint64, timeout time.Duration, args ...string) (*Process, error) {
	return Launch(Spec{Name: "elector", Argv: append(append([]string{bin}, defaultArgs(args)...), args...), Nofile: nofile}, timeout)
}

// Launch runs s, an elector whatever its command line, and waits up to
// timeout for its "serving" log line on stderr; s.Stderr, if set, still
// gets every line. If the process exits first or does not serve in time,
// Launch kills it and returns an error that includes its log.
func Launch(s Spec, timeout time.Duration) (*Process, error) {
	serving := make(chan servingLine, 1)
	watch := s.Stderr
	found := false // only the stderr reader touches it
	s.Stderr = func(line string) {
		if !found {
			if sl, ok := parseServing(line); ok {
				found = true
				serving <- sl
			}
		}
		if watch != nil {
			watch(line)
		}
	}
	p, err := Run(s)
	if err != nil {
		return nil, err
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case sl := <-serving:
		return &Process{Proc: p, Addr: sl.Addr, Addrs: sl.Addrs}, nil
	case <-p.Exited():
		return nil, fmt.Errorf("%s exited before serving: %v\n%s", s.Name, p.Err(), p.Log())
	case <-timer.C:
		p.Kill()
		return nil, fmt.Errorf("%s not serving within %v\n%s", s.Name, timeout, p.Log())
	}
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

type servingLine struct {
	Msg, Addr string
	Addrs     []string
}

// parseServing returns the elector's "serving" log line, and false for any
// other line.
func parseServing(line string) (servingLine, bool) {
	var m servingLine
	if json.Unmarshal([]byte(line), &m) != nil || m.Msg != "serving" || m.Addr == "" {
		return servingLine{}, false
	}
	return m, true
}
