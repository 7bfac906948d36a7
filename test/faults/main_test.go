// Package faults checks docs/DESIGN.md's guarantee 1, mutual exclusion as seen
// by the holder, under faults: processes contend for locks and elections
// through electors, and in-process (kube.NewTransport) beside them, while
// the harness kills and stops clients and electors, kills and restarts the
// API server, cuts electors and in-process clients off from it or slows an
// elector's link, and skews their clocks. Every client records when each of
// its leadership contexts began and ended (package history, one file per
// process, on the machine's monotonic clock), the harness records its
// faults, and history.Check then verifies that no two holders overlapped,
// that fencing tokens grew, and that a holder came back soon after each
// fault healed and after each holder died. docs/RELIABILITY.md describes
// the rounds, the faults and what they found.
//
// The client is the program in ./client, built by TestMain; the elector is
// $MPSYNC_ELECTOR_BIN, else built too. Rounds on the kubernetes backend
// need $MPSYNC_CONTROLPLANE (set by `make test` and hack/soak.sh), and
// start a kube-apiserver and etcd of their own with
// hack/controlplane/start.sh, since they kill that API server. Without it
// they skip; the memory-backend rounds need nothing. $MPSYNC_SOAK turns
// TestFaults into the soak (hack/soak.sh); $MPSYNC_FAULTS_KEEP=1 keeps the
// logs and histories of rounds that pass (those that fail are always
// kept, and the test log says where).
package faults

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
	"k8s.io/klog/v2"

	"github.com/mpsync/mpsync/internal/controlplane"
	"github.com/mpsync/mpsync/internal/electorproc"
)

// waitFor bounds waits for things that should happen promptly (a process
// serving, the API server ready); generous, as the machine is small and
// shared. Every such wait ends as soon as its condition holds.
const waitFor = 60 * time.Second

var (
	// repoRoot is the repository's top directory.
	repoRoot string
	// clientBin is the client program, built once by TestMain.
	clientBin string
	// electorBin is $MPSYNC_ELECTOR_BIN, else an elector built by TestMain.
	electorBin string
	buildDir   string
)

func TestMain(m *testing.M) {
	// client-go logs through klog; keep its retries during API server
	// outages out of the test output unless asked for.
	if os.Getenv("MPSYNC_TEST_KLOG") == "" {
		klog.LogToStderr(false)
		klog.SetOutput(discard{})
	}
	code := 1
	if err := setup(); err != nil {
		fmt.Fprintf(os.Stderr, "test/faults: %v\n", err)
	} else {
		code = m.Run()
	}
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
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

// setup finds the repository and builds the client program (and the
// elector, if $MPSYNC_ELECTOR_BIN does not name one).
func setup() error {
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	repoRoot = filepath.Clean(filepath.Join(wd, "..", ".."))
	buildDir, err = os.MkdirTemp("", "mpsync-faults-bin-")
	if err != nil {
		return err
	}
	clientBin = filepath.Join(buildDir, "client")
	if err := electorproc.Build(clientBin, "test", "github.com/mpsync/mpsync/test/faults/client"); err != nil {
		return err
	}
	electorBin = os.Getenv("MPSYNC_ELECTOR_BIN")
	if electorBin == "" {
		electorBin = filepath.Join(buildDir, "elector")
		return electorproc.BuildElector(electorBin)
	}
	return nil
}

// controlPlaneEnv is $MPSYNC_CONTROLPLANE: set by `make test` (and
// hack/soak.sh) when a control plane has been built and can be started.
func controlPlaneEnv() string { return os.Getenv("MPSYNC_CONTROLPLANE") }

// needControlPlane skips t when $MPSYNC_CONTROLPLANE is unset; when it is
// set, nothing here skips.
func needControlPlane(t *testing.T) {
	t.Helper()
	if controlPlaneEnv() == "" {
		t.Skip("needs a real kube-apiserver: $MPSYNC_CONTROLPLANE is unset. Run `make test` or hack/soak.sh, which build the control plane (hack/controlplane)")
	}
}
