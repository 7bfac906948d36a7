// Package limits_test runs elector processes with a lowered descriptor limit
// and floods them with raw connections, next to a healthy SDK client: the
// elector refuses what is past its limits with 503, keeps serving its
// probes and its holders, and gives back its descriptors and goroutines.
//
// The elector is $MPSYNC_ELECTOR_BIN, else one built for the run.
package limits_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/mpsync/mpsync/internal/electorproc"
	"go.uber.org/goleak"
)

var electorBin string

func TestMain(m *testing.M) {
	code, dir, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	if code == 0 {
		code = m.Run()
	}
	if dir != "" {
		_ = os.RemoveAll(dir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// setup finds or builds the elector; dir is the temporary directory of one
// it built.
func setup() (code int, dir string, err error) {
	if electorBin = os.Getenv("MPSYNC_ELECTOR_BIN"); electorBin != "" {
		return 0, "", nil
	}
	dir, err = os.MkdirTemp("", "mpsync-limits-test-")
	if err != nil {
		return 1, "", err
	}
	electorBin = filepath.Join(dir, "elector")
	if err := electorproc.BuildElector(electorBin); err != nil {
		return 1, dir, err
	}
	return 0, dir, nil
}
