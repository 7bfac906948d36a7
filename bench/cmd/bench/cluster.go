package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mpsync/mpsync/internal/electorproc"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mpsync/mpsync/bench/internal/measure"
	"github.com/mpsync/mpsync/internal/controlplane"
)

// cluster is the control plane that hack/controlplane/start.sh started, as
// its env file describes it.
type cluster struct {
	env        map[string]string
	admin      *kubernetes.Clientset
	elector    *kubernetes.Clientset // with the elector user's rights
	electorCfg string                // the elector user's kubeconfig
	https      *http.Client          // trusts the API server's CA
	server     string
	token      string // admin bearer token, for /metrics
}

func openCluster(envPath string) (*cluster, error) {
	env, err := controlplane.ReadEnv(envPath)
	if err != nil {
		return nil, err
	}
	for _, k := range []string{"MPSYNC_KUBE_SERVER", "MPSYNC_ADMIN_KUBECONFIG", "MPSYNC_ELECTOR_KUBECONFIG", "MPSYNC_ADMIN_TOKEN", "MPSYNC_KUBE_CA"} {
		if env[k] == "" {
			return nil, fmt.Errorf("%s: %s is missing", envPath, k)
		}
	}
	c := &cluster{env: env, server: env["MPSYNC_KUBE_SERVER"], token: env["MPSYNC_ADMIN_TOKEN"], electorCfg: env["MPSYNC_ELECTOR_KUBECONFIG"]}
	if c.admin, err = clientset(env["MPSYNC_ADMIN_KUBECONFIG"]); err != nil {
		return nil, err
	}
	if c.elector, err = clientset(c.electorCfg); err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(env["MPSYNC_KUBE_CA"])
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%s: no certificate", env["MPSYNC_KUBE_CA"])
	}
	c.https = &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	return c, nil
}

func clientset(kubeconfig string) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.QPS = -1 // no client-side rate limit: it would bias the update floor
	return kubernetes.NewForConfig(cfg)
}

// prepare creates the namespace and applies the RBAC manifest in it (as
// `kubectl apply -n ns -f rbacPath` would on a fresh cluster), then waits
// until the elector user may use leases there.
func (c *cluster) prepare(ctx context.Context, ns, rbacPath string) error {
	_, err := c.admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	manifest, err := os.ReadFile(rbacPath)
	if err != nil {
		return err
	}
	dec := scheme.Codecs.UniversalDeserializer()
	for doc := range strings.SplitSeq(string(manifest), "\n---") {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		obj, _, err := dec.Decode([]byte(doc), nil, nil)
		if err != nil {
			return fmt.Errorf("%s: %w", rbacPath, err)
		}
		switch o := obj.(type) {
		case *corev1.ServiceAccount:
			o.Namespace = ns
			_, err = c.admin.CoreV1().ServiceAccounts(ns).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.Role:
			o.Namespace = ns
			_, err = c.admin.RbacV1().Roles(ns).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			o.Namespace = ns
			_, err = c.admin.RbacV1().RoleBindings(ns).Create(ctx, o, metav1.CreateOptions{})
		default:
			return fmt.Errorf("%s: unexpected object %T", rbacPath, obj)
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("apply %s: %w", rbacPath, err)
		}
	}
	// RBAC takes effect when the authorizer's informers catch up.
	var listErr error
	if err := electorproc.Poll("the elector user may list leases in "+ns, 30*time.Second, 200*time.Millisecond, func() bool {
		_, listErr = c.elector.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{})
		return listErr == nil || ctx.Err() != nil
	}); err != nil || listErr != nil {
		return fmt.Errorf("the elector user still cannot list leases in %s: %w", ns, errors.Join(err, listErr))
	}
	return nil
}

func stripComments(doc string) string {
	var b strings.Builder
	for line := range strings.Lines(doc) {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// get fetches path from the API server as the admin.
func (c *cluster) get(ctx context.Context, path string) ([]byte, error) {
	return getWith(ctx, c.https, c.server+path, c.token)
}

// scrape is one reading of the API server's lease metrics.
type scrape struct {
	mono     int64              // measure.Now() when read
	requests map[string]float64 // apiserver_request_total{resource="leases"} by verb
	conflict float64            // the same with code="409", all verbs
	watches  float64            // open watches on leases
}

func (c *cluster) scrape(ctx context.Context) (scrape, error) {
	body, err := c.get(ctx, "/metrics")
	if err != nil {
		return scrape{}, err
	}
	now := measure.Now()
	samples, err := measure.ParseMetrics(bytes.NewReader(body), "apiserver_request_total", "apiserver_longrunning_requests")
	if err != nil {
		return scrape{}, err
	}
	return scrape{mono: now, requests: measure.LeaseRequests(samples), conflict: measure.LeaseConflicts(samples), watches: measure.LeaseWatches(samples)}, nil
}

// version returns the API server's gitVersion.
func (c *cluster) version(ctx context.Context) string {
	body, err := c.get(ctx, "/version")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	var v struct {
		GitVersion string `json:"gitVersion"`
	}
	if json.Unmarshal(body, &v) != nil || v.GitVersion == "" {
		return "unknown"
	}
	return v.GitVersion
}

// etcdVersion returns the etcd server's version.
func (c *cluster) etcdVersion(ctx context.Context) string {
	ep := c.env["MPSYNC_ETCD_ENDPOINT"]
	if ep == "" {
		return "unknown"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ep+"/version", nil)
	if err != nil {
		return "unknown"
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "unknown"
	}
	defer resp.Body.Close()
	var v struct {
		Server string `json:"etcdserver"`
	}
	if json.NewDecoder(resp.Body).Decode(&v) != nil || v.Server == "" {
		return "unknown"
	}
	return "v" + v.Server + c.etcdSync()
}

// etcdSync says, from the running etcd's own command line, whether it syncs
// its log to disk on every commit, as clusters run it: ", fsync on" or
// ", fsync off (--unsafe-no-fsync)"; empty if its process cannot be read.
func (c *cluster) etcdSync() string {
	cmdline, err := os.ReadFile("/proc/" + c.env["MPSYNC_ETCD_PID"] + "/cmdline")
	if err != nil || len(cmdline) == 0 {
		return ""
	}
	for _, arg := range strings.Split(string(cmdline), "\x00") {
		if arg == "--unsafe-no-fsync" {
			return ", fsync off (--unsafe-no-fsync)"
		}
	}
	return ", fsync on"
}

// updateFloor measures the API server's own latency for conditional
// Lease updates, with client-go and no client-side rate limit, for d: in
// groups of writes updates back to back (each conditioned on the version
// the one before it returned), a pause of pace between groups. It returns
// the median time of a group and how many groups it timed. With writes 1
// and pace 0 that is one update back to back, the raw rate; with writes 2
// and the round trips' pace, the least a paced Lock+Unlock round trip,
// a take and a release, can cost.
func (c *cluster) updateFloor(ctx context.Context, ns, name string, d, pace time.Duration, writes int) (time.Duration, int, error) {
	leases := c.elector.CoordinationV1().Leases(ns)
	holder := "floor"
	l, err := leases.Create(ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder},
	}, metav1.CreateOptions{})
	if err != nil {
		return 0, 0, fmt.Errorf("create lease %s: %w", name, err)
	}
	var rtts []float64
	start := time.Now()
	for time.Since(start) < d {
		t := time.Now()
		for range writes {
			secs := int32(15)
			l.Spec.LeaseDurationSeconds = &secs
			now := metav1.NewMicroTime(time.Now())
			l.Spec.RenewTime = &now
			if l, err = leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
				return 0, 0, fmt.Errorf("update lease %s: %w", name, err)
			}
		}
		rtts = append(rtts, float64(time.Since(t)))
		if pace > 0 {
			if err := sleep(ctx, pace); err != nil {
				return 0, 0, err
			}
		}
	}
	return time.Duration(measure.Summarize(rtts).Median), len(rtts), nil
}

// leaseWatch records, on the CLOCK_MONOTONIC of measure.Now, when the
// harness sees each change of one Lease through a watch of its own: the
// dead leader's last renewal, for the crash failover.
type leaseWatch struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	seen   []int64
	err    error
}

// watchLease starts watching the Lease name in ns. Stop it with stop.
func (c *cluster) watchLease(ctx context.Context, ns, name string) (*leaseWatch, error) {
	ctx, cancel := context.WithCancel(ctx)
	w, err := c.admin.CoordinationV1().Leases(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch lease %s: %w", name, err)
	}
	lw := &leaseWatch{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(lw.done)
		defer w.Stop()
		for {
			select {
			case ev, ok := <-w.ResultChan():
				now := measure.Now()
				if !ok {
					lw.mu.Lock()
					if ctx.Err() == nil {
						lw.err = errors.New("the watch ended early")
					}
					lw.mu.Unlock()
					return
				}
				if ev.Type == watch.Added || ev.Type == watch.Modified {
					lw.mu.Lock()
					lw.seen = append(lw.seen, now)
					lw.mu.Unlock()
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return lw, nil
}

// stop ends the watch and waits for it.
func (lw *leaseWatch) stop() {
	lw.cancel()
	<-lw.done
}

// lastBefore returns the time of the last change seen before t.
func (lw *leaseWatch) lastBefore(t int64) (int64, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	var last int64
	for _, s := range lw.seen {
		if s < t {
			last = s
		}
	}
	if last == 0 {
		if lw.err != nil {
			return 0, lw.err
		}
		return 0, errors.New("saw no change of the lease before the signal")
	}
	return last, nil
}
