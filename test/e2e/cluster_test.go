package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The suite talks to the node hack/e2e/up.sh brought up, through kubectl,
// as a user would. MPSYNC_E2E_ENV names up.sh's env file; hack/e2e.sh sets
// it (and says why when the suite cannot run on a machine).
const envVar = "MPSYNC_E2E_ENV"

// Deadlines for conditions: generous, for a slow shared machine.
const (
	rolloutTimeout = 4 * time.Minute
	waitTimeout    = 2 * time.Minute
)

// The shipped manifests and the names in them.
var (
	manifests       = filepath.Join("..", "..", "examples", "kubernetes")
	electionDeploy  = "mpsync-election-example"
	lockDeploy      = "mpsync-lock-example"
	electionLease   = "example-election"
	lockLease       = "example-lock"
	leaseDuration   = 15 * time.Second
	electionManifst = filepath.Join(manifests, "election-deployment.yaml")
	lockManifest    = filepath.Join(manifests, "lock-deployment.yaml")
	rbacManifest    = filepath.Join(manifests, "rbac.yaml")
)

// cluster is the node's kubectl and admin kubeconfig.
type cluster struct {
	kubectl    string
	kubeconfig string
	containerd string // containerd's socket
	podLogs    string // the kubelet's podLogsDir
}

// newCluster reads the env file of up.sh, or skips the test when the
// suite is run outside hack/e2e.sh.
func newCluster(t *testing.T) *cluster {
	t.Helper()
	path := os.Getenv(envVar)
	if path == "" {
		t.Skipf("%s is not set: run the suite with make e2e (hack/e2e.sh), which brings up a node", envVar)
	}
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	env := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	c := &cluster{kubectl: env["MPSYNC_E2E_KUBECTL"], kubeconfig: env["MPSYNC_E2E_KUBECONFIG"],
		containerd: env["MPSYNC_E2E_CONTAINERD"], podLogs: env["MPSYNC_E2E_POD_LOGS"]}
	require.NotEmpty(t, c.kubectl, "MPSYNC_E2E_KUBECTL in %s", path)
	require.NotEmpty(t, c.kubeconfig, "MPSYNC_E2E_KUBECONFIG in %s", path)
	return c
}

// run runs kubectl with args and returns its standard output.
func (c *cluster) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), rolloutTimeout+time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.kubectl, append([]string{"--kubeconfig=" + c.kubeconfig}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// must is run that fails the test on error.
func (c *cluster) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.run(args...)
	require.NoError(t, err)
	return out
}

// namespace creates a namespace for one test and deletes it (and waits for
// its pods to go) at the end.
func (c *cluster) namespace(t *testing.T, name string) string {
	t.Helper()
	c.must(t, "create", "namespace", name)
	t.Cleanup(func() {
		if _, err := c.run("delete", "namespace", name, "--wait=true", "--timeout=100s"); err != nil {
			t.Logf("deleting namespace %s: %v", name, err)
		}
	})
	return name
}

// deploy applies the manifests files into ns, as the README says, and waits
// for the Deployment to roll out.
func (c *cluster) deploy(t *testing.T, ns, deployment string, files ...string) {
	t.Helper()
	args := []string{"apply", "-n", ns}
	for _, f := range files {
		args = append(args, "-f", f)
	}
	c.must(t, args...)
	c.rollout(t, ns, deployment)
}

// rollout waits for the Deployment's rollout to finish.
func (c *cluster) rollout(t *testing.T, ns, deployment string) {
	t.Helper()
	c.must(t, "rollout", "status", "-n", ns, "deployment/"+deployment, "--timeout="+rolloutTimeout.String())
}

// pod is the part of a Pod the suite reads.
type pod struct {
	Metadata struct {
		Name              string     `json:"name"`
		UID               string     `json:"uid"`
		DeletionTimestamp *time.Time `json:"deletionTimestamp"`
		Labels            map[string]string
	} `json:"metadata"`
	Spec struct {
		ServiceAccountName string `json:"serviceAccountName"`
		Containers         []struct {
			Name  string `json:"name"`
			Image string `json:"image"`
		} `json:"containers"`
		InitContainers []struct {
			Name  string `json:"name"`
			Image string `json:"image"`
		} `json:"initContainers"`
	} `json:"spec"`
	Status struct {
		Phase      string `json:"phase"`
		Conditions []struct {
			Type               string    `json:"type"`
			Status             string    `json:"status"`
			LastTransitionTime time.Time `json:"lastTransitionTime"`
		} `json:"conditions"`
		InitContainerStatuses []containerStatus `json:"initContainerStatuses"`
		ContainerStatuses     []containerStatus `json:"containerStatuses"`
	} `json:"status"`
}

type containerStatus struct {
	Name         string `json:"name"`
	Ready        bool   `json:"ready"`
	RestartCount int    `json:"restartCount"`
	ContainerID  string `json:"containerID"`
	State        struct {
		Running *struct {
			StartedAt time.Time `json:"startedAt"`
		} `json:"running"`
	} `json:"state"`
}

// ready is the time the pod's Ready condition became True, if it is.
func (p pod) ready() (time.Time, bool) {
	for _, c := range p.Status.Conditions {
		if c.Type == "Ready" {
			return c.LastTransitionTime, c.Status == "True"
		}
	}
	return time.Time{}, false
}

// elector is the status of the pod's elector container.
func (p pod) elector() containerStatus {
	for _, s := range p.Status.InitContainerStatuses {
		if s.Name == "elector" {
			return s
		}
	}
	return containerStatus{}
}

// pods lists the pods of the Deployment named app in ns that are not
// being deleted.
func (c *cluster) pods(t *testing.T, ns, app string) []pod {
	t.Helper()
	var list struct{ Items []pod }
	out := c.must(t, "get", "pods", "-n", ns, "-l", "app.kubernetes.io/name="+app, "-o", "json")
	require.NoError(t, json.Unmarshal([]byte(out), &list))
	var live []pod
	for _, p := range list.Items {
		if p.Metadata.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	return live
}

// lease is the part of a Lease the suite reads.
type lease struct {
	Spec struct {
		HolderIdentity   *string    `json:"holderIdentity"`
		AcquireTime      *time.Time `json:"acquireTime"`
		RenewTime        *time.Time `json:"renewTime"`
		LeaseTransitions uint64     `json:"leaseTransitions"`
	} `json:"spec"`
}

// holderPod is the pod named in the Lease's holder
// (<client identity>@<pod>#<session>), or "" when nobody holds it.
func (l lease) holderPod() string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	_, rest, ok := strings.Cut(*l.Spec.HolderIdentity, "@")
	if !ok {
		return ""
	}
	p, _, _ := strings.Cut(rest, "#")
	return p
}

// lease reads the Lease name in ns; ok is false if it does not exist yet.
func (c *cluster) lease(t *testing.T, ns, name string) (lease, bool) {
	t.Helper()
	var l lease
	out, err := c.run("get", "lease", "-n", ns, name, "-o", "json")
	if err != nil {
		if strings.Contains(err.Error(), "NotFound") {
			return l, false
		}
		require.NoError(t, err)
	}
	require.NoError(t, json.Unmarshal([]byte(out), &l))
	return l, true
}

// line is one log line with the time the node's container runtime read it
// (kubectl logs --timestamps).
type line struct {
	At   time.Time
	Text string
}

// parseLog splits `kubectl logs --timestamps` output into lines. A line
// that is the kubelet's own error about the stream ("rpc error: ...", as
// when a container is removed while its log is followed) is not a line of
// the container's: it is logged and left out.
func parseLog(t *testing.T, out string) []line {
	t.Helper()
	var lines []line
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "rpc error: ") {
			t.Logf("the log stream reported: %s", sc.Text())
			continue
		}
		stamp, text, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, stamp)
		require.NoError(t, err, "timestamp of log line %q", sc.Text())
		lines = append(lines, line{At: at, Text: text})
	}
	return lines
}

// logs is the log of one container of a pod, with timestamps.
func (c *cluster) logs(t *testing.T, ns, pod, container string, previous bool) []line {
	t.Helper()
	args := []string{"logs", "-n", ns, pod, "-c", container, "--timestamps"}
	if previous {
		args = append(args, "--previous")
	}
	return parseLog(t, c.must(t, args...))
}

// follower keeps `kubectl logs -f` of one container running into memory,
// so that the log of a pod being deleted can be read after it is gone.
type follower struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	buf  bytes.Buffer
	done chan struct{}
}

func (f *follower) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.buf.Write(p)
}

// follow starts following the container's log; Lines waits for the stream
// to end (the container exited) and parses what it got.
func (c *cluster) follow(t *testing.T, ns, pod, container string) *follower {
	t.Helper()
	f := &follower{done: make(chan struct{})}
	f.cmd = exec.Command(c.kubectl, "--kubeconfig="+c.kubeconfig, "logs", "-f", "-n", ns, pod, "-c", container, "--timestamps")
	f.cmd.Stdout = f
	require.NoError(t, f.cmd.Start())
	go func() {
		_ = f.cmd.Wait()
		close(f.done)
	}()
	t.Cleanup(func() {
		_ = f.cmd.Process.Kill()
		<-f.done
	})
	return f
}

// lines waits up to timeout for the followed container to end and returns
// its log.
func (f *follower) lines(t *testing.T, timeout time.Duration) []line {
	t.Helper()
	select {
	case <-f.done:
	case <-time.After(timeout):
		t.Fatalf("log stream of %v did not end within %v", f.cmd.Args, timeout)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return parseLog(t, f.buf.String())
}

// electorEntry is one JSON line of the elector's log.
type electorEntry struct {
	Msg   string    `json:"msg"`
	Time  time.Time `json:"time"`
	Name  string    `json:"name"`
	Why   string    `json:"why"`
	Token uint64    `json:"token"`
	Error string    `json:"error"`
	// Began is when a release began, on "lock released" lines: the
	// release's write may hand the lock over before the line is logged
	// (or, after a v1 release request, after it).
	Began time.Time `json:"began"`
}

// start is when what e logs began: a release's Began, else e's time.
func (e electorEntry) start() time.Time {
	if !e.Began.IsZero() {
		return e.Began
	}
	return e.Time
}

// electorLog parses the elector's JSON log lines (others, such as
// client-go's, are left out).
func electorLog(lines []line) []electorEntry {
	var out []electorEntry
	for _, l := range lines {
		var e electorEntry
		if json.Unmarshal([]byte(l.Text), &e) == nil && e.Msg != "" {
			out = append(out, e)
		}
	}
	return out
}

// first is the first entry with msg (and, if name is not "", that lock
// name), and whether there is one.
func first(entries []electorEntry, msg, name string) (electorEntry, bool) {
	for _, e := range entries {
		if e.Msg == msg && (name == "" || e.Name == name) {
			return e, true
		}
	}
	return electorEntry{}, false
}

// releaseBelow is the "lock released" entry of lock name whose token is
// the greatest below token: the release of the last term before the one
// with that token.
func releaseBelow(entries []electorEntry, name string, token uint64) (electorEntry, bool) {
	var found electorEntry
	ok := false
	for _, e := range entries {
		if e.Msg == "lock released" && e.Name == name && e.Token < token && (!ok || e.Token > found.Token) {
			found, ok = e, true
		}
	}
	return found, ok
}

// The election example's lines: "HH:MM:SS.mmm ID: message".
var (
	leaderLine   = regexp.MustCompile(`: I am the leader \(token (\d+)\)$`)
	followerLine = regexp.MustCompile(`: following (\S+) \(token (\d+)\)$`)
)

// appState is what the election example said last: leading (with its
// token), following someone, or neither.
type appState struct {
	leading bool
	leader  string
	token   uint64
	at      time.Time
}

// lastState reads the last leader or follower line of an election log.
func lastState(lines []line) appState {
	var s appState
	for _, l := range lines {
		if m := leaderLine.FindStringSubmatch(l.Text); m != nil {
			tok, _ := strconv.ParseUint(m[1], 10, 64)
			s = appState{leading: true, token: tok, at: l.At}
		} else if m := followerLine.FindStringSubmatch(l.Text); m != nil {
			tok, _ := strconv.ParseUint(m[2], 10, 64)
			s = appState{leader: m[1], token: tok, at: l.At}
		} else if strings.Contains(l.Text, "I lost leadership") || strings.Contains(l.Text, "stepping down") {
			s = appState{at: l.At}
		}
	}
	return s
}

// stepDown is the election example's line when it ends its term on SIGTERM.
var stepDown = regexp.MustCompile(`: stepping down: shutting down$`)

// logFile is a container's log file on the node, held open so that it can
// be read to its end after the pod is gone (a forced delete removes the
// pod before kubectl logs could read what its containers said last).
type logFile struct {
	f  *os.File
	id string // the container's ID in containerd
}

// openLog opens the current log file of the container of p.
func (c *cluster) openLog(t *testing.T, ns string, p pod, container string) *logFile {
	t.Helper()
	var id string
	for _, s := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
		if s.Name == container {
			id = strings.TrimPrefix(s.ContainerID, "containerd://")
			path := filepath.Join(c.podLogs, fmt.Sprintf("%s_%s_%s", ns, p.Metadata.Name, p.Metadata.UID), container, fmt.Sprintf("%d.log", s.RestartCount))
			f, err := os.Open(path)
			require.NoError(t, err)
			t.Cleanup(func() { _ = f.Close() })
			return &logFile{f: f, id: id}
		}
	}
	t.Fatalf("pod %s has no container %s", p.Metadata.Name, container)
	return nil
}

// lines waits for the container to end (its task gone from containerd)
// and returns its log, parsed from the CRI format (TIME STREAM TAG TEXT).
func (l *logFile) lines(t *testing.T, c *cluster) []line {
	t.Helper()
	require.Eventually(t, func() bool {
		out, err := exec.Command("ctr", "-a", c.containerd, "-n", "k8s.io", "tasks", "ls", "-q").Output()
		return err == nil && !slices.Contains(strings.Fields(string(out)), l.id)
	}, waitTimeout, 200*time.Millisecond, "container "+l.id+" to end")
	data, err := io.ReadAll(l.f)
	require.NoError(t, err)
	var out []line
	for _, row := range strings.Split(string(data), "\n") {
		f := strings.SplitN(row, " ", 4)
		if len(f) < 4 {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, f[0])
		require.NoError(t, err, "CRI log line %q", row)
		out = append(out, line{At: at, Text: f[3]})
	}
	return out
}
