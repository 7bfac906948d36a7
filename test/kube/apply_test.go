package kube_test

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/mpsync/mpsync/kube"
)

// applyFile creates, as the admin, every object of the YAML file at path in
// namespace ns (as `kubectl create -n ns -f path` would) and returns them
// as the API server stored them.
func applyFile(t *testing.T, ns, path string) []*unstructured.Unstructured {
	t.Helper()
	c := needControlPlane(t)
	rc, err := kube.RESTConfig(c.adminKubeconfig)
	require.NoError(t, err)
	dyn, err := dynamic.NewForConfig(rc)
	require.NoError(t, err)
	groups, err := restmapper.GetAPIGroupResources(c.admin(t).Discovery())
	require.NoError(t, err, "discovery")
	mapper := restmapper.NewDiscoveryRESTMapper(groups)

	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	dec := yaml.NewYAMLOrJSONDecoder(f, 4096)
	var created []*unstructured.Unstructured
	for {
		var obj unstructured.Unstructured
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("%s: %v", path, err)
		}
		if len(obj.Object) == 0 {
			continue // an empty document
		}
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s: %s %s: %v", path, gvk, obj.GetName(), err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		out, err := dyn.Resource(m.Resource).Namespace(ns).Create(ctx, &obj, metav1.CreateOptions{})
		cancel()
		if err != nil {
			t.Fatalf("%s: creating %s %q in %s: %v", path, gvk.Kind, obj.GetName(), ns, err)
		}
		created = append(created, out)
	}
	if len(created) == 0 {
		t.Fatalf("%s holds no objects", path)
	}
	return created
}
