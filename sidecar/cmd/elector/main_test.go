package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mpsync/mpsync/internal/electorproc"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap/zapcore"

	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/transport"
	"github.com/mpsync/mpsync/kube"
	"github.com/mpsync/mpsync/sidecar/server"
)

// With $runAsElector set, the test binary is the elector: tests start it as
// a real process with real signals, without a separate build.
const runAsElector = "MPSYNC_ELECTOR_TEST_MAIN"

// waitFor bounds every wait for something that should happen promptly.
const waitFor = 10 * time.Second

func TestMain(m *testing.M) {
	if os.Getenv(runAsElector) != "" {
		os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m)
}

func envOf(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestParseFlags(t *testing.T) {
	host, _ := os.Hostname()
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want func(c config) bool
	}{
		{"defaults", nil, nil, func(c config) bool {
			return c.backend == "memory" && slices.Equal(c.listen, []string{"localhost:13131"}) && c.identity == host &&
				c.namespace == "default" && c.leaseDuration == 15*time.Second && c.logFormat == "json" &&
				c.logLevel == zapcore.InfoLevel && !c.debug && c.kubeconfig == "" &&
				c.kubeQPS == kube.DefaultQPS && c.kubeBurst == kube.DefaultBurst
		}},
		{"pod env", nil, map[string]string{"POD_NAME": "web-7", "POD_NAMESPACE": "prod"}, func(c config) bool {
			return c.identity == "web-7" && c.namespace == "prod"
		}},
		{"MPSYNC env", nil, map[string]string{
			"MPSYNC_LISTEN": "127.0.0.1:9", "MPSYNC_IDENTITY": "me", "MPSYNC_LEASE_DURATION": "3s",
			"MPSYNC_LOG_FORMAT": "console", "MPSYNC_LOG_LEVEL": "debug", "MPSYNC_DEBUG_ENDPOINTS": "true",
			"MPSYNC_KUBECONFIG": "/k", "MPSYNC_NAMESPACE": "ns", "POD_NAME": "ignored",
			"MPSYNC_KUBE_QPS": "250.5", "MPSYNC_KUBE_BURST": "500",
		}, func(c config) bool {
			return slices.Equal(c.listen, []string{"127.0.0.1:9"}) && c.identity == "me" && c.leaseDuration == 3*time.Second &&
				c.logFormat == "console" && c.logLevel == zapcore.DebugLevel && c.debug && c.kubeconfig == "/k" && c.namespace == "ns" &&
				c.kubeQPS == 250.5 && c.kubeBurst == 500
		}},
		{"flag wins over env", []string{"--listen", "127.0.0.1:8", "--lease-duration=2s"},
			map[string]string{"MPSYNC_LISTEN": "127.0.0.1:9", "MPSYNC_LEASE_DURATION": "not looked at"},
			func(c config) bool {
				return slices.Equal(c.listen, []string{"127.0.0.1:8"}) && c.leaseDuration == 2*time.Second
			}},
		{"listen twice", []string{"--listen", "127.0.0.1:8", "--listen=[::1]:8"}, nil,
			func(c config) bool { return slices.Equal(c.listen, []string{"127.0.0.1:8", "[::1]:8"}) }},
		{"listen as a comma list", []string{"--listen", "127.0.0.1:0, [::1]:0,localhost:7"}, nil,
			func(c config) bool { return slices.Equal(c.listen, []string{"127.0.0.1:0", "[::1]:0", "localhost:7"}) }},
		{"listen list from env", nil, map[string]string{"MPSYNC_LISTEN": "127.0.0.1:9,[::1]:9"},
			func(c config) bool { return slices.Equal(c.listen, []string{"127.0.0.1:9", "[::1]:9"}) }},
		{"listen: no port", []string{"--listen", "127.0.0.1"}, nil, nil},
		{"listen: bad port", []string{"--listen", "127.0.0.1:http"}, nil, nil},
		{"listen: port out of range", []string{"--listen", "127.0.0.1:70000"}, nil, nil},
		{"listen: a host name", []string{"--listen", "example.com:13131"}, nil, nil},
		{"listen: empty item", []string{"--listen", "127.0.0.1:1,"}, nil, nil},
		{"listen: garbage in the second", []string{"--listen", "127.0.0.1:1", "--listen", "::1:2"}, nil, nil},
		{"listen: garbage in env", nil, map[string]string{"MPSYNC_LISTEN": "127.0.0.1:1,nowhere"}, nil},
		{"rate limit flags", []string{"--backend=kubernetes", "--kube-qps", "400", "--kube-burst=800"}, nil,
			func(c config) bool { return c.kubeQPS == 400 && c.kubeBurst == 800 }},
		{"small rate limit", []string{"--kube-qps=0.5", "--kube-burst=1"}, nil,
			func(c config) bool { return c.kubeQPS == 0.5 && c.kubeBurst == 1 }},
		{"rate limit flags win over env", []string{"--kube-qps=400", "--kube-burst", "800"},
			map[string]string{"MPSYNC_KUBE_QPS": "not looked at", "MPSYNC_KUBE_BURST": "7"},
			func(c config) bool { return c.kubeQPS == 400 && c.kubeBurst == 800 }},
		{"rate limit with the memory backend", []string{"--backend=memory", "--kube-qps=1", "--kube-burst=2"}, nil,
			func(c config) bool { return c.backend == "memory" && c.kubeQPS == 1 && c.kubeBurst == 2 }},
		{"bad env", nil, map[string]string{"MPSYNC_LEASE_DURATION": "soon"}, nil},
		{"env below minimum", nil, map[string]string{"MPSYNC_LEASE_DURATION": "10ms"}, nil},
		{"kubernetes by name", []string{"--backend", "kubernetes"}, nil, func(c config) bool { return c.backend == "kubernetes" }},
		{"minimum lease", []string{"--lease-duration", core.MinLease.String()}, nil, func(c config) bool { return c.leaseDuration == core.MinLease }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseFlags(tt.args, envOf(tt.env), io.Discard)
			if tt.want == nil {
				var ue *usageError
				if !errors.As(err, &ue) {
					t.Errorf("parseFlags: %v, want a usage error", err)
				}
				return
			}
			require.NoError(t, err, "parseFlags")
			if !tt.want(c) {
				t.Errorf("config %+v", c)
			}
		})
	}
}

func TestRunExitStatus(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	tests := []struct {
		name   string
		args   []string
		env    map[string]string
		status int
		stderr string // what the one line must mention
	}{
		{"help", []string{"--help"}, nil, 0, ""},
		{"unknown flag", []string{"--bogus"}, nil, 2, "-bogus"},
		{"extra argument", []string{"serve"}, nil, 2, "serve"},
		{"bad backend", []string{"--backend", "etcd"}, nil, 2, "memory, kubernetes"},
		{"kubernetes outside a pod without a kubeconfig", []string{"--backend", "kubernetes"}, nil, 1, "give a kubeconfig outside a pod"},
		{"kubernetes with a missing kubeconfig", []string{"--backend", "kubernetes", "--kubeconfig", "/nonexistent/kubeconfig"}, nil, 1, "/nonexistent/kubeconfig"},
		{"test clock rate out of range", []string{"--backend", "kubernetes", "--test-clock-rate", "3"}, nil, 2, "outside [0.5, 2]"},
		{"short lease", []string{"--lease-duration", "500ms"}, nil, 2, "--lease-duration"},
		{"bad duration", []string{"--lease-duration", "soon"}, nil, 2, "lease-duration"},
		{"bad log format", []string{"--log-format", "xml"}, nil, 2, "json, console"},
		{"bad log level", []string{"--log-level", "loud"}, nil, 2, "log-level"},
		{"bad listen", []string{"--listen", "nowhere"}, nil, 2, `invalid value "nowhere" for flag -listen`},
		{"short legacy TTL", []string{"--test-legacy-ttl", "10ms"}, nil, 2, "--test-legacy-ttl"},
		{"bad second listen", []string{"--listen", "127.0.0.1:0,[::1]:x"}, nil, 2, `invalid value "127.0.0.1:0,[::1]:x" for flag -listen: "[::1]:x": port "x" is not a number`},
		{"bad env", nil, map[string]string{"MPSYNC_DEBUG_ENDPOINTS": "maybe"}, 2, "MPSYNC_DEBUG_ENDPOINTS"},
		{"empty identity", []string{"--identity", ""}, nil, 2, "--identity"},
		{"kube-qps not a number", []string{"--kube-qps=abc"}, nil, 2, `invalid value "abc" for flag -kube-qps`},
		{"kube-qps zero", []string{"--kube-qps=0"}, nil, 2, `invalid value "0" for flag -kube-qps`},
		{"kube-qps negative", []string{"--kube-qps=-1"}, nil, 2, `invalid value "-1" for flag -kube-qps`},
		{"kube-qps NaN", []string{"--kube-qps=NaN"}, nil, 2, `invalid value "NaN" for flag -kube-qps`},
		{"kube-qps Inf", []string{"--kube-qps=Inf"}, nil, 2, `invalid value "Inf" for flag -kube-qps`},
		{"kube-qps infinite as a float32", []string{"--kube-qps=1e39"}, nil, 2, `invalid value "1e39" for flag -kube-qps`},
		{"kube-qps zero as a float32", []string{"--kube-qps=1e-50"}, nil, 2, `invalid value "1e-50" for flag -kube-qps`},
		{"kube-burst zero", []string{"--kube-burst=0"}, nil, 2, `invalid value "0" for flag -kube-burst`},
		{"kube-burst negative", []string{"--kube-burst=-3"}, nil, 2, `invalid value "-3" for flag -kube-burst`},
		{"kube-burst not a number", []string{"--kube-burst=x"}, nil, 2, `invalid value "x" for flag -kube-burst`},
		{"kube-burst fraction", []string{"--kube-burst=1.5"}, nil, 2, `invalid value "1.5" for flag -kube-burst`},
		{"env kube-qps not a number", nil, map[string]string{"MPSYNC_KUBE_QPS": "abc"}, 2, `invalid value "abc" for MPSYNC_KUBE_QPS`},
		{"env kube-qps zero", nil, map[string]string{"MPSYNC_KUBE_QPS": "0"}, 2, `invalid value "0" for MPSYNC_KUBE_QPS`},
		{"env kube-qps negative", nil, map[string]string{"MPSYNC_KUBE_QPS": "-1"}, 2, `invalid value "-1" for MPSYNC_KUBE_QPS`},
		{"env kube-qps NaN", nil, map[string]string{"MPSYNC_KUBE_QPS": "NaN"}, 2, `invalid value "NaN" for MPSYNC_KUBE_QPS`},
		{"env kube-qps Inf", nil, map[string]string{"MPSYNC_KUBE_QPS": "Inf"}, 2, `invalid value "Inf" for MPSYNC_KUBE_QPS`},
		{"env kube-burst zero", nil, map[string]string{"MPSYNC_KUBE_BURST": "0"}, 2, `invalid value "0" for MPSYNC_KUBE_BURST`},
		{"env kube-burst negative", nil, map[string]string{"MPSYNC_KUBE_BURST": "-3"}, 2, `invalid value "-3" for MPSYNC_KUBE_BURST`},
		{"env kube-burst not a number", nil, map[string]string{"MPSYNC_KUBE_BURST": "x"}, 2, `invalid value "x" for MPSYNC_KUBE_BURST`},
		{"max-connections zero", []string{"--max-connections=0"}, nil, 2, `invalid value "0" for flag -max-connections`},
		{"max-connections not a number", []string{"--max-connections=lots"}, nil, 2, `invalid value "lots" for flag -max-connections`},
		{"max-streams negative", []string{"--max-streams=-1"}, nil, 2, `invalid value "-1" for flag -max-streams`},
		{"max-streams fraction", []string{"--max-streams=2.5"}, nil, 2, `invalid value "2.5" for flag -max-streams`},
		{"max-streams not below max-connections", []string{"--max-connections=10", "--max-streams=10"}, nil, 2, "must be below --max-connections 10"},
		{"max-streams one", []string{"--max-streams=1"}, nil, 2, "want at least 2"},
		{"max-connections past the descriptor limit", []string{"--max-connections=100000000"}, nil, 2, "ulimit -n"},
		{"env max-streams garbage", nil, map[string]string{"MPSYNC_MAX_STREAMS": "x"}, 2, `invalid value "x" for MPSYNC_MAX_STREAMS`},
		{"shutdown-timeout zero", []string{"--shutdown-timeout=0s"}, nil, 2, `invalid value "0s" for flag -shutdown-timeout`},
		{"shutdown-timeout negative", []string{"--shutdown-timeout=-1s"}, nil, 2, `invalid value "-1s" for flag -shutdown-timeout`},
		{"shutdown-timeout not a duration", []string{"--shutdown-timeout=soon"}, nil, 2, `invalid value "soon" for flag -shutdown-timeout`},
		{"env shutdown-timeout garbage", nil, map[string]string{"MPSYNC_SHUTDOWN_TIMEOUT": "5"}, 2, `invalid value "5" for MPSYNC_SHUTDOWN_TIMEOUT`},
		{"address in use", []string{"--listen", busy.Addr().String()}, nil, 1, "address already in use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			status := run(tt.args, envOf(tt.env), &stdout, &stderr)
			if status != tt.status {
				t.Errorf("status %d, want %d; stderr %s", status, tt.status, stderr.String())
			}
			if tt.status == 2 {
				lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
				if len(lines) != 1 || !strings.HasPrefix(lines[0], "elector: ") {
					t.Errorf("stderr %q, want one line starting with \"elector: \"", stderr.String())
				}
			}
			if !strings.Contains(stderr.String(), tt.stderr) {
				t.Errorf("stderr %q, want it to mention %q", stderr.String(), tt.stderr)
			}
			if tt.name == "help" {
				for _, f := range []string{"--lease-duration is MPSYNC_LEASE_DURATION", "-backend", "-listen", "-identity", "-namespace",
					"-kubeconfig", "-lease-duration", "-log-format", "-log-level", "-debug-endpoints", "[$MPSYNC_LISTEN]",
					"-kube-qps", "-kube-burst", "[$MPSYNC_KUBE_QPS]", "[$MPSYNC_KUBE_BURST]",
					"-max-connections", "-max-streams", "-shutdown-timeout", "[$MPSYNC_MAX_STREAMS]"} {
					if !strings.Contains(stdout.String(), f) {
						t.Errorf("--help does not mention %q", f)
					}
				}
			}
		})
	}
}

func TestResolveLimits(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		nofile uint64
		want   server.Limits // zero: a usage error
	}{
		{"derived", nil, 1024, server.Limits{MaxConnections: 885, MaxStreams: 663}},
		{"derived at 256", nil, 256, server.Limits{MaxConnections: 165, MaxStreams: 123}},
		{"connections given", []string{"--max-connections=100"}, 1024, server.Limits{MaxConnections: 100, MaxStreams: 75}},
		{"both given", []string{"--max-connections=100", "--max-streams=10"}, 1024, server.Limits{MaxConnections: 100, MaxStreams: 10}},
		{"streams given", []string{"--max-streams=500"}, 1024, server.Limits{MaxConnections: 885, MaxStreams: 500}},
		{"streams past the derived connections", []string{"--max-streams=900"}, 1024, server.Limits{}},
		{"connections past the limit", []string{"--max-connections=1000"}, 1024, server.Limits{}},
		{"limit too low to derive", nil, 64, server.Limits{}},
		{"limit too low but connections given", []string{"--max-connections=10", "--max-streams=4"}, 128, server.Limits{MaxConnections: 10, MaxStreams: 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseFlags(tt.args, envOf(nil), io.Discard)
			require.NoError(t, err)
			l, err := resolveLimits(cfg, tt.nofile)
			if tt.want == (server.Limits{}) {
				var ue *usageError
				require.ErrorAs(t, err, &ue)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, l)
		})
	}
}

func TestShutdownBudget(t *testing.T) {
	tests := []struct {
		name string
		args []string
		held int
		want time.Duration
	}{
		{"memory", nil, 10000, 1500 * time.Millisecond},
		{"kubernetes, nothing held", []string{"--backend=kubernetes"}, 0, 1500 * time.Millisecond},
		{"kubernetes, 100 locks", []string{"--backend=kubernetes"}, 100, 10500 * time.Millisecond},
		{"kubernetes at capacity", []string{"--backend=kubernetes"}, 180, 13700 * time.Millisecond},
		{"1000 at 400/s", []string{"--backend=kubernetes", "--kube-qps=400", "--kube-burst=800"}, 1000, 11500 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseFlags(tt.args, envOf(nil), io.Discard)
			require.NoError(t, err)
			assert.Equal(t, tt.want, shutdownBudget(cfg, tt.held))
		})
	}
	// Without --shutdown-timeout the budget is that of the locks held.
	cfg, err := parseFlags([]string{"--backend=kubernetes"}, envOf(nil), io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 180, capacity(cfg))
	assert.Zero(t, cfg.shutdownLimit)
	cfg, err = parseFlags([]string{"--shutdown-timeout=30s"}, envOf(nil), io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 30*time.Second, cfg.shutdownLimit)
}

// TestRESTConfigRateLimit checks that the kubernetes backend's client gets
// the rate limit of the flags, and RESTConfig's defaults without them.
func TestRESTConfigRateLimit(t *testing.T) {
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1"}
users:
- name: u
  user: {token: t}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		args      []string
		wantQPS   float32
		wantBurst int
	}{
		{"defaults", nil, kube.DefaultQPS, kube.DefaultBurst},
		{"flags", []string{"--kube-qps=333.5", "--kube-burst=700"}, 333.5, 700},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseFlags(append([]string{"--backend=kubernetes", "--kubeconfig", kubeconfig}, tt.args...), envOf(nil), io.Discard)
			require.NoError(t, err, "parseFlags")
			rc, err := restConfig(cfg)
			require.NoError(t, err, "restConfig")
			if rc.QPS != tt.wantQPS || rc.Burst != tt.wantBurst {
				t.Errorf("QPS %v, Burst %d; want %v, %d", rc.QPS, rc.Burst, tt.wantQPS, tt.wantBurst)
			}
		})
	}
}

// proc is an elector process: this test binary with $runAsElector set,
// run by the project's process runner.
type proc struct {
	*electorproc.Process
	addr  string
	addrs []string // every address of the "serving" line
}

func (p *proc) log() string { return p.Log() }

func startElector(t *testing.T, args ...string) *proc {
	t.Helper()
	base := []string{"--identity", "pod-a"}
	if !slices.Contains(args, "--listen") {
		base = append(base, "--listen", "127.0.0.1:0")
	}
	ep, err := electorproc.Launch(electorproc.Spec{
		Name: "elector",
		Argv: append(append([]string{os.Args[0]}, base...), args...),
		Env:  []string{runAsElector + "=1"},
	}, waitFor)
	require.NoError(t, err)
	t.Cleanup(func() {
		ep.Kill()
		if t.Failed() {
			t.Logf("elector log:\n%s", ep.Log())
		}
	})
	return &proc{Process: ep, addr: ep.Addr, addrs: ep.Addrs}
}

func TestMemoryWarning(t *testing.T) {
	p := startElector(t)
	var m struct{ Level, Msg string }
	first, _, _ := strings.Cut(p.log(), "\n")
	if err := json.Unmarshal([]byte(first), &m); err != nil || m.Level != "warn" || !strings.Contains(m.Msg, "MEMORY BACKEND") {
		t.Errorf("first log line %q, want a JSON warning about the memory backend", first)
	}
}

// TestMetaparticleJavaScriptClient runs a Node.js client that makes exactly the
// Metaparticle Sync JavaScript client's calls against a real elector, next to a v1
// client of the same lock.
func TestMetaparticleJavaScriptClient(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not on PATH")
	}
	p := startElector(t, "--debug-endpoints")
	c, err := transport.New(p.addr)
	require.NoError(t, err)
	defer c.CloseIdleConnections()

	js := startNode(t, node, p.addr, "shared")
	js.want(t, "GET 404", "PUT 200", "ACQUIRED")
	// The legacy holder (the elector's identity) excludes v1 clients.
	if _, err := c.Acquire(context.Background(), "shared", "web-1", false); !errors.Is(err, core.ErrLocked) {
		t.Fatalf("v1 Acquire of a legacy-held lock: %v, want ErrLocked", err)
	}
	// It renews: GET 200, PUT 200, again and again.
	js.want(t, "GET 200", "PUT 200", "RENEWED", "GET 200", "PUT 200", "RENEWED")

	// The lease is lost (as if the elector had been unable to renew it); a
	// v1 client takes the lock; the JS client's next renewal gets GET 200
	// (someone holds it) and PUT 409, and reports the loss.
	got := make(chan *transport.Lease, 1)
	go func() {
		l, err := c.Acquire(context.Background(), "shared", "web-1", true)
		assert.NoError(t, err, "v1 Acquire")
		got <- l
	}()
	post(t, p.addr, "/debug/revoke/shared")
	l := <-got
	if l == nil {
		t.FailNow()
	}
	js.wantEventually(t, "PUT 409", "LOST")
	js.wantExit(t)

	// While v1 holds it a new JS client waits (GET 200, PUT 409); once v1
	// releases, it gets the lock (GET 404, PUT 200).
	js2 := startNode(t, node, p.addr, "shared")
	js2.want(t, "GET 200", "PUT 409")
	require.NoError(t, l.Release(context.Background()))
	js2.wantEventually(t, "GET 404", "PUT 200", "ACQUIRED")
}

type nodeProc struct {
	*electorproc.Proc
	lines chan string // closed once it has exited
}

// startNode runs testdata/mplock.js with a 100 ms interval in place of
// Metaparticle Sync's 10 s.
func startNode(t *testing.T, node, addr, name string) *nodeProc {
	t.Helper()
	n := &nodeProc{lines: make(chan string, 1024)}
	p, err := electorproc.Run(electorproc.Spec{
		Name:   "node client",
		Argv:   []string{node, "testdata/mplock.js", "http://" + addr, name, "100"},
		Stdout: func(l string) { n.lines <- l },
		Stderr: func(l string) { t.Log("node: " + l) },
	})
	require.NoError(t, err)
	n.Proc = p
	go func() { <-p.Exited(); close(n.lines) }()
	t.Cleanup(func() {
		p.Kill()
		for range n.lines {
		}
	})
	return n
}

func (n *nodeProc) next(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-n.lines:
		if !ok {
			t.Fatal("the node client exited")
		}
		return l
	case <-time.After(waitFor):
		t.Fatal("the node client said nothing")
	}
	return ""
}

// want checks the next lines.
func (n *nodeProc) want(t *testing.T, lines ...string) {
	t.Helper()
	for _, w := range lines {
		if got := n.next(t); got != w {
			t.Fatalf("node client said %q, want %q", got, w)
		}
	}
}

// wantEventually skips lines until the first of lines, then checks the rest.
func (n *nodeProc) wantEventually(t *testing.T, lines ...string) {
	t.Helper()
	for n.next(t) != lines[0] {
	}
	n.want(t, lines[1:]...)
}

func (n *nodeProc) wantExit(t *testing.T) {
	t.Helper()
	for range n.lines {
	}
	select {
	case <-n.Exited():
		assert.NoError(t, n.Err(), "node client's exit")
	case <-time.After(waitFor):
		t.Fatal("node client did not exit")
	}
}

func post(t *testing.T, addr, path string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, _ = io.WriteString(c, "POST "+path+" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	status, _ := bufio.NewReader(c).ReadString('\n')
	if !strings.Contains(status, " 200 ") {
		t.Fatalf("POST %s: %q", path, status)
	}
}

func TestProbe(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" && r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	_, port, _ := net.SplitHostPort(addr)
	noEnv := func(string) string { return "" }
	tests := []struct {
		name   string
		args   []string
		env    func(string) string
		status int
		want   int
	}{
		{"ready", []string{"probe", "--listen", addr}, noEnv, 200, 0},
		{"healthz", []string{"probe", "--listen", addr, "healthz"}, noEnv, 200, 0},
		{"any address means loopback", []string{"probe", "--listen", "0.0.0.0:" + port}, noEnv, 200, 0},
		{"from the environment", []string{"probe"}, func(k string) string {
			if k == "MPSYNC_LISTEN" {
				return addr
			}
			return ""
		}, 200, 0},
		{"not ready", []string{"probe", "--listen", addr}, noEnv, 503, 1},
		{"nobody listening", []string{"probe", "--listen", "127.0.0.1:1"}, noEnv, 200, 1},
		{"unknown endpoint", []string{"probe", "--listen", addr, "metrics"}, noEnv, 200, 2},
		{"two endpoints", []string{"probe", "--listen", addr, "readyz", "healthz"}, noEnv, 200, 2},
		{"bad address", []string{"probe", "--listen", "nonsense"}, noEnv, 200, 2},
		{"bad flag", []string{"probe", "--nope"}, noEnv, 200, 2},
		{"garbage in a list", []string{"probe", "--listen", addr + ",nowhere"}, noEnv, 200, 2},
		{"garbage in the environment", []string{"probe"}, envOf(map[string]string{"MPSYNC_LISTEN": "nowhere"}), 200, 2},
		{"the second of a list answers", []string{"probe", "--listen", "127.0.0.1:1," + addr}, noEnv, 200, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status = tt.status
			var stderr strings.Builder
			if got := run(tt.args, tt.env, io.Discard, &stderr); got != tt.want {
				t.Errorf("run(%q) = %d, want %d; stderr: %s", tt.args, got, tt.want, stderr.String())
			}
		})
	}
}

// dialOnly is an HTTP client whose every connection goes to ip (whatever
// the URL's host), over "tcp4" or "tcp6" only: a client where localhost
// resolves to that one loopback address and that does not fall back to the
// other.
func dialOnly(ip string) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	network := "tcp4"
	if strings.Contains(ip, ":") {
		network = "tcp6"
	}
	return &http.Client{Timeout: waitFor, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			_, port, _ := net.SplitHostPort(addr)
			return d.DialContext(ctx, network, net.JoinHostPort(ip, port))
		},
	}}
}

// TestServesBothLoopbacks: with --listen localhost:0 (the default's form,
// on a free port) the elector serves one port on 127.0.0.1 and on ::1, the
// "serving" line lists both, and a client that can only reach ::1 and one
// that can only reach 127.0.0.1 are both served, legacy PUTs included.
func TestServesBothLoopbacks(t *testing.T) {
	if !hasIPv6Loopback() {
		t.Skip("this host has no IPv6 loopback address") // never the case on the CI machine, which has ::1
	}
	p := startElector(t, "--listen", "localhost:0")
	if len(p.addrs) != 2 {
		t.Fatalf("serving on %q, want 127.0.0.1 and ::1", p.addrs)
	}
	_, port, _ := net.SplitHostPort(p.addrs[0])
	for i, want := range []string{"127.0.0.1:" + port, "[::1]:" + port} {
		if p.addrs[i] != want {
			t.Errorf("address %d: %q, want %q (one port on both)", i, p.addrs[i], want)
		}
	}
	for _, c := range []struct{ network, host string }{{"tcp6", "[::1]"}, {"tcp4", "127.0.0.1"}} {
		hc := dialOnly(strings.Trim(c.host, "[]"))
		// The URL says localhost, as Metaparticle Sync's clients say it.
		url := "http://localhost:" + port + "/locks/shared"
		req, _ := http.NewRequest(http.MethodPut, url, nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s only: PUT %s: %v", c.network, url, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s only: PUT %s = %s, want 200", c.network, url, resp.Status)
		}
		if got := run([]string{"probe", "--listen", c.host + ":" + port}, envOf(nil), io.Discard, io.Discard); got != 0 {
			t.Errorf("probe of %s:%s = %d, want 0", c.host, port, got)
		}
	}
}

// TestProbeFallsBackToIPv6: an elector that only ::1 serves passes the
// probe of the default form localhost:PORT, which tries 127.0.0.1 first.
func TestProbeFallsBackToIPv6(t *testing.T) {
	if !hasIPv6Loopback() {
		t.Skip("this host has no IPv6 loopback address")
	}
	ln, err := net.Listen("tcp6", "[::1]:0")
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	srv.Listener = ln
	srv.Start()
	defer srv.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	var stderr strings.Builder
	if got := run([]string{"probe", "--listen", "localhost:" + port}, envOf(nil), io.Discard, &stderr); got != 0 {
		t.Errorf("probe localhost:%s with only ::1 serving = %d, want 0; %s", port, got, stderr.String())
	}
}

func TestExpandListen(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		ipv6 bool
		want []string
	}{
		{"localhost with IPv6", []string{"localhost:13131"}, true, []string{"127.0.0.1:13131", "[::1]:13131"}},
		{"localhost without IPv6", []string{"localhost:13131"}, false, []string{"127.0.0.1:13131"}},
		{"literals kept, duplicates dropped", []string{"127.0.0.1:1", "localhost:1", "[::1]:2"}, true, []string{"127.0.0.1:1", "[::1]:1", "[::1]:2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := expandListen(tt.in, tt.ipv6); !slices.Equal(got, tt.want) {
				t.Errorf("expandListen(%q, %v) = %q, want %q", tt.in, tt.ipv6, got, tt.want)
			}
		})
	}
}
