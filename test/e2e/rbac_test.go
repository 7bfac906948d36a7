package e2e

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRBAC runs the election Deployment with a service account that has no
// RoleBinding: its electors stay not Ready and say, in one log line, which
// verb on which resource was refused. Then it applies the shipped RBAC:
// that is enough for them to become Ready, and refuses what it does not
// grant, to the service account's own token.
func TestRBAC(t *testing.T) {
	c := newCluster(t)
	ns := c.namespace(t, "e2e-rbac")
	c.must(t, "create", "serviceaccount", "-n", ns, "mpsync-elector")
	c.must(t, "apply", "-n", ns, "-f", electionManifst)

	refusal := `cannot list resource \"leases\" in API group \"coordination.k8s.io\"`
	var name string
	require.Eventually(t, func() bool {
		pods := c.pods(t, ns, electionDeploy)
		if len(pods) == 0 || pods[0].elector().ContainerID == "" {
			return false
		}
		name = pods[0].Metadata.Name
		out, err := c.run("logs", "-n", ns, name, "-c", "elector")
		return err == nil && strings.Contains(out, refusal)
	}, waitTimeout, 200*time.Millisecond, "an elector logs that listing leases was refused")
	lines := c.logs(t, ns, name, "elector", false)
	var refused []electorEntry
	for _, e := range electorLog(lines) {
		if strings.Contains(e.Error, `cannot list resource "leases"`) {
			refused = append(refused, e)
		}
	}
	require.NotEmpty(t, refused, "the refusal is a line of the elector's own (JSON) log: %v", lines)
	assert.Contains(t, refused[0].Msg, "refused")
	assert.Contains(t, refused[0].Error, "system:serviceaccount:"+ns+":mpsync-elector")
	t.Logf("the elector says: %s: %s", refused[0].Msg, refused[0].Error)
	for _, p := range c.pods(t, ns, electionDeploy) {
		_, ready := p.ready()
		assert.False(t, ready, "pod %s is Ready without the RoleBinding", p.Metadata.Name)
		assert.False(t, p.elector().Ready, "elector of %s is ready without the RoleBinding", p.Metadata.Name)
	}

	// The shipped RBAC is enough.
	c.must(t, "apply", "-n", ns, "-f", rbacManifest)
	c.rollout(t, ns, electionDeploy)
	c.settled(t, ns)

	// And nothing more: the service account's own token is refused what
	// the Role does not grant.
	token := strings.TrimSpace(c.must(t, "create", "token", "-n", ns, "mpsync-elector"))
	as := func(args ...string) error {
		_, err := c.run(append([]string{"--token=" + token}, args...)...)
		if err != nil {
			return errors.New(strings.ReplaceAll(err.Error(), token, "TOKEN"))
		}
		return nil
	}
	require.NoError(t, as("get", "leases", "-n", ns), "list leases: granted")
	require.NoError(t, as("get", "lease", "-n", ns, electionLease), "get a lease: granted")
	for _, refusedReq := range [][]string{
		{"delete", "lease", "-n", ns, electionLease},
		{"patch", "lease", "-n", ns, electionLease, "--type=merge", "-p", `{"metadata":{"labels":{"x":"y"}}}`},
		{"get", "leases", "-n", "default"},
		{"get", "pods", "-n", ns},
		{"get", "secrets", "-n", ns},
		{"create", "configmap", "-n", ns, "x"},
	} {
		err := as(refusedReq...)
		if assert.Error(t, err, "kubectl %v as the elector's service account", refusedReq) {
			assert.Contains(t, strings.ToLower(err.Error()), "forbidden", "kubectl %v", refusedReq)
		}
	}
}
