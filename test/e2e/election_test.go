package e2e

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestElection runs the shipped election Deployment (3 replicas, the
// elector as a native sidecar) and fails its leader over in the ways the
// README describes. The scenarios share one Deployment and run in order.
func TestElection(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "e2e-election")
	c.deploy(t, ns, electionDeploy, rbacManifest, electionManifst)

	t.Run("1 ready only when the elector answers, one leader", func(t *testing.T) {
		s := c.settled(t, ns)
		for _, p := range c.pods(t, ns, electionDeploy) {
			readyAt, ok := p.ready()
			require.True(t, ok, "pod %s Ready", p.Metadata.Name)
			serving, ok := first(electorLog(c.logs(t, ns, p.Metadata.Name, "elector", false)), "serving", "")
			require.True(t, ok, "pod %s: the elector logged no serving line", p.Metadata.Name)
			// Ready is stamped in whole seconds: compare at that precision.
			assert.False(t, readyAt.Before(serving.Time.Truncate(time.Second)),
				"pod %s Ready at %v, before its elector served at %v", p.Metadata.Name, readyAt, serving.Time)
			app := c.logs(t, ns, p.Metadata.Name, "app", false)
			require.NotEmpty(t, app)
			assert.True(t, app[0].At.After(serving.Time),
				"pod %s: the app started (%v) before its elector served (%v)", p.Metadata.Name, app[0].At, serving.Time)
			assert.Equal(t, "mpsync-elector", p.Spec.ServiceAccountName)
		}
		t.Logf("leader %s, token %d", s.leader, s.token)
	})

	t.Run("2 graceful delete of the leader hands over at once", func(t *testing.T) {
		old := c.settled(t, ns)
		app := c.follow(t, ns, old.leader, "app")
		el := c.follow(t, ns, old.leader, "elector")
		deleted := time.Now()
		c.must(t, "delete", "pod", "-n", ns, old.leader, "--wait=false")
		next := c.nextHolder(t, ns, electionLease, old.leader)
		t.Logf("deleted %s at %s; %s leads with token %d, acquired %s after the deletion",
			old.leader, deleted.Format(time.StampMilli), next.holderPod(), next.Spec.LeaseTransitions, next.Spec.AcquireTime.Sub(deleted))

		elLog := electorLog(el.lines(t, waitTimeout))
		released, ok := first(elLog, "lock released", electionLease)
		require.True(t, ok, "the old leader's elector logged no release:\n%v", elLog)
		signalled, ok := first(elLog, "signal received; shutting down", "")
		require.True(t, ok, "the old leader's elector logged no SIGTERM")
		assert.True(t, released.Time.Before(signalled.Time),
			"the elector released at %v, after it was told to stop at %v: it stopped before the app", released.Time, signalled.Time)
		appLines := app.lines(t, waitTimeout)
		assert.True(t, slices.ContainsFunc(appLines, func(l line) bool { return stepDown.MatchString(l.Text) }),
			"the old leader's app did not end its term: %v", appLines)
		assert.Greater(t, next.Spec.LeaseTransitions, old.token, "the token grows")
		handover := next.Spec.AcquireTime.Sub(released.start())
		t.Logf("measured: release -> next leader's acquisition %v; deletion -> acquisition %v",
			handover, next.Spec.AcquireTime.Sub(deleted))
		assert.Less(t, handover, time.Second, "another replica leads within a second of the release")
		s := c.settled(t, ns)
		assert.Equal(t, next.holderPod(), s.leader)
		assert.Equal(t, next.Spec.LeaseTransitions, s.token)
	})

	t.Run("3 forced delete of the leader: no overlap, a leader within the lease", func(t *testing.T) {
		old := c.settled(t, ns)
		p := c.pod(t, ns, old.leader)
		app := c.openLog(t, ns, p, "app")
		el := c.openLog(t, ns, p, "elector")
		deleted := time.Now()
		c.must(t, "delete", "pod", "-n", ns, old.leader, "--grace-period=0", "--force")
		before, _ := c.lease(t, ns, electionLease)
		next := c.nextHolder(t, ns, electionLease, old.leader)
		took := next.Spec.AcquireTime.Sub(deleted)
		t.Logf("measured: forced deletion -> next leader's acquisition %v", took)
		elLog := electorLog(el.lines(t, c))
		appLines := app.lines(t, c)
		c.noOverlap(t, before, next, old.leader, elLog, appLines)
		assert.Less(t, took, leaseDuration+leaseSlack, "someone leads within the lease duration and %v", leaseSlack)
		assert.Greater(t, next.Spec.LeaseTransitions, old.token)
		c.settled(t, ns)
	})

	t.Run("3 SIGKILL of the leader's elector: no overlap, restarted, serves again", func(t *testing.T) {
		old := c.settled(t, ns)
		p := c.pod(t, ns, old.leader)
		restarts := p.elector().RestartCount
		killed := c.killElector(t, p)
		before, _ := c.lease(t, ns, electionLease)
		next := c.nextHolder(t, ns, electionLease, old.leader)
		took := next.Spec.AcquireTime.Sub(killed)
		t.Logf("measured: SIGKILL of the elector -> next leader's acquisition %v", took)
		elLog := electorLog(c.logs(t, ns, old.leader, "elector", true))
		appLines := c.logs(t, ns, old.leader, "app", false)
		c.noOverlap(t, before, next, old.leader, elLog, appLines)
		lost := slices.IndexFunc(appLines, func(l line) bool {
			return l.At.After(killed) && strings.Contains(l.Text, "I lost leadership")
		})
		require.GreaterOrEqual(t, lost, 0, "the old leader's app did not say it lost leadership: %v", appLines)
		assert.True(t, appLines[lost].At.Before(*next.Spec.AcquireTime),
			"the old leader's app learnt of its loss at %v, after the next leader took over at %v", appLines[lost].At, next.Spec.AcquireTime)
		t.Logf("measured: SIGKILL -> the old leader's app ends its term %v", appLines[lost].At.Sub(killed))
		assert.Less(t, took, leaseDuration+leaseSlack, "someone leads within the lease duration and %v", leaseSlack)
		// The kubelet restarts the elector, which serves again: the pod is
		// Ready and its app follows the new leader.
		require.Eventually(t, func() bool {
			p := c.pod(t, ns, old.leader)
			_, ready := p.ready()
			st := lastState(c.logs(t, ns, old.leader, "app", false))
			return p.elector().RestartCount > restarts && ready && st.leader == next.holderPod()
		}, waitTimeout, 200*time.Millisecond, "the elector restarted, the pod Ready, its app following "+next.holderPod())
		_, ok := first(electorLog(c.logs(t, ns, old.leader, "elector", false)), "serving", "")
		assert.True(t, ok, "the restarted elector logged no serving line")
		c.settled(t, ns)
	})

	t.Run("6 rolling update: one handover per leader replaced, no overlap", func(t *testing.T) {
		start := c.settled(t, ns)
		olds := c.pods(t, ns, electionDeploy)
		followed := map[string]*follower{}
		for _, p := range olds {
			followed[p.Metadata.Name] = c.follow(t, ns, p.Metadata.Name, "app")
		}
		c.tagImages(t, "e2e-rollout")
		c.must(t, "set", "image", "-n", ns, "deployment/"+electionDeploy,
			"elector=mpsync/elector:e2e-rollout", "app=mpsync/examples:e2e-rollout")
		c.rollout(t, ns, electionDeploy)
		end := c.settled(t, ns)

		var all []term
		for _, p := range c.pods(t, ns, electionDeploy) {
			_, wasOld := followed[p.Metadata.Name]
			require.False(t, wasOld, "pod %s was not replaced", p.Metadata.Name)
			require.Equal(t, "mpsync/elector:e2e-rollout", p.Spec.InitContainers[0].Image)
			all = append(all, termsOf(p.Metadata.Name, false, c.logs(t, ns, p.Metadata.Name, "app", false))...)
		}
		for name, f := range followed {
			all = append(all, termsOf(name, true, f.lines(t, waitTimeout))...)
		}
		// The logs go back before this scenario: keep the terms from the
		// one that led when the rollout began.
		all = slices.DeleteFunc(all, func(tm term) bool { return tm.token < start.token })
		slices.SortFunc(all, func(a, b term) int { return cmp.Compare(a.token, b.token) })
		var replaced int
		for i, tm := range all {
			t.Logf("term %d: %s (old pod: %v) from %s to %s", tm.token, tm.pod, tm.old, tm.from.Format(time.StampMilli), tm.to.Format(time.StampMilli))
			require.Equal(t, start.token+uint64(i), tm.token, "one term per token, from %d to %d", start.token, end.token)
			if i == len(all)-1 {
				break
			}
			require.False(t, tm.to.IsZero(), "term %d ended", tm.token)
			assert.True(t, tm.old, "term %d, which ended, was held by a replaced pod", tm.token)
			assert.True(t, tm.steppedDown, "term %d ended by stepping down on SIGTERM", tm.token)
			assert.False(t, all[i+1].from.Before(tm.to), "term %d began at %v, before term %d ended at %v",
				all[i+1].token, all[i+1].from, tm.token, tm.to)
			replaced++
		}
		assert.Equal(t, end.token-start.token, uint64(replaced), "one handover per leader replaced")
		assert.GreaterOrEqual(t, replaced, 1, "the first leader was replaced")
		t.Logf("measured: %d handovers in the rolling update (tokens %d to %d)", replaced, start.token, end.token)
	})
}

// leaseSlack is how much later than a lease duration after a crash the
// suite accepts the next leader: the time to notice, write and log.
const leaseSlack = 5 * time.Second

// noOverlap checks that next, the Lease's next holder, took it only after
// the old leader's term ended: after its elector began to release it, or if it did
// not, no sooner than the old term's local deadline could have been. That
// deadline is at most the last renewal (in before, the Lease as read after
// the fault) plus the lease's validity, D*(1-2*rho) less a margin
// (internal/core.Validity); the suite takes D*(1-2*rho), for rho = 1%.
func (c *cluster) noOverlap(t *testing.T, before, next lease, old string, elLog []electorEntry, appLines []line) {
	t.Helper()
	acquired := *next.Spec.AcquireTime
	if released, ok := first(elLog, "lock released", electionLease); ok {
		t.Logf("the old leader's elector released the Lease (%s)", released.Why)
		// A release hands the Lease to the next leader in its write, whose
		// acquireTime the releasing elector stamps after the release began.
		assert.False(t, acquired.Before(released.start()), "next leader at %v, before the release began at %v", acquired, released.start())
		return
	}
	require.Equal(t, old, before.holderPod(), "the Lease as read after the fault")
	deadline := before.Spec.RenewTime.Add(time.Duration(float64(leaseDuration) * 0.98))
	t.Logf("the old leader's elector did not release: last renewal %v, next acquisition %v after it",
		before.Spec.RenewTime.Format(time.StampMilli), acquired.Sub(*before.Spec.RenewTime))
	assert.False(t, acquired.Before(deadline), "next leader at %v, before the old term's deadline %v", acquired, deadline)
	for _, l := range appLines {
		if m := leaderLine.FindStringSubmatch(l.Text); m != nil && l.At.After(acquired) {
			t.Errorf("the old leader's app says it leads again at %v: %s", l.At, l.Text)
		}
	}
}

// settled waits until the Deployment's three pods are Ready, the Lease names
// one of them, that one's app says it leads with the Lease's token and the
// other two say they follow it. It returns the leader and its token.
func (c *cluster) settled(t *testing.T, ns string) appState {
	t.Helper()
	var s appState
	var why string
	require.Eventually(t, func() bool {
		s, why = c.electionState(t, ns)
		return why == ""
	}, waitTimeout, 200*time.Millisecond, "one leader, two followers naming it")
	return s
}

// electionState is the leader and its token, or why the election is not
// settled.
func (c *cluster) electionState(t *testing.T, ns string) (appState, string) {
	pods := c.pods(t, ns, electionDeploy)
	if len(pods) != 3 {
		return appState{}, fmt.Sprintf("%d pods", len(pods))
	}
	l, ok := c.lease(t, ns, electionLease)
	if !ok || l.holderPod() == "" {
		return appState{}, "no holder in the Lease"
	}
	leader := l.holderPod()
	leaders := 0
	for _, p := range pods {
		if _, ok := p.ready(); !ok {
			return appState{}, p.Metadata.Name + " not Ready"
		}
		st := lastState(c.logs(t, ns, p.Metadata.Name, "app", false))
		switch {
		case p.Metadata.Name == leader && st.leading && st.token == l.Spec.LeaseTransitions:
			leaders++
		case p.Metadata.Name != leader && !st.leading && st.leader == leader:
		default:
			return appState{}, fmt.Sprintf("%s says %+v; the Lease names %s", p.Metadata.Name, st, leader)
		}
	}
	if leaders != 1 {
		return appState{}, "the Lease's holder does not say it leads"
	}
	return appState{leading: true, leader: leader, token: l.Spec.LeaseTransitions}, ""
}

// nextHolder waits until the Lease names a holder other than old and
// returns it.
func (c *cluster) nextHolder(t *testing.T, ns, name, old string) lease {
	t.Helper()
	var l lease
	require.Eventually(t, func() bool {
		var ok bool
		l, ok = c.lease(t, ns, name)
		return ok && l.holderPod() != "" && l.holderPod() != old && l.Spec.AcquireTime != nil
	}, waitTimeout, 200*time.Millisecond, "the Lease "+name+" to name a holder other than "+old)
	return l
}

// term is one leader term as an election example's log tells it.
type term struct {
	pod         string
	old         bool // the pod was there before the rollout
	token       uint64
	from, to    time.Time // to is zero while it leads
	steppedDown bool
}

// termsOf reads the terms of one pod's election log.
func termsOf(pod string, old bool, lines []line) []term {
	var out []term
	for _, l := range lines {
		if m := leaderLine.FindStringSubmatch(l.Text); m != nil {
			tok, _ := strconv.ParseUint(m[1], 10, 64)
			out = append(out, term{pod: pod, old: old, token: tok, from: l.At})
			continue
		}
		ended := stepDown.MatchString(l.Text)
		if n := len(out); n > 0 && out[n-1].to.IsZero() && (ended || strings.Contains(l.Text, "I lost leadership")) {
			out[n-1].to, out[n-1].steppedDown = l.At, ended
		}
	}
	return out
}

// tagImages gives the elector and examples images a second tag in the
// node's containerd, as a new build pushed under a new tag would.
func (c *cluster) tagImages(t *testing.T, tag string) {
	t.Helper()
	for _, img := range []string{"docker.io/mpsync/elector", "docker.io/mpsync/examples"} {
		out, err := exec.Command("ctr", "-a", c.containerd, "-n", "k8s.io", "images", "tag", "--force", img+":latest", img+":"+tag).CombinedOutput()
		require.NoError(t, err, "ctr images tag: %s", out)
	}
}

// pod reads one pod.
func (c *cluster) pod(t *testing.T, ns, name string) pod {
	t.Helper()
	var p pod
	require.NoError(t, json.Unmarshal([]byte(c.must(t, "get", "pod", "-n", ns, name, "-o", "json")), &p))
	return p
}

// killElector sends SIGKILL to the elector process of p, found through
// containerd by its container ID, and returns when it did.
func (c *cluster) killElector(t *testing.T, p pod) time.Time {
	t.Helper()
	id, ok := strings.CutPrefix(p.elector().ContainerID, "containerd://")
	require.True(t, ok, "elector container ID %q", p.elector().ContainerID)
	out, err := exec.Command("ctr", "-a", c.containerd, "-n", "k8s.io", "tasks", "ls").CombinedOutput()
	require.NoError(t, err, "ctr tasks ls: %s", out)
	for _, row := range strings.Split(string(out), "\n") {
		f := strings.Fields(row)
		if len(f) >= 2 && f[0] == id {
			pid, err := strconv.Atoi(f[1])
			require.NoError(t, err)
			require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
			return time.Now()
		}
	}
	t.Fatalf("no containerd task %s", id)
	return time.Time{}
}
