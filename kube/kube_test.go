package kube

import (
	"context"
	"errors"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/mpsync/mpsync/internal/core"
)

// The backend is tested against a real API server in test/kube; client-go's
// fake clientset does not enforce resourceVersion, so it cannot show that
// two electors never both win. These are the pure parts, and one smoke
// test of the plumbing against the fake.

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestSplitHolder(t *testing.T) {
	for _, c := range []struct {
		in                       string
		client, elector, session string
		ok                       bool
	}{
		{"app@pod-1#ab12-3", "app", "pod-1", "ab12-3", true},
		{"me@host@pod#s#ab-1", "me@host@pod#s", "", "", false},
		{"a@b@pod#ab-1", "a@b", "pod", "ab-1", true},
		{"x#y@pod#ab-1", "x#y", "pod", "ab-1", true},
		{"client-go-candidate", "", "", "", false},
		{"@pod#s", "", "", "", false},
		{"c@#s", "", "", "", false},
		{"c@pod#", "", "", "", false},
		{"", "", "", "", false},
	} {
		client, elector, session, ok := splitHolder(c.in)
		if ok != c.ok || ok && (client != c.client || elector != c.elector || session != c.session) {
			t.Errorf("splitHolder(%q) = %q, %q, %q, %v; want %q, %q, %q, %v",
				c.in, client, elector, session, ok, c.client, c.elector, c.session, c.ok)
		}
	}
	if got := clientIdentity("client-go-candidate"); got != "client-go-candidate" {
		t.Errorf("clientIdentity of a foreign holder = %q, want it whole", got)
	}
}

func TestResumable(t *testing.T) {
	b := &Backend{identity: "pod-a", instance: "aaaa"}
	for _, c := range []struct {
		holder, client string
		want           bool
	}{
		{"pod-a@pod-a#legacy-bbbb-1", "pod-a", true},   // an earlier process's legacy hold
		{"pod-a@pod-a#legacy-aaaa-1", "pod-a", false},  // this process's own
		{"pod-a@pod-a#bbbb-1", "pod-a", false},         // a v1 client named pod-a
		{"pod-a@pod-b#legacy-bbbb-1", "pod-a", false},  // another elector's
		{"web-1@pod-a#legacy-bbbb-1", "pod-a", false},  // another client
		{"x#legacy-@pod-a#bbbb-1", "x#legacy-", false}, // a marker in the client part is no marker
		{"pod-a", "pod-a", false},                      // a client-go candidate
	} {
		if got := b.resumable(c.holder, c.client); got != c.want {
			t.Errorf("resumable(%q, %q) = %v, want %v", c.holder, c.client, got, c.want)
		}
	}
	if !b.ownsSession("pod-a@pod-a#legacy-aaaa-1") || b.ownsSession("pod-a@pod-a#legacy-bbbb-1") {
		t.Error("ownsSession must see through the legacy marker to the instance")
	}
}

func TestLeaseSeconds(t *testing.T) {
	for d, want := range map[time.Duration]int32{
		time.Second: 1, 1500 * time.Millisecond: 2, 15 * time.Second: 15, 15*time.Second + 1: 16,
	} {
		if got := leaseSeconds(d); got != want {
			t.Errorf("leaseSeconds(%v) = %d, want %d", d, got, want)
		}
	}
}

func TestNewer(t *testing.T) {
	for _, c := range []struct {
		rv, cur string
		want    bool
	}{
		{"10", "", true},
		{"10", "9", true},
		{"9", "10", false},
		{"10", "10", false},
		{"abc", "10", true}, // not comparable: different counts as newer
		{"abc", "abc", false},
	} {
		if got := newer(c.rv, c.cur); got != c.want {
			t.Errorf("newer(%q, %q) = %v, want %v", c.rv, c.cur, got, c.want)
		}
	}
}

// TestFakeSmoke takes, renews and releases a lock through the fake
// clientset, and checks Close.
func TestFakeSmoke(t *testing.T) {
	b, err := New(Config{Client: fake.NewClientset(), Namespace: "ns", Identity: "e0", LeaseDuration: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g, err := b.Acquire(ctx, core.Request{Name: "lock", Identity: "app"})
	if err != nil {
		t.Fatal(err)
	}
	if g.Token() != 1 {
		t.Errorf("token %d, want 1", g.Token())
	}
	if _, err := b.Acquire(ctx, core.Request{Name: "lock2", Identity: "app\tone"}); !errors.Is(err, core.ErrInvalidIdentity) {
		t.Errorf("Acquire with a tab in the identity = %v, want ErrInvalidIdentity", err)
	}
	_, err = b.Acquire(ctx, core.Request{Name: "lock", Identity: "other"})
	assert.ErrorIs(t, err, core.ErrLocked, "second Acquire")
	var locked *core.LockedError
	if assert.ErrorAs(t, err, &locked, "second Acquire") {
		assert.Equal(t, "app", locked.Holder, "the holder the refusal names")
	}
	if v, err := g.Renew(ctx); err != nil || v != core.Validity(2*time.Second) {
		t.Errorf("Renew = %v, %v", v, err)
	}
	if err := g.Release(ctx); err != nil {
		t.Fatal(err)
	}
	g2, err := b.Acquire(ctx, core.Request{Name: "lock", Identity: "other", Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if g2.Token() != 2 {
		t.Errorf("token %d, want 2", g2.Token())
	}
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	<-g2.Done()
	if !errors.Is(g2.Err(), core.ErrClosed) {
		t.Errorf("Err after Close = %v, want ErrClosed", g2.Err())
	}
	if _, err := b.Acquire(ctx, core.Request{Name: "lock", Identity: "late"}); !errors.Is(err, core.ErrClosed) {
		t.Errorf("Acquire after Close = %v, want ErrClosed", err)
	}
}

// TestTokenLimit: a lock whose next fencing token would not fit the
// Lease's int32 spec.leaseTransitions is refused with an error that says
// so, and the Lease is left as it was.
func TestTokenLimit(t *testing.T) {
	full := int32(math.MaxInt32)
	cs := fake.NewClientset(&coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "worn", Namespace: "ns"},
		Spec:       coordinationv1.LeaseSpec{LeaseTransitions: &full},
	})
	b, err := New(Config{Client: cs, Namespace: "ns", Identity: "e0", LeaseDuration: 2 * time.Second})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	defer func() { assert.NoError(t, b.Close(ctx)) }()

	for _, wait := range []bool{false, true} {
		_, err = b.Acquire(ctx, core.Request{Name: "worn", Identity: "app", Wait: wait})
		require.Error(t, err, "Acquire (wait %v) of a lock at the token limit", wait)
		assert.ErrorIs(t, err, errTokenLimit, "Acquire (wait %v)", wait)
		assert.Contains(t, err.Error(), "spec.leaseTransitions")
	}
	l, err := cs.CoordinationV1().Leases("ns").Get(ctx, "worn", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Nil(t, l.Spec.HolderIdentity, "the Lease's holder after the refusals")
	assert.Equal(t, full, *l.Spec.LeaseTransitions, "the Lease's leaseTransitions after the refusals")
}

// TestNewRejects: New refuses a configuration it cannot work with.
func TestNewRejects(t *testing.T) {
	cs := fake.NewClientset()
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no client", Config{Namespace: "ns", Identity: "e"}},
		{"no identity", Config{Client: cs, Namespace: "ns"}},
		{"identity with @", Config{Client: cs, Namespace: "ns", Identity: "a@b"}},
		{"identity with #", Config{Client: cs, Namespace: "ns", Identity: "a#b"}},
		{"no namespace", Config{Client: cs, Identity: "e"}},
		{"bad namespace", Config{Client: cs, Namespace: "Not_A_Label", Identity: "e"}},
		{"short lease", Config{Client: cs, Namespace: "ns", Identity: "e", LeaseDuration: time.Millisecond}},
		{"negative max locks", Config{Client: cs, Namespace: "ns", Identity: "e", MaxLocks: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if b, err := New(tc.cfg); err == nil {
				_ = b.Close(context.Background())
				t.Errorf("New(%+v) succeeded", tc.cfg)
			}
		})
	}
}

func TestNewValidatesIdentity(t *testing.T) {
	tests := []struct {
		name, id string
		want     error // nil: any error will do
	}{
		{"empty", "", core.ErrInvalidIdentity},
		{"tab", "e\t0", core.ErrInvalidIdentity},
		{"invalid UTF-8", "e\xff", core.ErrInvalidIdentity},
		{"too long", strings.Repeat("e", 254), core.ErrInvalidIdentity},
		{"separator @", "e@0", nil},
		{"separator #", "e#0", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := New(Config{Client: fake.NewClientset(), Namespace: "ns", Identity: tt.id})
			if err == nil {
				_ = b.Close(context.Background())
				t.Fatalf("New with identity %q succeeded", tt.id)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("New with identity %q = %v, want %v", tt.id, err, tt.want)
			}
		})
	}
}

// TestKeepsTheInformersCopy: once the watch has delivered the version a
// renewal wrote, the Backend keeps the informer's copy of it (as the
// Lease it knows and as its grant's base), not the write's answer as well.
func TestKeepsTheInformersCopy(t *testing.T) {
	// The fake clientset keeps no resourceVersions; number the writes.
	cs := fake.NewClientset()
	var rv atomic.Int64
	cs.PrependReactor("*", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if w, ok := a.(interface{ GetObject() runtime.Object }); ok {
			if l, ok := w.GetObject().(*coordinationv1.Lease); ok {
				l.ResourceVersion = strconv.FormatInt(rv.Add(1), 10)
			}
		}
		return false, nil, nil // on to the fake's own handling
	})
	b, err := New(Config{Client: cs, Namespace: "ns", Identity: "e0", LeaseDuration: 2 * time.Second})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	defer func() { assert.NoError(t, b.Close(ctx)) }()
	g, err := b.Acquire(ctx, core.Request{Name: "lock", Identity: "app"})
	require.NoError(t, err)
	_, err = g.Renew(ctx)
	require.NoError(t, err)
	written := g.(*grant).lastWritten()
	require.NotEmpty(t, written.ResourceVersion, "the renewal's answer has a resourceVersion")
	kept := func() (st, last *coordinationv1.Lease) {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.leases["lock"].obj, g.(*grant).last
	}
	require.Eventually(t, func() bool {
		item, ok, err := b.informer.GetStore().GetByKey("ns/lock")
		cached, _ := item.(*coordinationv1.Lease)
		if err != nil || !ok || cached.ResourceVersion != written.ResourceVersion {
			return false
		}
		st, last := kept()
		return st == cached && last == cached
	}, 10*time.Second, 10*time.Millisecond, "the Backend and its grant keep the informer's copy of the renewed Lease")
}
