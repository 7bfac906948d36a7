package faults

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpsync/mpsync/internal/electorproc"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/mpsync/mpsync/internal/controlplane"
	"github.com/mpsync/mpsync/kube"
)

// controlPlane is a kube-apiserver and etcd of this test's own, started by
// hack/controlplane/start.sh in a directory of the round. The harness does
// not use the control plane of $MPSYNC_CONTROLPLANE, which the other test
// packages share while they run in parallel with this one: killing that
// API server would fail their tests.
type controlPlane struct {
	dir               string
	server            string // https://127.0.0.1:PORT
	hostport          string // 127.0.0.1:PORT
	adminKubeconfig   string
	electorKubeconfig string
	admin             kubernetes.Interface
	readyz            *http.Client
	adminToken        string

	argv      []string          // kube-apiserver's command line, for restarts
	pid       int               // the running kube-apiserver, or the last one
	restarted *electorproc.Proc // the kube-apiserver this harness restarted, if any
}

// startControlPlane starts a fresh control plane in dir and registers its
// stop with t.Cleanup.
func startControlPlane(t *testing.T, dir string) (*controlPlane, error) {
	c := &controlPlane{dir: dir}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	t.Cleanup(c.stop)
	log, err := os.Create(filepath.Join(dir, "controlplane.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := exec.Command(filepath.Join(repoRoot, "hack", "controlplane", "start.sh"), dir)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(log.Name())
		return nil, fmt.Errorf("hack/controlplane/start.sh %s: %v\n%s", dir, err, b)
	}
	if err := c.open(filepath.Join(dir, "env")); err != nil {
		return nil, err
	}
	// The API server's own command line, to restart it the same way.
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", c.pid))
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver command line: %w", err)
	}
	c.argv = strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	return c, nil
}

// sharedControlPlane returns the control plane of $MPSYNC_CONTROLPLANE,
// for tests that inject no fault into it.
func sharedControlPlane() (*controlPlane, error) {
	c := &controlPlane{}
	return c, c.open(controlPlaneEnv())
}

// open reads the env file start.sh wrote and makes the admin's clients.
func (c *controlPlane) open(path string) error {
	env, err := controlplane.ReadEnv(path)
	if err != nil {
		return err
	}
	c.server = env["MPSYNC_KUBE_SERVER"]
	c.adminKubeconfig = env["MPSYNC_ADMIN_KUBECONFIG"]
	c.electorKubeconfig = env["MPSYNC_ELECTOR_KUBECONFIG"]
	c.adminToken = env["MPSYNC_ADMIN_TOKEN"]
	c.pid, _ = strconv.Atoi(env["MPSYNC_APISERVER_PID"])
	u, err := url.Parse(c.server)
	if err != nil || u.Host == "" || c.pid == 0 || c.adminToken == "" || env["MPSYNC_KUBE_CA"] == "" ||
		c.adminKubeconfig == "" || c.electorKubeconfig == "" {
		return fmt.Errorf("%s is incomplete: %v", path, env)
	}
	c.hostport = u.Host
	ca, err := os.ReadFile(env["MPSYNC_KUBE_CA"])
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return fmt.Errorf("%s: no certificate", env["MPSYNC_KUBE_CA"])
	}
	c.readyz = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		DisableKeepAlives: true,
	}}
	if c.admin, err = c.clientset(c.adminKubeconfig); err != nil {
		return err
	}
	return nil
}

// clientset returns a clientset for a kubeconfig, configured as the
// elector configures its own, with a timeout on every request.
func (c *controlPlane) clientset(kubeconfig string) (kubernetes.Interface, error) {
	rc, err := kube.RESTConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.Timeout = 10 * time.Second
	return kubernetes.NewForConfig(rc)
}

// stop stops the control plane with hack/controlplane/stop.sh, which finds
// the processes by their pid files, and reaps a restarted API server.
func (c *controlPlane) stop() {
	cmd := exec.Command(filepath.Join(repoRoot, "hack", "controlplane", "stop.sh"), c.dir)
	if log, err := os.OpenFile(filepath.Join(c.dir, "controlplane.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); err == nil {
		cmd.Stdout, cmd.Stderr = log, log
		defer log.Close()
	}
	_ = cmd.Run()
	if c.restarted != nil {
		c.restarted.Stop(5 * time.Second) // normally already gone
	}
}

// apiserverReady reports whether the API server answers /readyz with ok.
func (c *controlPlane) apiserverReady() bool {
	req, err := http.NewRequest(http.MethodGet, c.server+"/readyz", nil)
	if err != nil {
		return false
	}
	req.Header.Set("Authorization", "Bearer "+c.adminToken)
	resp, err := c.readyz.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
	return resp.StatusCode == http.StatusOK && strings.TrimSpace(string(b)) == "ok"
}

// killAPIServer SIGKILLs the API server and waits until it is gone.
func (c *controlPlane) killAPIServer() error {
	if c.restarted != nil {
		c.restarted.Kill()
		return nil
	}
	if err := syscall.Kill(c.pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill kube-apiserver %d: %w", c.pid, err)
	}
	// start.sh's child, not ours: init reaps it.
	return electorproc.Poll("kube-apiserver exits", waitFor, 10*time.Millisecond, func() bool { return !alive(c.pid) })
}

// startAPIServer starts the API server again with the same command line
// (same port, certificates in its --cert-dir, etcd), records its pid where
// stop.sh looks for it, and waits until it is ready.
func (c *controlPlane) startAPIServer() error {
	p, err := electorproc.Run(electorproc.Spec{Name: "kube-apiserver", Argv: c.argv, Log: filepath.Join(c.dir, "kube-apiserver.log")})
	if err != nil {
		return err
	}
	c.restarted, c.pid = p, p.Pid()
	if err := os.WriteFile(filepath.Join(c.dir, "kube-apiserver.pid"), []byte(strconv.Itoa(c.pid)+"\n"), 0o644); err != nil {
		return err
	}
	return electorproc.Poll("restarted kube-apiserver ready", waitFor, 50*time.Millisecond, func() bool {
		return !p.HasExited() && c.apiserverReady()
	})
}

// alive reports whether pid runs and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...: comm may hold spaces, so look after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// namespace creates a namespace for a round, applies the shipped RBAC
// (examples/kubernetes/rbac.yaml) into it as the admin, and waits until
// the elector user may use Leases there.
func (c *controlPlane) namespace(prefix string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	name := fmt.Sprintf("%s-%06x", prefix, rand.Uint32()&0xffffff)
	if _, err := c.admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("creating namespace %s: %w", name, err)
	}
	if err := c.applyRBAC(ctx, name); err != nil {
		return "", err
	}
	el, err := c.clientset(c.electorKubeconfig)
	if err != nil {
		return "", err
	}
	// The API server's RBAC authorizer learns of the binding from its own
	// watch: wait until it applies.
	err = electorproc.Poll("the elector user may list leases in "+name, waitFor, 20*time.Millisecond, func() bool {
		_, err := el.CoordinationV1().Leases(name).List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil
	})
	return name, err
}

// applyRBAC creates the objects of examples/kubernetes/rbac.yaml in ns.
func (c *controlPlane) applyRBAC(ctx context.Context, ns string) error {
	path := filepath.Join(repoRoot, "examples", "kubernetes", "rbac.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	rd := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	n := 0
	for {
		doc, err := rd.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		switch o := obj.(type) {
		case *corev1.ServiceAccount:
			_, err = c.admin.CoreV1().ServiceAccounts(ns).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.Role:
			_, err = c.admin.RbacV1().Roles(ns).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			_, err = c.admin.RbacV1().RoleBindings(ns).Create(ctx, o, metav1.CreateOptions{})
		default:
			err = fmt.Errorf("unexpected object %T", obj)
		}
		if err != nil {
			return fmt.Errorf("%s into %s: %w", path, ns, err)
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("%s holds no objects", path)
	}
	return nil
}

// proxiedKubeconfig writes a copy of the elector's kubeconfig whose server
// is the proxy at addr, and returns its path.
func (c *controlPlane) proxiedKubeconfig(name, addr string) (string, error) {
	b, err := os.ReadFile(c.electorKubeconfig)
	if err != nil {
		return "", err
	}
	s := strings.Replace(string(b), "server: "+c.server, "server: https://"+addr, 1)
	if s == string(b) {
		return "", fmt.Errorf("%s: no line %q", c.electorKubeconfig, "server: "+c.server)
	}
	path := filepath.Join(c.dir, name+".kubeconfig")
	return path, os.WriteFile(path, []byte(s), 0o600)
}
