package faults

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"

	"github.com/mpsync/mpsync/test/faults/history"
)

// progress follows a round's history files as they grow, reading only
// what was appended since it last looked: how many acquisitions there are,
// and when each lock was last acquired.
type progress struct {
	dir  string
	off  map[string]int64 // file → bytes consumed (whole lines)
	n    int              // acquire records
	last map[string]int64 // lock → time of its latest acquire record
}

func newProgress(dir string) *progress {
	return &progress{dir: dir, off: map[string]int64{}, last: map[string]int64{}}
}

// update reads what the files gained since the last update.
func (p *progress) update() {
	files, _ := filepath.Glob(filepath.Join(p.dir, "*.jsonl"))
	for _, f := range files {
		p.read(f)
	}
}

func (p *progress) read(path string) {
	fh, err := os.Open(path)
	if err != nil {
		return
	}
	defer fh.Close()
	if _, err := fh.Seek(p.off[path], io.SeekStart); err != nil {
		return
	}
	b, err := io.ReadAll(fh)
	if err != nil {
		return
	}
	b = b[:bytes.LastIndexByte(b, '\n')+1] // a line being written waits
	p.off[path] += int64(len(b))
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		var rec history.Record
		if json.Unmarshal(line, &rec) != nil || rec.Ev != history.Acquire {
			continue
		}
		p.n++
		p.last[rec.Lock] = max(p.last[rec.Lock], rec.T)
	}
}

// acquiredSince reports whether every one of locks has been acquired at or
// after t.
func (p *progress) acquiredSince(locks []string, t int64) bool {
	for _, l := range locks {
		if p.last[l] < t {
			return false
		}
	}
	return true
}
