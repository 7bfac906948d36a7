package mpsynctest_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A module outside this one can use the fake in its own unit tests: build
// and test a scratch module that requires mpsync through a replace.
func TestUsableFromAnotherModule(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := map[string]string{
		"go.mod": "module example.com/app\n\ngo 1.26\n\nrequire github.com/mpsync/mpsync v0.0.0\n\nreplace github.com/mpsync/mpsync => " + root + "\n",
		"app.go": `package app

import (
	"context"

	"github.com/mpsync/mpsync"
)

// Once runs fn while holding the lock "jobs".
func Once(ctx context.Context, opts []mpsync.Option, fn func(context.Context)) error {
	l, err := mpsync.NewLock("jobs", opts...)
	if err != nil {
		return err
	}
	held, err := l.Lock(ctx)
	if err != nil {
		return err
	}
	defer l.Unlock()
	fn(held)
	return nil
}
`,
		"app_test.go": `package app

import (
	"context"
	"testing"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/mpsynctest"
)

func TestOnce(t *testing.T) {
	f := mpsynctest.NewElector()
	defer f.Close()
	ran := false
	err := Once(context.Background(), []mpsync.Option{mpsync.WithTransport(f.Transport()), mpsync.WithIdentity("app")}, func(ctx context.Context) {
		if id, ok := f.Holder("jobs"); !ok || id != "app" {
			t.Errorf("holder = %q, %v; want app", id, ok)
		}
		ran = true
	})
	if err != nil || !ran {
		t.Fatalf("Once = %v, ran = %v", err, ran)
	}
	if _, ok := f.Holder("jobs"); ok {
		t.Error("still held after Once")
	}
}
`,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "test", "-count=1", "./...")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go test in a scratch module: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "ok") {
		t.Fatalf("go test in a scratch module printed no ok line:\n%s", out)
	}
}
