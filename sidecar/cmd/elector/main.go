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
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/mpsync/mpsync/internal/clock"
	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/sidecar/backend"
	"github.com/mpsync/mpsync/sidecar/kube"
	"github.com/mpsync/mpsync/sidecar/server"
)

// shutdownTimeout bounds the whole shutdown: streams told, locks released,
// backend closed, connections closed.
const shutdownTimeout = 1500 * time.Millisecond

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
	clockOffset   time.Duration // fault tests only
	clockRate     float64       // fault tests only
	legacyTTL     time.Duration // tests only; 0 means server.DefaultLegacyTTL
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
	fs.DurationVar(&cfg.clockOffset, "test-clock-offset", 0, "fault tests only: run the kubernetes backend on a clock this `duration` ahead of the machine's")
	fs.Float64Var(&cfg.clockRate, "test-clock-rate", 1, "fault tests only: run the kubernetes backend on a clock this many times as fast as the machine's (`rate` 0.5 to 2)")
	fs.DurationVar(&cfg.legacyTTL, "test-legacy-ttl", 0, "tests only: the TTL of locks taken through the legacy protocol, in place of Metaparticle Sync's 30s (`duration`, at least "+core.MinLease.String()+"; 0 means 30s)")
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
Endpoints: /v1/... and /locks/{name} (PROTOCOL.md), /healthz, /readyz, /metrics.
SIGTERM or SIGINT: every open stream is told, every lock released, exit 0.
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

// run is the whole program; it returns the exit status.
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
	log := newLogger(cfg, stderr)
	defer func() { _ = log.Sync() }()

	b, err := openBackend(cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "elector: %v\n", err)
		var ue *usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	srv, err := server.New(server.Config{
		Backend:   b,
		Identity:  cfg.identity,
		LegacyTTL: cfg.legacyTTL,
		Logger:    log,
		Debug:     cfg.debug,
	})
	if err != nil {
		_ = b.Close(context.Background())
		fmt.Fprintf(stderr, "elector: %v\n", err)
		return 2
	}

	ctx, stopSignals := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stopSignals()

	lns, err := listenAll(listenAddrs(cfg.listen, log))
	if err != nil {
		_ = b.Close(context.Background())
		fmt.Fprintf(stderr, "elector: %v\n", err)
		return 1
	}
	hs := srv.HTTPServer()
	served := make(chan error, len(lns))
	var addrs []string
	for _, ln := range lns {
		addrs = append(addrs, ln.Addr().String())
		go func() { served <- hs.Serve(ln) }()
	}
	log.Info("serving",
		zap.String("addr", addrs[0]),
		zap.Strings("addrs", addrs),
		zap.String("backend", cfg.backend),
		zap.String("identity", cfg.identity),
		zap.String("namespace", cfg.namespace),
		zap.Duration("leaseDuration", cfg.leaseDuration),
		zap.Bool("debugEndpoints", cfg.debug),
		zap.Int("pid", os.Getpid()))

	status := 0
	select {
	case <-ctx.Done():
		log.Info("signal received; shutting down")
	case err := <-served:
		log.Error("serving failed", zap.Error(err))
		status = 1
	}
	stopSignals() // a second signal kills at once

	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	// Stop accepting connections and wait for open ones to finish, while
	// the Server ends its streams and releases every lock.
	httpDone := make(chan error, 1)
	go func() { httpDone <- hs.Shutdown(sctx) }()
	if err := srv.Shutdown(sctx); err != nil {
		log.Error("shutdown", zap.Error(err))
	}
	if err := <-httpDone; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("closing connections still open at the deadline", zap.Error(err))
		_ = hs.Close()
	}
	log.Info("stopped")
	return status
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
