package kube_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/core"
)

func tryAcquire(b *testBackend, name, identity string, legacy bool) (backend.Grant, error) {
	ctx, cancel := context.WithTimeout(bg(), waitFor)
	defer cancel()
	return b.Acquire(ctx, core.Request{Name: name, Identity: identity, Lease: 15 * time.Second, Legacy: legacy})
}

// TestBackendLegacyResume: an elector restarted with the same identity (a
// new Backend, the old one cut off as if killed) resumes the legacy lease
// of its earlier process at once, with the same token; nothing else can:
// not a v1 request of the same identity, not another elector, and not a
// legacy request over a v1 hold.
func TestBackendLegacyResume(t *testing.T) {
	ns := namespace(t)
	admin := cp.admin(t)
	const lease = 15 * time.Second
	old := newBackend(t, ns, "pod-a", lease)
	g, err := tryAcquire(old, "legacy", "pod-a", true)
	require.NoError(t, err)
	v1, err := tryAcquire(old, "v1", "pod-a", false) // a v1 client that calls itself pod-a
	require.NoError(t, err)
	before := getLease(t, admin, ns, "legacy")
	if !strings.HasPrefix(holderOf(before), "pod-a@pod-a#legacy-") {
		t.Fatalf("legacy holderIdentity %q, want the prefix pod-a@pod-a#legacy-", holderOf(before))
	}
	old.cut.Store(true) // killed: it neither renews nor releases

	restarted := newBackend(t, ns, "pod-a", lease)
	other := newBackend(t, ns, "pod-b", lease)
	for _, c := range []struct {
		what           string
		b              *testBackend
		name, identity string
		legacy         bool
	}{
		{"a v1 request of the elector's identity", restarted, "legacy", "pod-a", false},
		{"another elector's legacy request", other, "legacy", "pod-b", true},
		{"another elector's request in pod-a's name", other, "legacy", "pod-a", true},
		{"a legacy request over a v1 hold of the same identity", restarted, "v1", "pod-a", true},
	} {
		if g, err := tryAcquire(c.b, c.name, c.identity, c.legacy); !errors.Is(err, core.ErrLocked) {
			if g != nil {
				release(t, g)
			}
			t.Errorf("%s: Acquire = %v, want ErrLocked", c.what, err)
		}
	}

	start := time.Now()
	ng, err := tryAcquire(restarted, "legacy", "pod-a", true)
	require.NoError(t, err, "restarted elector's legacy Acquire")
	took := time.Since(start)
	after := getLease(t, admin, ns, "legacy")
	if ng.Token() != g.Token() || transitionsOf(after) != g.Token() {
		t.Errorf("resumed token %d, Lease's leaseTransitions %d; want the earlier %d", ng.Token(), transitionsOf(after), g.Token())
	}
	if h := holderOf(after); h == holderOf(before) || !strings.HasPrefix(h, "pod-a@pod-a#legacy-") {
		t.Errorf("resumed holderIdentity %q, want a new legacy session of pod-a (was %q)", h, holderOf(before))
	}
	if took > lease/2 {
		t.Errorf("resume took %v; it must not wait out the lease (%v)", took, lease)
	}
	t.Logf("legacy lease resumed %s after the restarted elector asked (lease %v)", ms(took), lease)
	if _, err := ng.Renew(bg()); err != nil {
		t.Errorf("renew of the resumed grant: %v", err)
	}
	release(t, ng)
	_ = v1
}
