// Command pack builds the end-to-end suite's images (image.Specs) from the
// repository at -root and writes each as a docker-archive tarball into
// -out, for `ctr images import`. It lists them in -out/index, one line per
// image: the tarball and the image's name.
//
// Usage (in test/e2e, GOWORK=off): go run ./cmd/pack -root ../.. -out DIR
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/mpsync/mpsync/test/e2e/image"
)

func main() {
	root := flag.String("root", "../..", "top of the mpsync repository")
	out := flag.String("out", "", "directory for the tarballs (and the binaries, in out/bin)")
	flag.Parse()
	if *out == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*root, *out); err != nil {
		fmt.Fprintln(os.Stderr, "pack:", err)
		os.Exit(1)
	}
}

// run builds and packs every image of image.Specs.
func run(root, out string) error {
	moddir, err := os.Getwd()
	if err != nil {
		return err
	}
	if root, err = filepath.Abs(root); err != nil {
		return err
	}
	if out, err = filepath.Abs(out); err != nil {
		return err
	}
	bin := filepath.Join(out, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	var index strings.Builder
	for _, s := range image.Specs {
		if err := s.Build(root, moddir, bin); err != nil {
			return err
		}
		file := filepath.Join(out, tarName(s.Ref))
		if err := s.Pack(bin, file); err != nil {
			return err
		}
		fmt.Fprintln(&index, file, s.Ref)
	}
	return os.WriteFile(filepath.Join(out, "index"), []byte(index.String()), 0o644)
}

// tarName is the tarball's file name for an image name: mpsync/elector:latest
// is mpsync_elector_latest.tar.
func tarName(ref string) string {
	return strings.NewReplacer("/", "_", ":", "_").Replace(ref) + ".tar"
}
