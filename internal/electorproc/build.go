package electorproc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
