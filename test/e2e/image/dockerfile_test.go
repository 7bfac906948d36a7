package image

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// dockerfile is what a Dockerfile says about the image's build and its
// final stage, in Spec's terms.
type dockerfile struct {
	env        []string // before `make` on the build stage's RUN line
	target     string
	bin        string // BIN= on that line
	files      []File // the final stage's COPY --from=build, /out/X -> Dst
	user       string
	entrypoint []string
	expose     []string
}

// instructions returns the Dockerfile's instructions, one per element,
// continuation lines joined and comments left out.
func instructions(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var out []string
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if body, ok := strings.CutSuffix(line, "\\"); ok {
			cur.WriteString(body + " ")
			continue
		}
		cur.WriteString(line)
		out = append(out, cur.String())
		cur.Reset()
	}
	require.NoError(t, sc.Err())
	return out
}

// parseDockerfile reads the Dockerfile at path: the RUN line of its build
// stage that runs make, and its final stage.
func parseDockerfile(t *testing.T, path string) dockerfile {
	t.Helper()
	var d dockerfile
	stage := ""
	for _, ins := range instructions(t, path) {
		word, rest, _ := strings.Cut(ins, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(word) {
		case "FROM":
			stage = "final"
			if f := strings.Fields(rest); len(f) == 3 && strings.EqualFold(f[1], "AS") {
				stage = f[2]
			}
		case "RUN":
			if stage == "build" && strings.Contains(" "+rest+" ", " make ") {
				d.parseMake(t, rest)
			}
		case "COPY":
			if stage == "final" {
				d.parseCopy(t, rest)
			}
		case "USER":
			d.user = rest
		case "ENTRYPOINT":
			require.NoError(t, json.Unmarshal([]byte(rest), &d.entrypoint), "ENTRYPOINT must be exec form: %s", rest)
		case "EXPOSE":
			for _, p := range strings.Fields(rest) {
				if !strings.Contains(p, "/") {
					p += "/tcp"
				}
				d.expose = append(d.expose, p)
			}
		}
	}
	return d
}

// parseMake reads `ENV=... make TARGET BIN=DIR`.
func (d *dockerfile) parseMake(t *testing.T, run string) {
	f := strings.Fields(run)
	i := slices.Index(f, "make")
	if i > 0 {
		d.env = f[:i]
	}
	require.Len(t, f[i+1:], 2, "want `make TARGET BIN=DIR`: %s", run)
	d.target = f[i+1]
	bin, ok := strings.CutPrefix(f[i+2], "BIN=")
	require.True(t, ok, "want BIN=DIR after the target: %s", run)
	d.bin = bin
}

// parseCopy reads `--from=build SRC... DST` (DST a directory when it ends
// in / or there are several sources).
func (d *dockerfile) parseCopy(t *testing.T, args string) {
	f := strings.Fields(args)
	require.Equal(t, "--from=build", f[0], "the final stage copies only from the build stage: %s", args)
	srcs, dst := f[1:len(f)-1], f[len(f)-1]
	for _, src := range srcs {
		rel, ok := strings.CutPrefix(src, d.bin+"/")
		require.True(t, ok, "COPY source %s is not in BIN (%s)", src, d.bin)
		to := dst
		if strings.HasSuffix(dst, "/") || len(srcs) > 1 {
			to = strings.TrimSuffix(dst, "/") + "/" + rel
		}
		d.files = append(d.files, File{Src: rel, Dst: to})
	}
}

// TestSpecsMatchDockerfiles fails when an image the suite packs is not
// built and laid out as its Dockerfile builds it: the same make target and
// environment, the same files at the same paths, user, entrypoint and
// ports.
func TestSpecsMatchDockerfiles(t *testing.T) {
	checked := 0
	for _, s := range Specs {
		if s.Dockerfile == "" {
			continue
		}
		checked++
		t.Run(s.Dockerfile, func(t *testing.T) {
			d := parseDockerfile(t, filepath.Join("..", "..", "..", s.Dockerfile))
			assert.Equal(t, s.Target, d.target, "make target")
			assert.Equal(t, s.Env, d.env, "environment of make")
			assert.Equal(t, s.Files, d.files, "files copied into the final stage")
			assert.Equal(t, s.User, d.user, "USER")
			assert.Equal(t, s.Entrypoint, d.entrypoint, "ENTRYPOINT")
			assert.Equal(t, s.Expose, d.expose, "EXPOSE")
		})
	}
	assert.Equal(t, 2, checked, "the elector's and the examples' Dockerfiles")
}

// TestParseDockerfileSeesDrift shows the check can fail: a Dockerfile that
// builds another target, copies to another path and runs as another user
// does not match the elector's Spec.
func TestParseDockerfileSeesDrift(t *testing.T) {
	path := filepath.Join(t.TempDir(), "Dockerfile")
	require.NoError(t, os.WriteFile(path, []byte(`FROM golang AS build
RUN make \
    all BIN=/out
FROM scratch
COPY --from=build /out/elector /bin/
USER nonroot:nonroot
ENTRYPOINT ["/bin/elector"]
`), 0o644))
	d := parseDockerfile(t, path)
	s := Specs[0]
	assert.NotEqual(t, s.Target, d.target)
	assert.Equal(t, []File{{Src: "elector", Dst: "/bin/elector"}}, d.files)
	assert.NotEqual(t, s.Files, d.files)
	assert.NotEqual(t, s.User, d.user)
	assert.NotEqual(t, s.Entrypoint, d.entrypoint)
	assert.Empty(t, d.expose)
}
