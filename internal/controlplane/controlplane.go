// Package controlplane holds what the programs and tests that use the
// local control plane of hack/controlplane share: reading the env file that
// start.sh writes, and the goroutines a client-go process leaves that a
// leak check must ignore.
package controlplane

import (
	"fmt"
	"os"
	"strings"

	"go.uber.org/goleak"
)

// ReadEnv parses the KEY=value lines of the env file that
// hack/controlplane/start.sh writes (no quoting; a value may contain '='),
// ignoring blank lines and # comments. A line without '=' is an error.
func ReadEnv(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	env := make(map[string]string)
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s: malformed line %q", path, line)
		}
		env[k] = v
	}
	return env, nil
}

// LeakOptions are the goroutines a process that used client-go keeps on
// purpose, for goleak to ignore: idle HTTP connections in client-go's
// process-wide transport cache, and klog's flush daemon.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("golang.org/x/net/http2.(*ClientConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*http2ClientConn).readLoop"),
		goleak.IgnoreAnyFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
	}
}
