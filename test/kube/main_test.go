// Package kube_test tests the elector's Kubernetes backend against a real
// kube-apiserver and etcd: the backend in process, elector processes on the
// kubernetes backend through the SDK (the conformance suite included), a
// client-go leader-election candidate contending with mpsync, and the
// example manifests.
//
// `make test` (hack/test.sh) builds and starts the control plane and sets
// $MPSYNC_CONTROLPLANE to its env file and $MPSYNC_ELECTOR_BIN to the
// elector binary. Without $MPSYNC_CONTROLPLANE every test here skips; with
// it, none does. Each test works in a namespace of its own into which it
// applies examples/kubernetes/rbac.yaml as the admin; the electors then
// authenticate as the ordinary user mpsync-elector, which only that Role
// grants anything, so the shipped RBAC is what the tests exercise.
//
// The test binary doubles as the client-go candidate process: with
// $candidateEnv set, TestMain runs the candidate instead of the tests.
package kube_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/mpsync/mpsync/internal/controlplane"
	"github.com/mpsync/mpsync/internal/electorproc"
	"github.com/mpsync/mpsync/kube"
)

// waitFor bounds waits for things that should happen promptly; generous,
// as the machine may be slow and shared. A wait ends as soon as its
// condition holds.
const waitFor = 30 * time.Second

// controlPlane is what hack/controlplane/start.sh wrote into its env file.
type controlPlane struct {
	server            string
	adminKubeconfig   string
	electorKubeconfig string
	apiserverPID      int
}

var (
	// cp is the control plane; nil when $MPSYNC_CONTROLPLANE is unset.
	// Set once by TestMain.
	cp *controlPlane
	// repoRoot is the repository's top directory.
	repoRoot string
)

func TestMain(m *testing.M) {
	if os.Getenv(candidateEnv) != "" {
		os.Exit(candidateMain())
	}
	// client-go logs through klog; keep its watch retries out of the
	// test output unless asked for.
	if os.Getenv("MPSYNC_TEST_KLOG") == "" {
		klog.LogToStderr(false)
		klog.SetOutput(discard{})
	}
	code, err := setup()
	if err != nil {
		fmt.Fprintf(os.Stderr, "test/kube: %v\n", err)
		os.Exit(1)
	}
	if code == 0 {
		code = m.Run()
	}
	teardown()
	if code == 0 {
		if err := goleak.Find(controlplane.LeakOptions()...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

var tempDir string

func setup() (int, error) {
	wd, err := os.Getwd()
	if err != nil {
		return 1, err
	}
	repoRoot = filepath.Clean(filepath.Join(wd, "..", ".."))
	path := os.Getenv("MPSYNC_CONTROLPLANE")
	if path == "" {
		return 0, nil
	}
	env, err := controlplane.ReadEnv(path)
	if err != nil {
		return 1, fmt.Errorf("$MPSYNC_CONTROLPLANE: %w", err)
	}
	c := &controlPlane{
		server:            env["MPSYNC_KUBE_SERVER"],
		adminKubeconfig:   env["MPSYNC_ADMIN_KUBECONFIG"],
		electorKubeconfig: env["MPSYNC_ELECTOR_KUBECONFIG"],
	}
	c.apiserverPID, err = strconv.Atoi(env["MPSYNC_APISERVER_PID"])
	if c.server == "" || c.adminKubeconfig == "" || c.electorKubeconfig == "" || err != nil {
		return 1, fmt.Errorf("%s lacks MPSYNC_KUBE_SERVER, MPSYNC_ADMIN_KUBECONFIG, MPSYNC_ELECTOR_KUBECONFIG or MPSYNC_APISERVER_PID", path)
	}
	cp = c
	return 0, nil
}

func teardown() {
	if tempDir != "" {
		os.RemoveAll(tempDir)
	}
}

// needControlPlane skips the test when no control plane was started for
// this run, and returns it otherwise.
func needControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	if cp == nil {
		t.Skip("needs a real kube-apiserver: $MPSYNC_CONTROLPLANE is unset. Run `make test`, which builds and starts one (hack/controlplane) and runs these tests against it")
	}
	return cp
}

func bg() context.Context { return context.Background() }

// client returns a clientset for the kubeconfig at path, configured as the
// elector configures its own.
func client(t *testing.T, path string) kubernetes.Interface {
	t.Helper()
	rc, err := kube.RESTConfig(path)
	require.NoError(t, err)
	cs, err := kubernetes.NewForConfig(rc)
	require.NoError(t, err)
	return cs
}

func (c *controlPlane) admin(t *testing.T) kubernetes.Interface {
	return client(t, c.adminKubeconfig)
}

func (c *controlPlane) elector(t *testing.T) kubernetes.Interface {
	return client(t, c.electorKubeconfig)
}

// namespace creates a namespace for the test, applies the shipped RBAC
// into it, and waits until the elector user may use Leases there.
func namespace(t *testing.T) string {
	t.Helper()
	c := needControlPlane(t)
	admin := c.admin(t)
	name := fmt.Sprintf("t-%s-%06x", shortName(t.Name(), 40), rand.Uint32()&0xffffff)
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := admin.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
	applyFile(t, name, filepath.Join(repoRoot, "examples", "kubernetes", "rbac.yaml"))
	// The API server's RBAC authorizer learns of the binding from its own
	// watch: wait until it applies.
	el := c.elector(t)
	require.Eventually(t, func() bool {
		_, err := el.CoordinationV1().Leases(name).List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil
	}, waitFor, 20*time.Millisecond, "the elector user may list leases in "+name)
	return name
}

// shortName turns a test name into a piece of a DNS label.
func shortName(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return '-'
	}, s)
	if len(s) > n {
		s = s[:n]
	}
	return strings.Trim(s, "-")
}

// electorBin returns the elector binary: $MPSYNC_ELECTOR_BIN, else one
// built once for this run.
func electorBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("MPSYNC_ELECTOR_BIN"); p != "" {
		return p
	}
	if builtElector != "" {
		return builtElector
	}
	dir, err := os.MkdirTemp("", "mpsync-kube-test-")
	require.NoError(t, err)
	tempDir = dir
	bin := filepath.Join(dir, "elector")
	require.NoError(t, electorproc.BuildElector(bin))
	builtElector = bin
	return bin
}

var builtElector string

// ms formats a duration in milliseconds for logs.
func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + "ms"
}
