package e2e

import (
	"fmt"
	"slices"
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
		handover := next.Spec.AcquireTime.Sub(released.Time)
		t.Logf("measured: release -> next leader's acquisition %v; deletion -> acquisition %v",
			handover, next.Spec.AcquireTime.Sub(deleted))
		assert.Less(t, handover, time.Second, "another replica leads within a second of the release")
		s := c.settled(t, ns)
		assert.Equal(t, next.holderPod(), s.leader)
		assert.Equal(t, next.Spec.LeaseTransitions, s.token)
	})
}

// settled waits until the Deployment's three pods are Ready, the Lease names
// one of them, that one's app says it leads with the Lease's token and the
// other two say they follow it. It returns the leader and its token.
func (c *cluster) settled(t *testing.T, ns string) appState {
	t.Helper()
	var s appState
	var why string
	eventually(t, waitTimeout, "one leader, two followers naming it", func() bool {
		s, why = c.electionState(t, ns)
		return why == ""
	})
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
	eventually(t, waitTimeout, "the Lease "+name+" to name a holder other than "+old, func() bool {
		var ok bool
		l, ok = c.lease(t, ns, name)
		return ok && l.holderPod() != "" && l.holderPod() != old && l.Spec.AcquireTime != nil
	})
	return l
}
