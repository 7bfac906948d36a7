// Package image builds the end-to-end suite's container images without
// docker or a registry: it runs the same build command as the project's
// Dockerfiles (a make target with BIN set), packs the binaries into a
// one-layer image with the Dockerfile's user, entrypoint and ports, and
// writes a docker-archive tarball that `ctr images import` reads. Specs
// lists the images; dockerfile_test.go checks that each Spec says what its
// Dockerfile says, so the two cannot drift apart.
package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// File is one file of an image: Src, a file the build wrote into its BIN
// directory, goes to the absolute path Dst in the image.
type File struct {
	Src string
	Dst string
}

// Spec is one image: how its binaries are built and what its Dockerfile's
// final stage says about them.
type Spec struct {
	// Ref is the image's name, as the manifests name it.
	Ref string
	// Dockerfile is the repository-relative path of its Dockerfile, or ""
	// for an image only the suite uses (the pause image).
	Dockerfile string
	// Env and Target are the build: `Env... make Target BIN=dir` at the
	// top of the repository, as the Dockerfile's RUN line with BIN=/out.
	Env    []string
	Target string
	// GoPackage, when Target is "", is built instead with `go build` in
	// this module (CGO off) into BIN/Files[0].Src.
	GoPackage string
	Files     []File
	// User, Entrypoint and Expose are the final stage's USER, ENTRYPOINT
	// and EXPOSE (ports as "13131/tcp").
	User       string
	Entrypoint []string
	Expose     []string
}

// nonroot is distroless's nonroot user, numerically: a kubelet can check a
// numeric user against runAsNonRoot, but not a user name.
const nonroot = "65532:65532"

// Specs are the suite's images: the elector's and the examples' (the images
// a user builds with Dockerfile.elector and examples/Dockerfile) and the
// pod sandbox's.
var Specs = []Spec{
	{
		Ref:        "mpsync/elector:latest",
		Dockerfile: "Dockerfile.elector",
		Target:     "elector",
		Files:      []File{{Src: "elector", Dst: "/elector"}},
		User:       nonroot,
		Entrypoint: []string{"/elector"},
		Expose:     []string{"13131/tcp"},
	},
	{
		Ref:        "mpsync/examples:latest",
		Dockerfile: "examples/Dockerfile",
		Env:        []string{"CGO_ENABLED=0"},
		Target:     "examples",
		Files:      []File{{Src: "lock", Dst: "/lock"}, {Src: "election", Dst: "/election"}, {Src: "inprocess", Dst: "/inprocess"}},
		User:       nonroot,
		Entrypoint: []string{"/lock"},
	},
	{
		Ref:        PauseRef,
		GoPackage:  "./cmd/pause",
		Files:      []File{{Src: "pause", Dst: "/pause"}},
		User:       nonroot,
		Entrypoint: []string{"/pause"},
	},
}

// PauseRef is the pod sandbox image: containerd's sandbox_image.
const PauseRef = "mpsync.test/pause:e2e"

var (
	// ErrBuild is a failed build command.
	ErrBuild = errors.New("image: build failed")
	// ErrPack is a failure to pack or write an image.
	ErrPack = errors.New("image: pack failed")
)

// Build runs s's build command with the repository at root and the module
// of this package at moddir, writing the binaries into bin.
func (s Spec) Build(root, moddir, bin string) error {
	var cmd *exec.Cmd
	if s.Target != "" {
		cmd = exec.Command("make", s.Target, "BIN="+bin)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), s.Env...)
	} else {
		cmd = exec.Command("go", "build", "-trimpath", "-o", filepath.Join(bin, s.Files[0].Src), s.GoPackage)
		cmd.Dir = moddir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s: %s: %v\n%s", ErrBuild, s.Ref, cmd, err, out)
	}
	return nil
}

// Pack packs the files of s from bin into a one-layer image with s's
// configuration and writes it to file as a docker-archive tarball named
// s.Ref.
func (s Spec) Pack(bin, file string) error {
	ref, err := name.ParseReference(s.Ref)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrPack, s.Ref, err)
	}
	layer, err := s.layer(bin)
	if err != nil {
		return err
	}
	// The configuration first, then the layer: AppendLayers adds its
	// diff ID and history entry to the configuration.
	img, err := mutate.ConfigFile(empty.Image, s.config())
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrPack, s.Ref, err)
	}
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrPack, s.Ref, err)
	}
	if err := tarball.WriteToFile(file, ref, img); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrPack, s.Ref, err)
	}
	return nil
}

// config is the image configuration of s.
func (s Spec) config() *v1.ConfigFile {
	ports := make(map[string]struct{}, len(s.Expose))
	for _, p := range s.Expose {
		ports[p] = struct{}{}
	}
	return &v1.ConfigFile{
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Created:      v1.Time{Time: time.Unix(0, 0).UTC()},
		RootFS:       v1.RootFS{Type: "layers"},
		Config: v1.Config{
			Entrypoint:   slices.Clone(s.Entrypoint),
			User:         s.User,
			ExposedPorts: ports,
			Env:          []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			WorkingDir:   "/",
		},
	}
}

// layer is the one layer of s: its files, owned by root, executable by all.
func (s Spec) layer(bin string) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range s.Files {
		data, err := os.ReadFile(filepath.Join(bin, f.Src))
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrPack, s.Ref, err)
		}
		hdr := &tar.Header{Name: f.Dst[1:], Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrPack, s.Ref, err)
		}
		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrPack, s.Ref, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrPack, s.Ref, err)
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrPack, s.Ref, err)
	}
	return layer, nil
}
