package kube_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	authv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// TestExampleManifests applies every manifest of examples/kubernetes/ to the
// real API server, as `kubectl apply -n NS -f examples/kubernetes/` would
// (rbac.yaml is applied by namespace()), and checks that they were accepted
// and say what the README promises. No nodes run here: the pods stay
// pending, which does not matter.
func TestExampleManifests(t *testing.T) {
	ns := namespace(t)
	dir := filepath.Join(repoRoot, "examples", "kubernetes")
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	require.NoError(t, err)
	deployments := map[string]*appsv1.Deployment{}
	for _, f := range files {
		if filepath.Base(f) == "rbac.yaml" {
			continue
		}
		for _, obj := range applyFile(t, ns, f) {
			if obj.GetKind() != "Deployment" {
				continue
			}
			var d appsv1.Deployment
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, &d); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			deployments[filepath.Base(f)] = &d
		}
	}
	for _, want := range []string{"lock-deployment.yaml", "election-deployment.yaml"} {
		d := deployments[want]
		if d == nil {
			t.Errorf("%s: no Deployment", want)
			continue
		}
		t.Run(strings.TrimSuffix(want, ".yaml"), func(t *testing.T) { checkDeployment(t, d) })
	}
	checkServiceAccountRights(t, ns, "mpsync-elector")

	// The README's instructions name the files and the namespace step.
	readme, err := os.ReadFile(filepath.Join(dir, "README.md"))
	require.NoError(t, err)
	for _, s := range []string{"kubectl create namespace", "kubectl apply -n", "-f examples/kubernetes/"} {
		if !strings.Contains(string(readme), s) {
			t.Errorf("README.md does not say %q", s)
		}
	}
}

func checkDeployment(t *testing.T, d *appsv1.Deployment) {
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
		t.Errorf("replicas = %v, want 3", d.Spec.Replicas)
	}
	pod := d.Spec.Template.Spec
	if pod.ServiceAccountName != "mpsync-elector" {
		t.Errorf("serviceAccountName = %q, want mpsync-elector", pod.ServiceAccountName)
	}
	all := append(slices.Clone(pod.InitContainers), pod.Containers...)
	var elector, app *corev1.Container
	for i := range all {
		switch {
		case strings.HasPrefix(all[i].Image, "mpsync/elector:"):
			elector = &all[i]
		case strings.HasPrefix(all[i].Image, "mpsync/examples:"):
			app = &all[i]
		}
	}
	if elector == nil || app == nil {
		t.Fatalf("want an mpsync/elector sidecar and an mpsync/examples app container; have %d containers", len(all))
	}
	if elector.Image != "mpsync/elector:latest" || app.Image != "mpsync/examples:latest" {
		t.Errorf("images %q and %q, want mpsync/elector:latest and mpsync/examples:latest", elector.Image, app.Image)
	}
	if !slices.Contains(elector.Args, "--backend=kubernetes") {
		t.Errorf("elector args %q lack --backend=kubernetes", elector.Args)
	}
	if slices.ContainsFunc(pod.InitContainers, func(c corev1.Container) bool { return c.Name == elector.Name }) &&
		(elector.RestartPolicy == nil || *elector.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
		t.Errorf("the elector is an init container without restartPolicy Always: it would block the app")
	}
	for _, c := range []*corev1.Container{elector, app} {
		env := map[string]string{}
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
				env[e.Name] = e.ValueFrom.FieldRef.FieldPath
			}
		}
		if env["POD_NAME"] != "metadata.name" || env["POD_NAMESPACE"] != "metadata.namespace" {
			t.Errorf("container %s: POD_NAME and POD_NAMESPACE from the downward API = %v", c.Name, env)
		}
	}
	// The elector stays on the pod's loopback (guarantee 7), so it is
	// probed from inside its container.
	for _, a := range elector.Args {
		if strings.HasPrefix(a, "--listen=") && !strings.HasPrefix(a, "--listen=127.0.0.1:") {
			t.Errorf("elector %s: it must listen on the pod's loopback only", a)
		}
	}
	for _, p := range []struct {
		kind     string
		probe    *corev1.Probe
		endpoint string
	}{{"startup", elector.StartupProbe, "healthz"}, {"liveness", elector.LivenessProbe, "healthz"}, {"readiness", elector.ReadinessProbe, "readyz"}} {
		want := []string{"/elector", "probe", p.endpoint}
		if p.probe == nil || p.probe.Exec == nil || !slices.Equal(p.probe.Exec.Command, want) {
			t.Errorf("elector %s probe = %+v, want exec %q", p.kind, p.probe, want)
		}
	}
}

// checkServiceAccountRights asks the API server what the ServiceAccount
// name of ns may do with Leases: get, list, watch, create and update in ns
// (what the elector and the in-process Transport need), nothing else there
// and nothing at all in another namespace.
func checkServiceAccountRights(t *testing.T, ns, name string) {
	t.Helper()
	admin := cp.admin(t)
	user := "system:serviceaccount:" + ns + ":" + name
	for verb, want := range map[string]bool{
		"get": true, "list": true, "watch": true, "create": true, "update": true,
		"delete": false, "patch": false, "deletecollection": false,
	} {
		for _, space := range []string{ns, "default"} {
			sar := &authv1.SubjectAccessReview{Spec: authv1.SubjectAccessReviewSpec{
				User:   user,
				Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
				ResourceAttributes: &authv1.ResourceAttributes{
					Namespace: space, Verb: verb, Group: "coordination.k8s.io", Resource: "leases",
				},
			}}
			ctx, cancel := context.WithTimeout(bg(), waitFor)
			res, err := admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
			cancel()
			require.NoError(t, err)
			if w := want && space == ns; res.Status.Allowed != w {
				t.Errorf("%s may %s leases in %s: %v, want %v", user, verb, space, res.Status.Allowed, w)
			}
		}
	}
}
