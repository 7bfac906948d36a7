package measure

import (
	"strings"
)

// A Table is a table of text cells, rendered as Markdown.
type Table struct {
	Header []string
	Rows   [][]string
}

// Markdown renders t as a GitHub-flavoured Markdown table with its columns
// padded to equal widths, so that it reads as well in a terminal. A '|' in
// a cell is escaped.
func (t Table) Markdown() string {
	cols := len(t.Header)
	for _, r := range t.Rows {
		cols = max(cols, len(r))
	}
	cell := func(r []string, i int) string {
		if i < len(r) {
			return strings.ReplaceAll(r[i], "|", `\|`)
		}
		return ""
	}
	width := make([]int, cols)
	for _, r := range append([][]string{t.Header}, t.Rows...) {
		for i := range cols {
			width[i] = max(width[i], len([]rune(cell(r, i))), 3)
		}
	}
	var b strings.Builder
	line := func(r []string) {
		b.WriteString("|")
		for i := range cols {
			c := cell(r, i)
			b.WriteString(" " + c + strings.Repeat(" ", width[i]-len([]rune(c))) + " |")
		}
		b.WriteString("\n")
	}
	line(t.Header)
	b.WriteString("|")
	for i := range cols {
		b.WriteString(" " + strings.Repeat("-", width[i]) + " |")
	}
	b.WriteString("\n")
	for _, r := range t.Rows {
		line(r)
	}
	return b.String()
}

// Markers delimit the part of docs/BENCHMARKS.md that the harness writes.
const (
	BeginMarker = "<!-- BEGIN make bench output: generated, edits here are overwritten -->"
	EndMarker   = "<!-- END make bench output -->"
)

// Splice returns doc with the text between BeginMarker and EndMarker
// replaced by section, keeping everything outside the markers. If doc lacks
// the markers, the marked section is appended to it.
func Splice(doc, section string) string {
	marked := BeginMarker + "\n" + strings.TrimRight(section, "\n") + "\n" + EndMarker
	i := strings.Index(doc, BeginMarker)
	j := strings.Index(doc, EndMarker)
	if i < 0 || j < i {
		if doc != "" && !strings.HasSuffix(doc, "\n\n") {
			doc = strings.TrimRight(doc, "\n") + "\n\n"
		}
		return doc + marked + "\n"
	}
	return doc[:i] + marked + doc[j+len(EndMarker):]
}
