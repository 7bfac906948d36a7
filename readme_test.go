package mpsync_test

import (
	"bufio"
	"bytes"
	"fmt"
	"go/format"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The README's code must work as written: every Go block compiles and
// passes go vet, every shell block uses only make targets and files that
// exist, and the first test command a reader meets is the one CI runs.

// readmeBlock is one fenced block of README.md.
type readmeBlock struct {
	lang string // the fence's info string, e.g. "go", "sh"
	line int    // README line of the block's first line of code
	text string
}

func readmeBlocks(t *testing.T) []readmeBlock {
	t.Helper()
	src, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	var (
		blocks []readmeBlock
		cur    *readmeBlock
		body   strings.Builder
	)
	sc := bufio.NewScanner(bytes.NewReader(src))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		fence := strings.HasPrefix(strings.TrimSpace(line), "```")
		switch {
		case cur == nil && fence:
			info := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "```"))
			cur = &readmeBlock{line: n + 1}
			if len(info) > 0 {
				cur.lang = info[0]
			}
			body.Reset()
		case cur != nil && strings.TrimSpace(line) == "```":
			cur.text = body.String()
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			body.WriteString(line)
			body.WriteByte('\n')
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("README.md:%d: code block never closed", cur.line-1)
	}
	return blocks
}

// readmeFragmentImports are the packages a Go fragment may use without importing
// them: the generated file imports those whose name it mentions.
var readmeFragmentImports = map[string]string{
	"context":    "context",
	"errors":     "errors",
	"fmt":        "fmt",
	"log":        "log",
	"os":         "os",
	"signal":     "os/signal",
	"sync":       "sync",
	"testing":    "testing",
	"time":       "time",
	"mpsync":     "github.com/mpsync/mpsync",
	"mpsynctest": "github.com/mpsync/mpsync/mpsynctest",
}

var (
	readmePackageClause = regexp.MustCompile(`(?m)^package\s+(\w+)`)
	readmeDeclStart     = regexp.MustCompile(`^(func|type|var|const)\b`)
)

// readmeGoFile turns a README Go block into a source file whose positions are
// those of readme, the README's path, and says whether it holds tests.
func readmeGoFile(b readmeBlock, readme string) (src string, isTest bool) {
	directive := fmt.Sprintf("//line %s:%d\n", readme, b.line)
	if m := readmePackageClause.FindStringSubmatch(readmeFirstCode(b.text)); m != nil {
		// A complete file.
		return directive + b.text, strings.HasSuffix(m[1], "_test")
	}
	// A fragment: declarations, or else statements for a function body.
	var imports []string
	for name, path := range readmeFragmentImports {
		if regexp.MustCompile(`\b` + name + `\.`).MatchString(b.text) {
			imports = append(imports, fmt.Sprintf("%q", path))
		}
	}
	var sb strings.Builder
	sb.WriteString("package fragment\n\n")
	if len(imports) > 0 {
		fmt.Fprintf(&sb, "import (\n%s\n)\n\n", strings.Join(imports, "\n"))
	}
	if readmeDeclStart.MatchString(readmeFirstCode(b.text)) {
		sb.WriteString(directive + b.text)
	} else {
		sb.WriteString("func _() {\n" + directive + b.text + "}\n")
	}
	return sb.String(), strings.Contains(b.text, "*testing.T")
}

// readmeFirstCode returns text from its first line that is not blank or a comment.
func readmeFirstCode(text string) string {
	for rest := text; rest != ""; {
		line, after, _ := strings.Cut(rest, "\n")
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "//") {
			return rest
		}
		rest = after
	}
	return ""
}

func TestReadmeGoBlocksCompile(t *testing.T) {
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	goMod, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go \S+$`).Find(goMod)
	if goLine == nil {
		t.Fatal("go.mod has no go line")
	}

	dir := t.TempDir()
	// The blocks may import the SDK and the in-process transport's module,
	// kube/, as a user would.
	mod := fmt.Sprintf("module readmecheck\n\n%s\n\n"+
		"require (\n\tgithub.com/mpsync/mpsync v0.0.0\n\tgithub.com/mpsync/mpsync/kube v0.0.0\n)\n\n"+
		"replace github.com/mpsync/mpsync => %s\n\nreplace github.com/mpsync/mpsync/kube => %s\n",
		goLine, root, filepath.Join(root, "kube"))
	writeReadmeFile(t, filepath.Join(dir, "go.mod"), mod)
	// The two modules' checksums, so that nothing needs the checksum
	// database; -mod=mod adds what is missing from the module cache.
	var sums []byte
	for _, f := range []string{"go.sum", filepath.Join("kube", "go.sum")} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sums = append(sums, b...)
	}
	writeReadmeFile(t, filepath.Join(dir, "go.sum"), string(sums))

	n := 0
	for _, b := range readmeBlocks(t) {
		if b.lang != "go" {
			continue
		}
		n++
		if formatted, err := format.Source([]byte(b.text)); err != nil {
			t.Errorf("README.md:%d: Go block does not parse: %v", b.line, err)
			continue
		} else if string(formatted) != b.text {
			t.Errorf("README.md:%d: Go block is not gofmt-formatted; gofmt makes it:\n%s", b.line, formatted)
		}
		src, isTest := readmeGoFile(b, filepath.Join(root, "README.md"))
		name := "block.go"
		if isTest {
			name = "block_test.go"
		}
		pkgDir := filepath.Join(dir, fmt.Sprintf("line%d", b.line))
		if err := os.Mkdir(pkgDir, 0o755); err != nil {
			t.Fatal(err)
		}
		writeReadmeFile(t, filepath.Join(pkgDir, name), src)
	}
	if n == 0 {
		t.Fatal("README.md has no Go blocks")
	}

	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go command not found: %v", err)
	}
	// go vet type-checks every block, tests included, in one run.
	cmd := exec.CommandContext(t.Context(), goCmd, "vet", "./...")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("go vet of README.md's %d Go blocks: %v\n%s", n, err, out)
	}
}

func TestReadmeShellBlocks(t *testing.T) {
	targets := readmeMakeTargets(t)
	n := 0
	for _, b := range readmeBlocks(t) {
		if b.lang != "sh" && b.lang != "bash" && b.lang != "shell" {
			continue
		}
		n++
		for i, line := range readmeShellLines(b.text) {
			at := fmt.Sprintf("README.md:%d", b.line+i)
			for _, words := range readmeShellCommands(line) {
				if len(words) > 0 && words[0] == "make" {
					for _, w := range words[1:] {
						if !strings.HasPrefix(w, "-") && !strings.Contains(w, "=") && !targets[w] {
							t.Errorf("%s: make target %q is not in the Makefile", at, w)
						}
					}
					continue
				}
				for _, w := range words {
					if p, ok := readmeLocalPath(w); ok {
						if _, err := os.Stat(p); err != nil {
							t.Errorf("%s: %q names no file of the repository", at, w)
						}
					}
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("README.md has no shell blocks")
	}
}

// readmeShellLines returns the lines of a shell block, or "" where a line was
// joined to the one before by a trailing backslash, so that indices stay
// line offsets.
func readmeShellLines(text string) []string {
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	for i := len(lines) - 2; i >= 0; i-- {
		if strings.HasSuffix(lines[i], `\`) {
			lines[i] = strings.TrimSuffix(lines[i], `\`) + " " + lines[i+1]
			lines[i+1] = ""
		}
	}
	return lines
}

var (
	readmeShellComment = regexp.MustCompile(`(^|\s)#.*$`)
	readmeShellSep     = regexp.MustCompile(`&&|\|\||[;|&]`)
	readmeAssignment   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)
)

// readmeShellCommands splits a line into commands, each as its words without
// leading variable assignments. It knows no quoting beyond stripping quotes
// from words: README commands are simple.
func readmeShellCommands(line string) [][]string {
	line = readmeShellComment.ReplaceAllString(line, "")
	var cmds [][]string
	for _, c := range readmeShellSep.Split(line, -1) {
		words := strings.Fields(c)
		for len(words) > 0 && readmeAssignment.MatchString(words[0]) {
			words = words[1:]
		}
		for i, w := range words {
			words[i] = strings.Trim(w, `"'`)
		}
		if len(words) > 0 {
			cmds = append(cmds, words)
		}
	}
	return cmds
}

// readmeLocalPath reports whether word names a file of the repository (a relative
// path, not a flag, URL, module path or absolute path), and returns it.
func readmeLocalPath(word string) (string, bool) {
	if !strings.Contains(word, "/") || strings.Contains(word, "://") ||
		strings.ContainsAny(word[:1], "-$~/") || readmeAssignment.MatchString(word) {
		return "", false
	}
	first, _, _ := strings.Cut(word, "/")
	if strings.Contains(first, ".") && !strings.HasPrefix(first, ".") {
		return "", false // a module path such as example.com/x
	}
	return filepath.FromSlash(strings.TrimSuffix(word, "/")), true
}

// readmeMakeTargets returns the targets the Makefile defines.
func readmeMakeTargets(t *testing.T) map[string]bool {
	t.Helper()
	src, err := os.ReadFile("Makefile")
	if err != nil {
		t.Fatal(err)
	}
	rule := regexp.MustCompile(`^([A-Za-z0-9_./-]+(?:[ \t]+[A-Za-z0-9_./-]+)*)[ \t]*::?(?:[^=]|$)`)
	targets := make(map[string]bool)
	for _, line := range strings.Split(string(src), "\n") {
		if m := rule.FindStringSubmatch(line); m != nil {
			for _, tg := range strings.Fields(m[1]) {
				targets[tg] = true
			}
		}
	}
	if len(targets) == 0 {
		t.Fatal("found no targets in the Makefile")
	}
	return targets
}

// TestReadmeTestCommand checks that the first test command a reader meets in
// README.md, in a code span or a code block, is the one CI runs.
func TestReadmeTestCommand(t *testing.T) {
	src, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	testCmd := regexp.MustCompile(`^(make\b.*test|go\s+test\b)`)
	span := regexp.MustCompile("`([^`]+)`")
	inBlock := false
	for n, line := range strings.Split(string(src), "\n") {
		var cmds []string
		switch {
		case strings.HasPrefix(strings.TrimSpace(line), "```"):
			inBlock = !inBlock
			continue
		case inBlock:
			cmds = []string{strings.TrimSpace(line)}
		default:
			for _, m := range span.FindAllStringSubmatch(line, -1) {
				cmds = append(cmds, strings.TrimSpace(m[1]))
			}
		}
		for _, c := range cmds {
			if testCmd.MatchString(c) {
				if c != "make test" {
					t.Errorf("README.md:%d: the first test command is %q, want \"make test\" (what .ci/run runs)", n+1, c)
				}
				return
			}
		}
	}
	t.Error("README.md never mentions `make test`")
}

func writeReadmeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
