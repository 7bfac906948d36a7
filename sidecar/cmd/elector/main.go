// Command elector is mpsync's sidecar: it keeps locks in a coordination
// backend on behalf of the processes of its pod, which talk to it over HTTP
// on localhost:13131 (127.0.0.1 and ::1) with the v1 protocol (the Go SDK) or Metaparticle Sync's legacy
// protocol (the Metaparticle JavaScript, Python, Java and .NET clients).
// PROTOCOL.md documents both; `elector --help` lists the flags.
//
// Exit status: 0 after a clean shutdown on SIGTERM or SIGINT, 1 when it
// cannot serve (address in use, backend fails), 2 for a bad flag or
// environment value.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/clock"
	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/trace"
	"github.com/mpsync/mpsync/kube"
	"github.com/mpsync/mpsync/sidecar/server"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// config is the parsed command line.
type config struct {
	backend       string
	listen        []string // validated; "localhost:P" not yet expanded
	identity      string
	namespace     string
	kubeconfig    string
	kubeQPS       float64 // > 0 and finite as a float32; kubernetes backend only
	kubeBurst     int     // >= 1; kubernetes backend only
	leaseDuration time.Duration
	logFormat     string
	logLevel      zapcore.Level
	debug         bool
	profiling     bool
	clockOffset   time.Duration // fault tests only
	clockRate     float64       // fault tests only
	maxConns      int           // 0: derived from the descriptor limit
	maxStreams    int           // 0: derived from --max-connections or the descriptor limit
	shutdownLimit time.Duration // 0: shutdownBudget of the locks held at SIGTERM
	legacyTTL     time.Duration // tests only; 0 means server.DefaultLegacyTTL
	trace         bool          // benchmarks only: step lines on stdout
}

// usageError is a bad flag or environment value: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// choice is a flag.Value that accepts one of a fixed set of words.
type choice struct {
	val     string
	allowed []string
}

func (c *choice) String() string { return c.val }

func (c *choice) Set(s string) error {
	for _, a := range c.allowed {
		if s == a {
			c.val = s
			return nil
		}
	}
	return fmt.Errorf("want one of %s", strings.Join(c.allowed, ", "))
}

type levelValue struct{ l *zapcore.Level }

func (v levelValue) String() string {
	if v.l == nil {
		return ""
	}
	return v.l.String()
}

func (v levelValue) Set(s string) error {
	if err := v.l.UnmarshalText([]byte(s)); err != nil {
		return errors.New("want debug, info, warn or error")
	}
	return nil
}

// qpsValue is a flag.Value that accepts a rate for client-go's rest.Config
// QPS: a number above zero that stays finite and above zero as a float32.
type qpsValue struct{ f *float64 }

func (v qpsValue) String() string {
	if v.f == nil {
		return ""
	}
	return strconv.FormatFloat(*v.f, 'g', -1, 64)
}

func (v qpsValue) Set(s string) error {
	f, err := strconv.ParseFloat(s, 64)
	if q := float32(f); err != nil || !(q > 0) || math.IsInf(float64(q), 0) {
		return fmt.Errorf("want a finite number above 0 (and below %.2g)", math.MaxFloat32)
	}
	*v.f = f
	return nil
}

// burstValue is a flag.Value that accepts a burst for client-go's
// rest.Config Burst: a whole number, at least 1.
type burstValue struct{ n *int }

func (v burstValue) String() string {
	if v.n == nil {
		return ""
	}
	return strconv.Itoa(*v.n)
}

func (v burstValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return errors.New("want a whole number of requests, at least 1")
	}
	*v.n = n
	return nil
}

// countValue is a flag.Value that accepts a whole number, at least 1.
type countValue struct{ n *int }

func (v countValue) String() string {
	if v.n == nil || *v.n == 0 {
		return ""
	}
	return strconv.Itoa(*v.n)
}

func (v countValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return errors.New("want a whole number, at least 1")
	}
	*v.n = n
	return nil
}

// positiveDuration is a flag.Value that accepts a duration above zero.
type positiveDuration struct{ d *time.Duration }

func (v positiveDuration) String() string {
	if v.d == nil || *v.d == 0 {
		return ""
	}
	return v.d.String()
}

func (v positiveDuration) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return errors.New("want a duration above 0, such as 10s")
	}
	*v.d = d
	return nil
}

// envPrefix prefixes the environment variable of every flag: --lease-duration
// is MPSYNC_LEASE_DURATION.
const envPrefix = "MPSYNC_"

func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags parses args, then takes the flags not given there from their
// environment variables (getenv), so a flag on the command line wins. flag.ErrHelp means --help
// was asked for (the usage has been written to out).
func parseFlags(args []string, getenv func(string) string, out io.Writer) (config, error) {
	hostname, _ := os.Hostname()
	identity := getenv("POD_NAME")
	if identity == "" {
		identity = hostname
	}
	namespace := getenv("POD_NAMESPACE")
	if namespace == "" {
		namespace = "default"
	}

	cfg := config{logLevel: zapcore.InfoLevel, kubeQPS: kube.DefaultQPS, kubeBurst: kube.DefaultBurst}
	listen := &listenValue{addrs: []string{defaultListen}}
	backendFlag := &choice{val: "memory", allowed: []string{"memory", "kubernetes"}}
	logFormat := &choice{val: "json", allowed: []string{"json", "console"}}

	fs := flag.NewFlagSet("elector", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Var(backendFlag, "backend", "`kind` of backend keeping the locks: memory (this process only: for one machine, local development, demos) or kubernetes (coordination.k8s.io Lease objects)")
	fs.Var(listen, "listen", "`address` to serve HTTP on, host:port; give it more than once, or as a comma list, to serve on several. "+
		"localhost means both loopback addresses, 127.0.0.1 and ::1 (where the host has IPv6 loopback). Keep it on loopback so that only the pod talks to its elector. "+
		"Port 0 picks one free port, used on every address; the \"serving\" log line lists them (default "+defaultListen+")")
	fs.StringVar(&cfg.identity, "identity", identity, "this elector's `name`: the holder of locks taken through the legacy protocol; by default $POD_NAME, else the host name")
	fs.StringVar(&cfg.namespace, "namespace", namespace, "Kubernetes `namespace` of the Lease objects; by default $POD_NAMESPACE, else \"default\"")
	fs.StringVar(&cfg.kubeconfig, "kubeconfig", "", "kubeconfig `file` for the kubernetes backend; empty means the in-cluster service account")
	fs.Var(qpsValue{&cfg.kubeQPS}, "kube-qps", "kubernetes backend: the most `requests` per second, sustained, that the elector sends to the API server. "+
		"Renewals need about 3 × locks held / lease duration in seconds (1,000 locks at a 15s lease: 200), plus one request per acquisition and release; "+
		"the elector holds at most 1/4 × this × the lease's validity in seconds (180 locks at 50 and 15s) and refuses more, as unavailable, rather than fall behind on renewals")
	fs.Var(burstValue{&cfg.kubeBurst}, "kube-burst", "kubernetes backend: the most `requests` the elector sends to the API server at once, before --kube-qps paces the rest; "+
		"at least 1 (about twice --kube-qps suits most)")
	fs.DurationVar(&cfg.leaseDuration, "lease-duration", 15*time.Second, "lease `duration` of v1 locks: a holder that stops renewing loses its lock this long after its last renewal; at least "+core.MinLease.String())
	fs.Var(logFormat, "log-format", "log `format` on stderr: json or console (readable)")
	fs.Var(levelValue{&cfg.logLevel}, "log-level", "least `level` logged: debug, info, warn or error")
	fs.BoolVar(&cfg.debug, "debug-endpoints", false, "serve POST /debug/revoke/{name}, which takes a lock from its holder as a real loss would (for conformance tests; never in production)")
	fs.BoolVar(&cfg.profiling, "debug-pprof", false, "serve Go's runtime profiles (net/http/pprof: heap, goroutine, CPU, ...) under GET /debug/pprof/, "+
		"for diagnosis and benchmarks, with the heap sampled every 4 KiB allocated (Go's default: 512 KiB); a profile shows what the process holds in memory, so keep it off where others can reach the listener")
	fs.DurationVar(&cfg.clockOffset, "test-clock-offset", 0, "fault tests only: run the kubernetes backend on a clock this `duration` ahead of the machine's")
	fs.Float64Var(&cfg.clockRate, "test-clock-rate", 1, "fault tests only: run the kubernetes backend on a clock this many times as fast as the machine's (`rate` 0.5 to 2)")
	fs.Var(countValue{&cfg.maxConns}, "max-connections", "the most client `connections` served at once; a few more (a sixteenth, 8 to 256) are kept for one short request each "+
		"(probes, metrics, renew, release, legacy), and past those a connection gets 503. By default every file descriptor the process may open (ulimit -n) "+
		"but 64 for itself and the refusals, less that reserve, at most 32768: 885 at 1,024 descriptors")
	fs.Var(countValue{&cfg.maxStreams}, "max-streams", "the most acquire and watch `streams` open at once, half of them for acquires (held or waiting) and half for watches; "+
		"one more gets 503. Below --max-connections; by default three quarters of it")
	fs.Var(positiveDuration{&cfg.shutdownLimit}, "shutdown-timeout", "the most `time` SIGTERM may take to end every stream and release every lock. The elector allows what the locks it holds need "+
		"(1.5s, and on the kubernetes backend 2s more plus the releases past --kube-burst at --kube-qps), up to this; "+
		"by default what it needs at its capacity (5.1s at the default rate limit and lease). Set terminationGracePeriodSeconds above it")
	fs.DurationVar(&cfg.legacyTTL, "test-legacy-ttl", 0, "tests only: the TTL of locks taken through the legacy protocol, in place of Metaparticle Sync's 30s (`duration`, at least "+core.MinLease.String()+"; 0 means 30s)")
	fs.BoolVar(&cfg.trace, "test-trace", false, "benchmarks only: print a line on stdout, stamped with CLOCK_MONOTONIC, at each step of a lock's handover "+
		"(a release received, a Lease write sent and answered, a watch event, a grant sent); make bench's per-step breakdown reads them")
	fs.Usage = func() {} // run prints a one-line error; --help prints usage below
	fs.VisitAll(func(f *flag.Flag) { f.Usage += " [$" + envName(f.Name) + "]" })

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(out, fs)
			return config{}, err
		}
		return config{}, usagef("%v (see --help)", err)
	}
	// Then the environment, for the flags not given on the command line.
	given := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		name := envName(f.Name)
		v := getenv(name)
		if given[f.Name] || v == "" || envErr != nil {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			envErr = usagef("invalid value %q for %s: %v", v, name, err)
		}
	})
	if envErr != nil {
		return config{}, envErr
	}
	if fs.NArg() > 0 {
		return config{}, usagef("unexpected argument %q (see --help)", fs.Arg(0))
	}
	cfg.backend = backendFlag.val
	cfg.listen = listen.addrs
	cfg.logFormat = logFormat.val
	switch {
	case cfg.leaseDuration < core.MinLease:
		return config{}, usagef("--lease-duration %v is shorter than the minimum %v", cfg.leaseDuration, core.MinLease)
	case cfg.legacyTTL != 0 && cfg.legacyTTL < core.MinLease:
		return config{}, usagef("--test-legacy-ttl %v is shorter than the minimum %v", cfg.legacyTTL, core.MinLease)
	case cfg.identity == "":
		return config{}, usagef("--identity is empty and neither $POD_NAME nor the host name gives one")
	case len(cfg.listen) == 0:
		return config{}, usagef("--listen is empty")
	}
	return cfg, nil
}

// profileRate is runtime.MemProfileRate with --debug-pprof: one heap
// profile sample per this many bytes allocated, on average.
const profileRate = 4096

// Shutdown budget: what SIGTERM allows for telling every stream, releasing
// every lock and closing the backend.
const (
	// shutdownBase covers the streams' last lines, releases that need no
	// waiting, and closing connections.
	shutdownBase = 1500 * time.Millisecond
	// releaseAllowance covers, on the kubernetes backend, the latency of
	// the last releases, and the API server's own pace when the burst sends
	// hundreds at once.
	releaseAllowance = 5 * time.Second
	// paceFactor: the releases get twice the time --kube-qps needs for
	// them. An API server busy with other work takes them slower than the
	// client-side limit allows (1,000 releases at --kube-qps 400 took 8 s,
	// not 2.5 s, on a 2-core machine running the test suite beside it).
	paceFactor = 2
)

// capacity is the most locks the elector holds: kube.MaxLocksFor on the
// kubernetes backend; 0 on the memory backend, whose releases cost nothing.
func capacity(cfg config) int {
	if cfg.backend != "kubernetes" {
		return 0
	}
	return kube.MaxLocksFor(cfg.kubeQPS, cfg.leaseDuration)
}

// shutdownBudget is the time SIGTERM needs with held locks: shutdownBase,
// and on the kubernetes backend, where every release is a request under
// client-go's rate limiter, releaseAllowance plus paceFactor times every
// release paced at --kube-qps. Not only those past --kube-burst: the burst may be spent when
// SIGTERM comes (right after the acquisitions that filled the elector, it
// is). At the default limit (50/s) and capacity (180 locks) that is
// 1.5s + 5s + 2*180/50 s = 13.7s.
func shutdownBudget(cfg config, held int) time.Duration {
	if cfg.backend != "kubernetes" || held == 0 {
		return shutdownBase
	}
	paced := time.Duration(paceFactor * float64(held) / cfg.kubeQPS * float64(time.Second))
	return shutdownBase + releaseAllowance + paced
}

// resolveLimits returns the connection and stream limits of cfg for a
// process that may open nofile descriptors: the flags where given, else
// server.LimitsFor(nofile). Limits that do not fit are a usage error.
func resolveLimits(cfg config, nofile uint64) (server.Limits, error) {
	l, err := server.LimitsFor(nofile)
	if err != nil && cfg.maxConns == 0 {
		return server.Limits{}, usagef("%v", err)
	}
	if cfg.maxConns > 0 {
		l.MaxConnections = cfg.maxConns
		l.MaxStreams = cfg.maxConns * 3 / 4
	}
	if cfg.maxStreams > 0 {
		l.MaxStreams = cfg.maxStreams
	}
	switch {
	case l.MaxStreams < 2:
		return server.Limits{}, usagef("--max-streams %d: want at least 2 (one acquire stream and one watch stream)", l.MaxStreams)
	case l.MaxStreams >= l.MaxConnections:
		return server.Limits{}, usagef("--max-streams %d must be below --max-connections %d, to leave connections for renewals and releases",
			l.MaxStreams, l.MaxConnections)
	case uint64(l.Descriptors()) > nofile:
		return server.Limits{}, usagef("--max-connections %d needs %d file descriptors, and this process may open %d (RLIMIT_NOFILE): "+
			"raise the limit (ulimit -n, or the container runtime's nofile limit) or lower --max-connections",
			l.MaxConnections, l.Descriptors(), nofile)
	}
	return l, nil
}

func usage(out io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(out, `Usage: elector [flags]

The mpsync elector: keeps locks for the processes of its pod and pushes
grants, losses and leader changes to them over HTTP (PROTOCOL.md).
It also speaks Metaparticle Sync's GET/PUT /locks/{name} protocol.

Every flag can also be set by an environment variable, named after it:
--lease-duration is MPSYNC_LEASE_DURATION. A flag on the command line wins.

Flags:
`)
	fs.SetOutput(out)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	fmt.Fprintf(out, `
Endpoints: /v1/... and /locks/{name} (PROTOCOL.md), /healthz, /readyz, /metrics
(and /debug/pprof/ with --debug-pprof).
SIGTERM or SIGINT: every open stream is told, every lock released (within
--shutdown-timeout), exit 0.
`)
}

func newLogger(cfg config, stderr io.Writer) *zap.Logger {
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.TimeKey = "time"
	encCfg.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	encCfg.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	if cfg.logFormat == "console" {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	out := zapcore.Lock(zapcore.AddSync(stderr))
	return zap.New(zapcore.NewCore(enc, out, cfg.logLevel), zap.ErrorOutput(out))
}

// openBackend returns the backend cfg names. Adding one is one case here.
func openBackend(cfg config, log *zap.Logger) (backend.Backend, error) {
	switch cfg.backend {
	case "memory":
		log.Warn("MEMORY BACKEND: locks live in this elector process only, and are gone when it exits or restarts. " +
			"v1 clients (the SDK) of this elector exclude each other; clients of Metaparticle Sync's legacy protocol " +
			"(GET/PUT /locks/{name}) all hold their locks in this elector's identity, so they share them and do NOT " +
			"exclude each other; processes using another elector do NOT exclude these. Use --backend=kubernetes " +
			"for locks between pods or machines.")
		return backend.NewMemory(cfg.leaseDuration)
	case "kubernetes":
		var clk clock.Clock = clock.Real{}
		if cfg.clockOffset != 0 || cfg.clockRate != 1 {
			skewed, err := clock.NewSkewed(cfg.clockOffset, cfg.clockRate)
			if err != nil {
				return nil, usagef("%v", err)
			}
			log.Warn("TEST CLOCK: the backend runs on a skewed clock", zap.Duration("offset", cfg.clockOffset), zap.Float64("rate", cfg.clockRate))
			clk = skewed
		}
		rc, err := restConfig(cfg)
		if err != nil {
			return nil, err
		}
		cs, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client: %w", err)
		}
		return kube.New(kube.Config{
			Client:        cs,
			Namespace:     cfg.namespace,
			Identity:      cfg.identity,
			LeaseDuration: cfg.leaseDuration,
			MaxLocks:      kube.MaxLocksFor(cfg.kubeQPS, cfg.leaseDuration),
			Logger:        log,
			Clock:         clk,
		})
	}
	return nil, usagef("unknown backend %q", cfg.backend)
}

// restConfig is kube.RESTConfig with the client-side rate limit of cfg.
func restConfig(cfg config) (*rest.Config, error) {
	rc, err := kube.RESTConfig(cfg.kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.QPS = float32(cfg.kubeQPS)
	rc.Burst = cfg.kubeBurst
	return rc, nil
}

// run is the whole program; it returns the exit status: 0 after a clean
// shutdown on SIGTERM or SIGINT, 1 when serving or setting up failed, 2
// for a usage error.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "probe" {
		return probe(args[1:], getenv, stderr)
	}
	cfg, err := parseFlags(args, getenv, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "elector: %v\n", err)
		return 2
	}
	nofile, err := server.DescriptorLimit()
	if err != nil {
		fmt.Fprintf(stderr, "elector: %v\n", err)
		return 1
	}
	limits, err := resolveLimits(cfg, nofile)
	if err != nil {
		fmt.Fprintf(stderr, "elector: %v\n", err)
		return 2
	}
	if cfg.profiling {
		// Heap profiles fine enough to tell per-lock costs of a few
		// hundred bytes apart; Go's default samples every 512 KiB.
		runtime.MemProfileRate = profileRate
	}
	log := newLogger(cfg, stderr)
	defer func() { _ = log.Sync() }()
	if cfg.trace {
		trace.Enable(stdout, cfg.identity, monotonic)
		defer trace.Enable(nil, "", nil)
	}

	srv, closeBackend, status := newServer(cfg, limits, log, stderr)
	if srv == nil {
		return status
	}
	lns, err := listenAll(listenAddrs(cfg.listen, log))
	if err != nil {
		closeBackend()
		fmt.Fprintf(stderr, "elector: %v\n", err)
		return 1
	}
	return serve(cfg, srv, lns, log, nofile, limits)
}

// monotonic is CLOCK_MONOTONIC in nanoseconds, the clock of the benchmark
// programs' lines.
func monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// newServer opens the backend and builds the Server on it. On failure it
// returns a nil Server, having said why on stderr, and the exit status;
// closeBackend is for a failure after that.
func newServer(cfg config, limits server.Limits, log *zap.Logger, stderr io.Writer) (srv *server.Server, closeBackend func(), status int) {
	b, err := openBackend(cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "elector: %v\n", err)
		var ue *usageError
		if errors.As(err, &ue) {
			return nil, nil, 2
		}
		return nil, nil, 1
	}
	closeBackend = func() { _ = b.Close(context.Background()) }
	srv, err = server.New(server.Config{
		Backend:   b,
		Identity:  cfg.identity,
		LegacyTTL: cfg.legacyTTL,
		Logger:    log,
		Debug:     cfg.debug,
		Profiling: cfg.profiling,
		Limits:    limits,
	})
	if err != nil {
		closeBackend()
		fmt.Fprintf(stderr, "elector: %v\n", err)
		return nil, nil, 2
	}
	return srv, closeBackend, 0
}

// serve runs the elector until SIGTERM or SIGINT, or until a listener
// fails, then shuts it down; it returns the exit status. One errgroup owns
// every goroutine: a server per listener and the shutdown step, which
// waits for the signal (or the failure: the group's context ends with
// either) and ends the servers; serve returns once all have returned.
func serve(cfg config, srv *server.Server, lns []net.Listener, log *zap.Logger, nofile uint64, limits server.Limits) int {
	signalled, stopSignals := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stopSignals()
	g, ctx := errgroup.WithContext(signalled)
	hs := srv.HTTPServer()
	for _, ln := range lns {
		g.Go(func() error {
			err := hs.Serve(srv.Listener(ln))
			if errors.Is(err, http.ErrServerClosed) {
				return nil // the shutdown step closed it
			}
			log.Error("serving failed", zap.String("addr", ln.Addr().String()), zap.Error(err))
			return err
		})
	}
	logServing(cfg, lns, log, nofile, limits)
	g.Go(func() error {
		<-ctx.Done()
		stopSignals() // a second signal kills at once
		if signalled.Err() != nil {
			log.Info("signal received; shutting down")
		}
		shutdown(cfg, srv, hs, log)
		return nil
	})
	if err := g.Wait(); err != nil {
		return 1
	}
	return 0
}

// logServing writes the "serving" line, which says where the elector
// listens (tests and scripts learn the port from it) and with what limits.
func logServing(cfg config, lns []net.Listener, log *zap.Logger, nofile uint64, limits server.Limits) {
	var addrs []string
	for _, ln := range lns {
		addrs = append(addrs, ln.Addr().String())
	}
	log.Info("serving",
		zap.String("addr", addrs[0]),
		zap.Strings("addrs", addrs),
		zap.String("backend", cfg.backend),
		zap.String("identity", cfg.identity),
		zap.String("namespace", cfg.namespace),
		zap.Duration("leaseDuration", cfg.leaseDuration),
		zap.Bool("debugEndpoints", cfg.debug),
		zap.Bool("debugPprof", cfg.profiling),
		zap.Uint64("descriptorLimit", nofile),
		zap.Int("maxConnections", limits.MaxConnections),
		zap.Int("maxStreams", limits.MaxStreams),
		zap.Duration("shutdownTimeout", cfg.shutdownLimit),
		zap.Duration("shutdownBudgetAtCapacity", shutdownBudget(cfg, capacity(cfg))),
		zap.Int("pid", os.Getpid()))
}

// shutdown stops accepting connections and waits for open ones to finish,
// while the Server ends its streams and releases every lock, all within
// the shutdown budget; it then closes the connections still open.
func shutdown(cfg config, srv *server.Server, hs *http.Server, log *zap.Logger) {
	held := srv.Held()
	budget := cfg.shutdownLimit
	if budget == 0 {
		budget = shutdownBudget(cfg, held)
	}
	log.Info("releasing every lock", zap.Int("held", held), zap.Duration("budget", budget))
	sctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	var g errgroup.Group
	g.Go(func() error { return hs.Shutdown(sctx) })
	g.Go(func() error {
		if err := srv.Shutdown(sctx); err != nil {
			log.Error("shutdown", zap.Error(err))
		}
		return nil
	})
	if err := g.Wait(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("closing connections still open at the deadline", zap.Error(err))
		_ = hs.Close()
	}
	log.Info("stopped")
}

// probe is `elector probe [healthz|readyz]`: it asks the elector that
// --listen (or $MPSYNC_LISTEN) names for that endpoint and exits 0 on 200,
// 1 otherwise. --listen means what it means to the elector, by default
// localhost:13131: probe tries each address the elector would bind in turn
// (127.0.0.1, then ::1 where the host has it), an unspecified host through
// both loopback addresses, and succeeds at the first that answers 200.
// Kubernetes exec probes use it, so that the elector can stay on the pod's
// loopback, where the kubelet's HTTP probes cannot reach.
func probe(args []string, getenv func(string) string, stderr io.Writer) int {
	fs := flag.NewFlagSet("elector probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := &listenValue{addrs: []string{defaultListen}}
	fs.Var(listen, "listen", "`address` the elector serves on, as the elector's --listen [$MPSYNC_LISTEN]")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if v := getenv(envName("listen")); v != "" && !listen.set {
		if err := listen.Set(v); err != nil {
			fmt.Fprintf(stderr, "elector probe: $MPSYNC_LISTEN: %v\n", err)
			return 2
		}
	}
	endpoint := "readyz"
	switch fs.NArg() {
	case 0:
	case 1:
		endpoint = fs.Arg(0)
	default:
		fmt.Fprintln(stderr, "elector probe: at most one endpoint: healthz or readyz")
		return 2
	}
	if endpoint != "healthz" && endpoint != "readyz" {
		fmt.Fprintf(stderr, "elector probe: unknown endpoint %q: healthz or readyz\n", endpoint)
		return 2
	}
	var errs []error
	for _, addr := range probeAddrs(listen.addrs, hasIPv6Loopback()) {
		err := probeOnce(addr, endpoint)
		if err == nil {
			return 0
		}
		errs = append(errs, err)
	}
	fmt.Fprintf(stderr, "elector probe: %v\n", errors.Join(errs...))
	return 1
}
