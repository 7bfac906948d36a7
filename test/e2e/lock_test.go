package e2e

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The lock example's lines.
var (
	acquiredLine = regexp.MustCompile(`: acquired lock example-lock \(token (\d+)\)$`)
	releasedLine = regexp.MustCompile(`: released$`)
)

// TestLock runs the shipped lock Deployment at two replicas (scaled as a
// user would): one holds the lock, the other waits, and takes it when the
// first releases it after its hold time.
func TestLock(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "e2e-lock")
	c.must(t, "apply", "-n", ns, "-f", rbacManifest, "-f", lockManifest)
	c.must(t, "scale", "-n", ns, "deployment/"+lockDeploy, "--replicas=2")
	c.rollout(t, ns, lockDeploy)

	var holder, waiter string
	var token uint64
	require.Eventually(t, func() bool {
		pods := c.pods(t, ns, lockDeploy)
		l, ok := c.lease(t, ns, lockLease)
		if len(pods) != 2 || !ok || l.holderPod() == "" {
			return false
		}
		holder, waiter = "", ""
		for _, p := range pods {
			last := lastLockLine(c.logs(t, ns, p.Metadata.Name, "app", false))
			switch {
			case p.Metadata.Name == l.holderPod() && acquiredLine.MatchString(last):
				holder = p.Metadata.Name
			case p.Metadata.Name != l.holderPod() && strings.Contains(last, "waiting for lock example-lock"):
				waiter = p.Metadata.Name
			}
		}
		token = l.Spec.LeaseTransitions
		return holder != "" && waiter != ""
	}, waitTimeout, 200*time.Millisecond, "one pod holds example-lock, the other waits")
	t.Logf("%s holds (token %d), %s waits", holder, token, waiter)

	// The holder releases after its 45 s hold; the waiter takes it.
	next := c.nextHolder(t, ns, lockLease, holder)
	require.Equal(t, waiter, next.holderPod(), "the waiter takes the lock")
	assert.Greater(t, next.Spec.LeaseTransitions, token, "with a greater token")
	held := c.logs(t, ns, holder, "app", false)
	released := slices.IndexFunc(held, func(l line) bool { return releasedLine.MatchString(l.Text) })
	require.GreaterOrEqual(t, released, 0, "the holder said it released: %v", held)
	require.Eventually(t, func() bool {
		return acquiredLine.MatchString(lastLockLine(c.logs(t, ns, waiter, "app", false)))
	}, waitTimeout, 200*time.Millisecond, waiter+" says it acquired the lock")
	waited := c.logs(t, ns, waiter, "app", false)
	m := acquiredLine.FindStringSubmatch(lastLockLine(waited))
	tok, _ := strconv.ParseUint(m[1], 10, 64)
	assert.Equal(t, next.Spec.LeaseTransitions, tok, "the waiter's token is the Lease's")
	// The holder's release begins before the waiter's acquisition (whose
	// acquireTime the holder's elector writes when it hands the Lease over
	// in its release, or the waiter's when it takes a Lease left free).
	elLog := electorLog(c.logs(t, ns, holder, "elector", false))
	// The release that let the waiter in: the holder's term with the
	// greatest token below the waiter's (an earlier term of the holder,
	// such as one its app ended by restarting, released too).
	rel, ok := releaseBelow(elLog, lockLease, tok)
	require.True(t, ok, "the holder's elector logged the release of a term before token %d", tok)
	assert.False(t, next.Spec.AcquireTime.Before(rel.start()), "acquired at %v, before the release (token %d) began at %v",
		next.Spec.AcquireTime, rel.Token, rel.start())
	t.Logf("measured: release began -> the waiter's acquisition %v", next.Spec.AcquireTime.Sub(rel.start()))
	assert.Less(t, next.Spec.AcquireTime.Sub(rel.start()), 5*time.Second, "the waiter learns of the release from its watch")
}

// lastLockLine is the lock example's last line, or "".
func lastLockLine(lines []line) string {
	if len(lines) == 0 {
		return ""
	}
	return lines[len(lines)-1].Text
}
