package electorproc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

// ElectorPackage is the elector's command, in the sidecar module.
const ElectorPackage = "github.com/mpsync/mpsync/sidecar/cmd/elector"

// Build builds pkg (an import path) into out, a static binary, from the
// module directory mod of the repository ("sidecar", "test", "." for the
// root module), found by walking up from the working directory. Tests of
// any module can so build a command of another: a module's directory
// resolves its own requirements, with GOWORK=off as in CI.
func Build(out, mod, pkg string) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = filepath.Join(root, mod)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s (in %s): %v\n%s", pkg, cmd.Dir, err, b)
	}
	return nil
}

// BuildElector builds the elector into out.
func BuildElector(out string) error { return Build(out, "sidecar", ElectorPackage) }

// RepoRoot is the repository's top directory: the nearest directory, from
// the working directory up, that holds sidecar/go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "sidecar", "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("electorproc: no sidecar/go.mod above the working directory")
		}
		dir = parent
	}
}

// ElectorBin is the elector the tests of a package run: $MPSYNC_ELECTOR_BIN
// (as hack/test.sh builds it), else one built into a temporary directory,
// which done removes.
func ElectorBin() (bin string, done func(), err error) {
	if bin := os.Getenv("MPSYNC_ELECTOR_BIN"); bin != "" {
		return bin, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "mpsync-elector-")
	if err != nil {
		return "", nil, err
	}
	done = func() { _ = os.RemoveAll(dir) }
	bin = filepath.Join(dir, "elector")
	if err := BuildElector(bin); err != nil {
		done()
		return "", nil, err
	}
	return bin, done, nil
}

// RunTests is the TestMain of a package whose tests run elector processes:
// it sets *bin to ElectorBin, runs the tests, and fails them if goroutines
// are left behind once they passed. It does not return.
func RunTests(m *testing.M, bin *string) {
	b, done, err := ElectorBin()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*bin = b
	code := m.Run()
	done()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
