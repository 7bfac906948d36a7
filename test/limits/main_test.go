// Package limits_test runs elector processes with a lowered descriptor limit
// and floods them with raw connections, next to a healthy SDK client: the
// elector refuses what is past its limits with 503, keeps serving its
// probes and its holders, and gives back its descriptors and goroutines.
//
// The elector is $MPSYNC_ELECTOR_BIN, else one built for the run.
package limits_test

import (
	"testing"

	"github.com/mpsync/mpsync/internal/electorproc"
)

var electorBin string

func TestMain(m *testing.M) { electorproc.RunTests(m, &electorBin) }
